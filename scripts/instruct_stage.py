"""The demo base's instruction stage alone, on a cached causal-LM stage: each phase's valid scores, one table.

    python scripts/instruct_stage.py --config demo_base [--config.data.seed=1] [--config.instruct.steps=300 ...]

The recipe's causal-LM stage (the recipe with its instruction stage turned off) is built once into
$RECFOUND_CACHE by `pretrain.ensure_base` and reused by every later call with the same causal-LM keys. The
instruction stage (`pretrain.run_instruct_stage`, both phases) then trains a copy loaded from it, which is
not saved. The table gives each phase's training seconds and, for each of its tasks, the answer accuracy
and answer loss on every valid row (for PRP a uniform guess over A, B and C has loss ln 3 / 2 = 0.549, EOS
being the other answer slot). The instruction-stage tables of docs/results.md were measured with this script's
forerunner, which printed the same figures.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from absl import flags

from recfound_jax import cli, recipes
from recfound_jax import config as config_lib
from recfound_jax.convert.hf import load_hf
from recfound_jax.demo import pretrain
from recfound_jax.tokenizer import Tokenizer

FLAGS = flags.FlagValues()
_CONFIG = recipes.define_flag("config", "the demo base's recipe: a shipped name (demo_base) or a file path", FLAGS)


def table(summary: dict) -> str:
    """A markdown table: one row per phase, its seconds and each task's valid accuracy (loss)."""
    tasks = sorted({task for _, phase in pretrain.instruct_phases(summary) for task in phase["valid_after"]})
    lines = ["| phase | steps x rows | seconds | " + " | ".join(tasks) + " |", "|---|---|---:|" + "---:|" * len(tasks)]
    for name, phase in pretrain.instruct_phases(summary):
        cells = [f"{phase['valid_after'][t]['answer_accuracy']:.3f} ({phase['valid_after'][t]['loss']:.3f})"
                 if t in phase["valid_after"] else "" for t in tasks]
        steps = f"{phase['log'][-1]['step']} x {sum(phase['batch_rows'].values())}"
        lines.append(f"| {name} | {steps} | {phase['train_seconds']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the causal-LM stage of ``--config``, run its instruction stage, print the table."""
    cli.parse(FLAGS, argv, __doc__)
    config = _CONFIG.value
    config_lib.validate_demo_base(config)
    if not pretrain.instruct_enabled(config):
        raise config_lib.ConfigError("config.instruct.rows: empty, so there is no instruction stage to run")
    causal_lm = config.copy_and_resolve_references()
    causal_lm.instruct.rows = {}
    base = pretrain.ensure_base(causal_lm)
    model = load_hf(base, dtype=jnp.float32)
    data_dir = config_lib.synthetic_dir(config.data.scale, config.data.seed)
    summary = pretrain.run_instruct_stage(model, config, data_dir, Tokenizer(base / "tokenizer.model"))
    print(f"causal-LM stage: {base}")
    print(table(summary))
    return 0


if __name__ == "__main__":
    cli.run(main)
