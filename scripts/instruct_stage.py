"""The demo base's instruction stage alone, on a cached causal-LM stage: each phase's valid scores, one table.

    python scripts/instruct_stage.py --config demo_base [--config.data.seed=1] [--config.instruct.steps=300 ...]
        [--draws 0,1,2,3]

The recipe's causal-LM stage (the recipe with its instruction stage turned off) is built once into
$RECFOUND_CACHE by `pretrain.ensure_base` and reused by every later call with the same causal-LM keys. The
instruction stage (`pretrain.run_instruct_stage`, both phases) then trains a copy loaded from it, which is
not saved. The table gives each phase's training seconds and, for each of its tasks, the answer accuracy
and answer loss on every valid row (for PRP a uniform guess over A, B and C has loss ln 3 / 2 = 0.549, EOS
being the other answer slot). The instruction-stage tables of docs/results.md were measured with this script's
forerunner, which printed the same figures.

``--draws`` runs the stage once for each of these values of ``instruct.seed``, which sets both which rows are
drawn and in which order they come, each time from the same causal-LM stage: one table row per draw and
phase, then each task's lowest, median and highest answer accuracy over the draws. Whether the demo base
learns a comparison within the stage depends on that draw (docs/results.md, "The draw decides").
"""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from recfound_jax import cli, recipes
from recfound_jax import config as config_lib
from recfound_jax.convert.hf import load_hf
from recfound_jax.demo import pretrain
from recfound_jax.tokenizer import Tokenizer

FLAGS = flags.FlagValues()
_CONFIG = recipes.define_flag("config", "the demo base's recipe: a shipped name (demo_base) or a file path", FLAGS)
_DRAWS = flags.DEFINE_list("draws", [], "instruct.seed values, one run of the stage each (default: the recipe's)",
                           flag_values=FLAGS)
flags.register_validator("draws", lambda draws: all(d.isdigit() for d in draws),
                         "--draws takes non-negative integers, e.g. 0,1,2", flag_values=FLAGS)


def table(summaries: dict[int, dict]) -> str:
    """A markdown table: one row per draw (instruct.seed) and phase, its seconds and each task's valid
    accuracy (loss)."""
    phases = [(draw, name, phase) for draw, summary in summaries.items()
              for name, phase in pretrain.instruct_phases(summary)]
    tasks = sorted({task for _, _, phase in phases for task in phase["valid_after"]})
    lines = ["| phase | instruct.seed | steps x rows | seconds | " + " | ".join(tasks) + " |",
             "|---|---:|---|---:|" + "---:|" * len(tasks)]
    for draw, name, phase in phases:
        cells = [f"{phase['valid_after'][t]['answer_accuracy']:.3f} ({phase['valid_after'][t]['loss']:.3f})"
                 if t in phase["valid_after"] else "" for t in tasks]
        steps = f"{phase['log'][-1]['step']} x {sum(phase['batch_rows'].values())}"
        lines.append(f"| {name} | {draw} | {steps} | {phase['train_seconds']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(summaries: dict[int, dict]) -> str:
    """Each task's lowest, median and highest valid answer accuracy after the whole stage, over the draws."""
    accuracies: dict[str, list[float]] = {}
    for summary in summaries.values():
        for task, scores in summary["valid_after"].items():
            accuracies.setdefault(task, []).append(scores["answer_accuracy"])
    return "\n".join(f"{task}: {min(a):.3f} / {float(np.median(a)):.3f} / {max(a):.3f} (lowest / median / highest "
                     f"of {len(a)} draws)" for task, a in sorted(accuracies.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the causal-LM stage of ``--config``, run its instruction stage once per draw, print the
    table."""
    cli.parse(FLAGS, argv, __doc__)
    config = _CONFIG.value
    config_lib.validate_demo_base(config)
    if not pretrain.instruct_enabled(config):
        raise config_lib.ConfigError("config.instruct.rows: empty, so there is no instruction stage to run")
    causal_lm = config.copy_and_resolve_references()
    causal_lm.instruct.rows = {}
    base = pretrain.ensure_base(causal_lm)
    data_dir = config_lib.synthetic_dir(config.data.scale, config.data.seed)
    tokenizer = Tokenizer(base / "tokenizer.model")
    summaries = {}
    for draw in dict.fromkeys(int(d) for d in _DRAWS.value) or [config.instruct.seed]:  # a repeat runs once
        recipe = config.copy_and_resolve_references()
        recipe.instruct.seed = draw
        summaries[draw] = pretrain.run_instruct_stage(load_hf(base, dtype=jnp.float32), recipe, data_dir, tokenizer)
    print(f"causal-LM stage: {base}")
    print(table(summaries))
    if len(summaries) > 1:
        print(spread(summaries))
    return 0


if __name__ == "__main__":
    cli.run(main)
