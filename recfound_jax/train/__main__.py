"""python -m recfound_jax.train --config RECIPE [--workdir RUN_DIR] [--resume] [--overwrite] [--extend RUN]
[--config.key=value ...]

RECIPE is a shipped recipe's name (demo, recfound_mistral7b, the ablations: recfound_jax.recipes) or a
recipe file's path; ``--config.train.steps=10`` and the like override its keys. ``--extend RUN`` trains the
tasks RECIPE adds to the trained run RUN into a new RUN_DIR (recfound_jax.train.extend).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from recfound_jax import cli, distributed, recipes
from recfound_jax.evaluate.report import default_out_dir
from recfound_jax.offline import go_offline
from recfound_jax.train.trainer import train

SUMMARY_KEYS = ("steps", "completed", "final_loss", "final_loss_emb", "final_loss_gen", "seconds", "tokens_per_s")

FLAGS = flags.FlagValues()
_CONFIG = recipes.define_flag("config", "the run's recipe: a shipped name (demo) or a file path", FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: runs/<config.name>)", flag_values=FLAGS)
_RESUME = flags.DEFINE_bool("resume", False, "continue the run in --workdir from its last checkpoint",
                            flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a run already in --workdir", flag_values=FLAGS)
_EXTEND = flags.DEFINE_string("extend", None, "a trained run directory: add the tasks the recipe adds to it "
                               "(extend.mode frozen or replay) and train them into --workdir", flag_values=FLAGS)
_PROGRESS = flags.DEFINE_bool("progress", True, "show progress bars", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the recipe into the run directory and print the summary."""
    cli.parse(FLAGS, argv, __doc__)
    go_offline()
    # jax reads XLA_FLAGS when its backend starts, and the backend starts at the first device use: here.
    distributed.set_gpu_xla_flags()
    distributed.initialize_from_env()
    config = _CONFIG.value
    workdir = Path(_WORKDIR.value or Path("runs") / config.name)
    summary = train(config, workdir, resume=_RESUME.value, overwrite=_OVERWRITE.value, progress=_PROGRESS.value,
                    extend=_EXTEND.value)
    print(json.dumps({key: summary[key] for key in SUMMARY_KEYS}, indent=2))
    print(next_steps(workdir, summary))
    return 0


def next_steps(workdir: Path, summary: dict) -> str:
    """What to do with the run: the evaluate command for its directory, and where its results will go."""
    if not summary["completed"]:
        return (f"run directory: {workdir}\nnext: continue it with the same command and --resume")
    out = default_out_dir(workdir, summary["steps"], "test", base_only=False)
    return (f"run directory: {workdir} (metrics.jsonl, tensorboard/, checkpoints/)\n"
            f"next: python -m recfound_jax.evaluate --run {workdir}\n"
            f"      scores every task of the test split into {out}/: metrics.json, results.md, routing.png, "
            f"schedule.png, probe_loss.png")


if __name__ == "__main__":
    cli.run(main)
