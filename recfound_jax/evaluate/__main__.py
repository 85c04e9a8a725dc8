"""python -m recfound_jax.evaluate --run RUN_DIR [--step N] [--split test] [--tasks ...] [--base-only]
[--limit N] [--baseline NAME=path/to/metrics.json ...] [--out DIR]

Evaluates a run's checkpoint (default: the latest) on the 13 tasks of its own dataset and writes
into --out (default RUN_DIR/eval/<step>, or RUN_DIR/eval/base with --base-only; a split other than
test adds "-<split>"):
- metrics.json: every task's headline score and details (evaluate/runner.py);
- results.md: the paper's Table 2 and 3 layouts (the model, each --baseline, chance when the data
  has a chance.json), per-task details and example predictions;
- routing.png (Figure 2; not with --base-only), schedule.png (Figure 3) and probe_loss.png from the
  run's metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from recfound_jax.offline import go_offline


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m recfound_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--split", default="test", help="data split to evaluate (default: test)")
    p.add_argument("--data", default=None, help="dataset directory (default: the run's, from run.json)")
    p.add_argument("--tasks", nargs="+", default=None, help="task names or short names (default: all 13)")
    p.add_argument("--base-only", action="store_true", help="evaluate the base model without adapters")
    p.add_argument("--limit", type=int, default=None, help="rows (embedding: queries) per task")
    p.add_argument("--embedding-stride", type=int, default=1,
                   help="evaluate every N-th embedding row (the released protocol: 10)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens for every task")
    p.add_argument("--bertscore-model", default=None,
                   help="local encoder directory for BERTScore on QR/AG/UP/IP (default: token F1)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=PATH",
                   help="another metrics.json to put in the tables (repeatable)")
    p.add_argument("--name", default=None, help="the model's row name in the tables")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for spec in args.baseline:
        if "=" not in spec:
            p.error(f"--baseline {spec!r}: expected NAME=path/to/metrics.json")
    return args


def default_out_dir(run_dir: Path, step: int | None, split: str, base_only: bool) -> Path:
    """RUN_DIR/eval/<step or "base">[-<split> when not test]."""
    name = "base" if base_only else str(step)
    return run_dir / "eval" / (name if split == "test" else f"{name}-{split}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, obj: Any) -> None:
    """Pretty JSON, numpy values included."""
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")


def write_plots(rf: Any, run_dir: Path, out: Path, *, base_only: bool) -> list[Path]:
    """routing.png (a model with a task router only), schedule.png and probe_loss.png (when the run
    logged those series)."""
    from recfound_jax.tasks import TASKS  # noqa: PLC0415
    from recfound_jax.evaluate import plots  # noqa: PLC0415

    written = []
    if not base_only and rf.model.adapters is not None and rf.model.adapters.cfg.enabled:
        written.append(plots.routing_heatmap(rf.routing(), [t.name for t in TASKS], out / "routing.png"))
    records = plots.read_metrics_log(run_dir)
    if plots.has_series(records, "ratio"):
        written.append(plots.schedule_plot(records, out / "schedule.png"))
    if plots.has_series(records, "probe"):
        written.append(plots.probe_loss_plot(records, out / "probe_loss.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate, then write metrics.json, results.md and the plots; print the tables."""
    args = parse_args(argv)
    go_offline()
    from recfound_jax.runs import rundir  # noqa: PLC0415 (jax starts here, after the flags are checked)
    from recfound_jax.evaluate import report, runner  # noqa: PLC0415
    from recfound_jax.inference.recfound import RecFound  # noqa: PLC0415

    run_dir = Path(args.run)
    data_dir = args.data or rundir.read_run_info(run_dir).get("data")
    if not data_dir:
        raise SystemExit(f"{run_dir}/run.json names no dataset (an imported run?): pass --data DIR")
    rf = RecFound.from_run(run_dir, args.step, base_only=args.base_only)
    metrics = runner.evaluate(rf, data_dir, split=args.split, tasks=args.tasks, limit_per_task=args.limit,
                              embedding_stride=args.embedding_stride, max_new_tokens=args.max_new_tokens,
                              progress=not args.no_progress, bertscore_model=args.bertscore_model)
    name = args.name or ("w/o finetuning" if args.base_only else f"{run_dir.name} (step {rf.step})")
    metrics.update(run_dir=str(run_dir), base_only=args.base_only, model=name)

    out = Path(args.out) if args.out else default_out_dir(run_dir, rf.step, args.split, args.base_only)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    baselines = [(spec.split("=", 1)[0], report.load_json(spec.split("=", 1)[1])) for spec in args.baseline]
    chance = report.load_chance(data_dir) if args.split == "test" else None
    markdown = report.results_markdown(metrics, name=name, baselines=baselines, chance=chance,
                                       title=f"Evaluation of {run_dir} ({args.split})")
    (out / "results.md").write_text(markdown, encoding="utf-8")
    write_plots(rf, run_dir, out, base_only=args.base_only)
    rows = [(name, metrics), *baselines] + ([("chance", chance)] if chance else [])
    print(report.generative_table(rows))
    print()
    print(report.embedding_table(rows))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
