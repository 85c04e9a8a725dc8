"""Merge checkpoints of a run with TIES into a new run directory.

    python -m recfound_jax.merge --run RUN_DIR --steps 100,200,300 [--init_step 0] --density 0.8 \\
        [--lam 1.0] [--order ties|released] [--method ties|linear] --out DIR

Task vectors are taken against --init_step (0, the default: the run's initial params). DIR is a run
directory (`rundir.load_model`, `RecFound.from_run` and evaluation open it) whose one checkpoint, at the
largest merged step, holds the merged params.
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from recfound_jax import cli
from recfound_jax.merge.checkpoints import MergeError, merge_run
from recfound_jax.merge.ties import METHODS, ORDERS

FLAGS = flags.FlagValues()
_RUN = flags.DEFINE_string("run", None, "the run directory whose checkpoints are merged", required=True,
                           flag_values=FLAGS)
_STEPS = flags.DEFINE_list("steps", None, "checkpoint steps to merge, e.g. 100,200,300", required=True,
                           flag_values=FLAGS)
_INIT_STEP = flags.DEFINE_integer("init_step", 0, "task vectors start here (0: the initial params)", flag_values=FLAGS)
_DENSITY = flags.DEFINE_float("density", 0.8, "fraction of each task vector kept", lower_bound=0.0, upper_bound=1.0,
                              flag_values=FLAGS)
_LAM = flags.DEFINE_float("lam", 1.0, "scale of the merged task vector", flag_values=FLAGS)
_ORDER = flags.DEFINE_enum("order", "ties", ORDERS, "ties: trim, elect, mean (published); released: elect, trim, "
                           "mean (the released script)", flag_values=FLAGS)
_METHOD = flags.DEFINE_enum("method", "ties", METHODS, "ties, or linear: the mean task vector", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "the new run directory (must not exist or be empty)", required=True,
                           flag_values=FLAGS)
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=FLAGS)
flags.register_validator("steps", lambda steps: all(s.strip().isdigit() for s in steps),
                         "--steps takes checkpoint steps, e.g. --steps 100,200,300", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Merge and print where the merged run is."""
    cli.parse(FLAGS, argv, __doc__)
    steps = [int(s) for s in _STEPS.value]

    def merge() -> str:
        out = merge_run(_RUN.value, steps, _OUT.value, init_step=_INIT_STEP.value, density=_DENSITY.value,
                        lam=_LAM.value, order=_ORDER.value, method=_METHOD.value, progress=_PROGRESS.value)
        return f"merged steps {steps} of {_RUN.value} into {out} (checkpoint {max(steps)})"

    return cli.attempt(merge, MergeError, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    cli.run(main)
