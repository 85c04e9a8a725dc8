"""RecFound with and without Model Merge, as one command: train, TIES-merge checkpoints, evaluate both.

    python scripts/model_merge.py --config demo --workdir runs/demo_merge          # the demo, ~10 min on 2 cores
    python scripts/model_merge.py --config recfound_mistral7b --workdir runs/7b --steps 240,300,360

1. `python -m recfound_jax.train --config CONFIG --workdir WORKDIR` (skipped when WORKDIR holds a finished run);
2. `python -m recfound_jax.merge --run WORKDIR --steps STEPS --density 0.8 --out WORKDIR_merged`: TIES over
   the task vectors of the chosen checkpoints against the run's initial adapters (skipped when it exists);
3. `python -m recfound_jax.evaluate` on the run's last checkpoint ("RecFound w/o Model Merge"), then on the
   merged run with the first as a --baseline row: WORKDIR_merged/eval/<step>/results.md holds both rows.

Which checkpoints: the paper merges "different checkpoints" of one run, whose tasks peak at different
steps (the seesaw it cites); the released merge script's first model is the initialised adapters and its
output is named after the final checkpoint and two earlier ones, density 0.8. By default this merges the
run's last three checkpoints (the demo's 100, 200 and 300) against step 0 with density 0.8.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

UNMERGED, MERGED = "RecFound w/o Model Merge", "RecFound (Model Merge)"


def run(*args: str) -> None:
    """One of the project's commands, its output shown; a failure stops the script."""
    command = [sys.executable, "-m", *args]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def checkpoint_steps(workdir: Path) -> list[int]:
    """The run's saved checkpoint steps, from its summary."""
    return sorted(json.loads((workdir / "summary.json").read_text())["checkpoints"])


def finished(workdir: Path) -> bool:
    summary = workdir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("completed", False)


def main() -> None:
    """Train, merge and evaluate as the module docstring says; print where the table is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="a shipped recipe name or a recipe file")
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo_merge"))
    parser.add_argument("--steps", default=None, help="checkpoints to merge (default: the run's last three)")
    parser.add_argument("--density", default="0.8")
    parser.add_argument("--evaluate", nargs="*", default=[], help="extra flags for both evaluations")
    args = parser.parse_args()
    workdir, merged = args.workdir, args.workdir.with_name(args.workdir.name + "_merged")
    if not finished(workdir):
        run("recfound_jax.train", f"--config={args.config}", f"--workdir={workdir}",
            *(["--resume"] if (workdir / "config.json").exists() else []))
    steps = [int(s) for s in args.steps.split(",")] if args.steps else checkpoint_steps(workdir)[-3:]
    if not (merged / "config.json").exists():
        run("recfound_jax.merge", f"--run={workdir}", f"--steps={','.join(map(str, steps))}",
            f"--density={args.density}", f"--out={merged}")
    last = checkpoint_steps(workdir)[-1]
    unmerged_out = workdir / "eval" / str(last)
    run("recfound_jax.evaluate", f"--run={workdir}", f"--step={last}", f"--name={UNMERGED}",
        f"--out={unmerged_out}", *args.evaluate)
    run("recfound_jax.evaluate", f"--run={merged}", f"--name={MERGED} of steps {steps}",
        f"--baseline={UNMERGED}={unmerged_out / 'metrics.json'}", *args.evaluate)
    print(f"\nboth rows: {merged / 'eval' / str(max(steps)) / 'results.md'}")


if __name__ == "__main__":
    main()
