"""Merge checkpoints of a run with TIES into a new run directory.

    python -m recfound_jax.merge --run RUN_DIR --steps 100 200 300 [--init-step 0] --density 0.8 \\
        [--lam 1.0] [--order ties|released] [--method ties|linear] --out DIR

Task vectors are taken against --init-step (0, the default: the run's initial params). DIR is a run
directory (`runs.load_model`, `RecFound.from_run` and evaluation open it) whose one checkpoint, at the
largest merged step, holds the merged params.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recfound_jax.merge.checkpoints import MergeError, merge_run
from recfound_jax.merge.ties import METHODS, ORDERS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m recfound_jax.merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the run directory whose checkpoints are merged")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="checkpoint steps to merge")
    p.add_argument("--init-step", type=int, default=0, help="task vectors start here (0: the initial params)")
    p.add_argument("--density", type=float, default=0.8, help="fraction of each task vector kept (default 0.8)")
    p.add_argument("--lam", type=float, default=1.0, help="scale of the merged task vector (default 1.0)")
    p.add_argument("--order", choices=ORDERS, default="ties",
                   help="ties: trim, elect, mean (published); released: elect, trim, mean (the released script)")
    p.add_argument("--method", choices=METHODS, default="ties", help="ties, or linear: the mean task vector")
    p.add_argument("--out", required=True, help="the new run directory (must not exist or be empty)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not 0.0 <= args.density <= 1.0:
        p.error(f"--density must be in [0, 1], got {args.density}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Merge and print where the merged run is."""
    args = parse_args(argv)
    try:
        out = merge_run(args.run, args.steps, args.out, init_step=args.init_step, density=args.density,
                        lam=args.lam, order=args.order, method=args.method, progress=not args.no_progress)
    except (MergeError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged steps {args.steps} of {args.run} into {out} (checkpoint {max(args.steps)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
