"""python -m recfound_jax.evaluate --run RUN_DIR [--step N] [--split test] [--tasks QR,SA] [--base_only]
[--prompt_format gritlm|mistral-instruct|llama3|qwen] [--limit N] [--max_new_tokens N | TASK=N,...]
[--baseline NAME=path/to/metrics.json ...] [--out DIR]
python -m recfound_jax.evaluate --base HF_DIR --data DATA_DIR --out DIR [--prompt_format llama3] [...]

With --base, a bare HF checkpoint (Mistral, Llama or Qwen2, its own tokenizer) is scored zero-shot on
--data, as the paper's "w/o finetuning" rows of other models (Llama-3-8B-Instruct with --prompt_format llama3,
Qwen2.5-7B-Instruct with qwen).

Evaluates a run's checkpoint (default: the latest) on the tasks of its table (the 13 released and its
config.added_tasks) in its own dataset and writes
into --out (default RUN_DIR/eval/<step>, or RUN_DIR/eval/base with --base_only; a split other than
test adds "-<split>"):
- metrics.json: every task's headline score and details (evaluate/runner.py);
- results.md: the paper's Table 2 and 3 layouts (the model, each --baseline, chance when the data
  has a chance.json), per-task details and example predictions;
- routing.png (Figure 2, whose averages within embedding tasks, within generative tasks and across the
  two go into metrics.json and results.md; not with --base_only), schedule.png (Figure 3) and probe_loss.png from the
  run's metrics.jsonl.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from recfound_jax import cli, jsonio
from recfound_jax import config as config_lib
from recfound_jax import tasks as tasks_lib
from recfound_jax.data.prompt_formats import PROMPT_FORMATS
from recfound_jax.evaluate import plots, report, runner
from recfound_jax.inference.recfound import RecFound
from recfound_jax.offline import go_offline
from recfound_jax.runs import rundir
from recfound_jax.tasks import TaskTable

FLAGS = flags.FlagValues()
_RUN = flags.DEFINE_string("run", None, "the run directory", flag_values=FLAGS)
_BASE = flags.DEFINE_string("base", None, "a bare HF checkpoint directory to score zero-shot instead of a run "
                            "(needs --data and --out)", flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "with --base: the weights' and compute dtype",
                           flag_values=FLAGS)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=FLAGS)
_SPLIT = flags.DEFINE_string("split", "test", "data split to evaluate", flag_values=FLAGS)
_DATA = flags.DEFINE_string("data", None, "dataset directory (default: the run's, from run.json)", flag_values=FLAGS)
_TASKS = flags.DEFINE_list("tasks", None, "task names or short names, e.g. QR,SA (default: the run's data.tasks, "
                           "else every task of its table)",
                           flag_values=FLAGS)
_BASE_ONLY = flags.DEFINE_bool("base_only", False, "evaluate the base model without adapters", flag_values=FLAGS)
_PROMPT_FORMAT = flags.DEFINE_enum("prompt_format", "gritlm", PROMPT_FORMATS, "how generation prompts are wrapped: "
                                    "the training format, or a chat model's own (mistral-instruct, llama3, qwen: the "
                                    "paper's zero-shot rows, with --base_only)", flag_values=FLAGS)
_LIMIT = flags.DEFINE_integer("limit", None, "rows (embedding: queries) per task", flag_values=FLAGS)
_EMBEDDING_STRIDE = flags.DEFINE_integer("embedding_stride", 1, "evaluate every N-th embedding row (the released "
                                         "protocol: 10)", lower_bound=1, flag_values=FLAGS)
_MAX_NEW_TOKENS = flags.DEFINE_list("max_new_tokens", None, "generation budgets replacing the run config's "
                                    "eval.max_new_tokens: N for every task and/or TASK=N items (e.g. 16,UP=512)",
                                    flag_values=FLAGS)
_BERTSCORE_MODEL = flags.DEFINE_string("bertscore_model", None, "local encoder directory for BERTScore on QR/AG/UP/IP "
                                       "(default: token F1)", flag_values=FLAGS)
_BERTSCORE_LAYER = flags.DEFINE_integer("bertscore_layer", 14, "the --bertscore_model layer whose hidden states are "
                                        "matched (released: 14 of longformer-large-4096; 0 = the embeddings)",
                                        lower_bound=0, flag_values=FLAGS)
_BASELINES = flags.DEFINE_multi_string("baseline", [], "NAME=path/to/metrics.json: another model's row in the "
                                       "tables", flag_values=FLAGS)
_NAME = flags.DEFINE_string("name", None, "the model's row name in the tables", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "output directory", flag_values=FLAGS)
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=FLAGS)
flags.register_validator("baseline", lambda specs: all("=" in spec for spec in specs),
                         "--baseline takes NAME=path/to/metrics.json", flag_values=FLAGS)
flags.register_multi_flags_validator(
    ["run", "base"], lambda f: (f["run"] is None) != (f["base"] is None),
    message="give exactly one of --run RUN_DIR and --base HF_DIR", flag_values=FLAGS)
flags.register_multi_flags_validator(
    ["base", "data", "out"], lambda f: f["base"] is None or (f["data"] is not None and f["out"] is not None),
    message="--base needs --data DATA_DIR and --out DIR (there is no run directory to take them from)",
    flag_values=FLAGS)


def parse_budgets(specs: Sequence[str] | None, table: TaskTable | None = None) -> dict[str, int] | None:
    """--max_new_tokens: None, or budgets by task short name from "N" (every generative task of ``table``,
    default the released 13) and "TASK=N" items, later items winning: "64", "UP=512,SR=4", "16,UP=512"."""
    if not specs:
        return None
    table = table or tasks_lib.RELEASED
    budgets: dict[str, int] = {}
    for spec in specs:
        task, sep, value = spec.rpartition("=")
        if not sep:
            budgets.update(dict.fromkeys([t.short for t in table.generative], _budget("--max_new_tokens", value)))
            continue
        try:
            found = table.get(task.strip())
        except KeyError as err:
            cli.usage_error(f"--max_new_tokens: {err.args[0]}")
        if found.is_embedding:
            cli.usage_error(f"--max_new_tokens: {found.short} is an embedding task; it generates nothing")
        budgets[found.short] = _budget(f"--max_new_tokens {task}", value)
    return budgets


def _budget(where: str, value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        cli.usage_error(f"{where}: {value!r} is not a positive number of tokens")
    return int(value)


def run_table(run_dir: Path) -> TaskTable:
    """The task table of a run's config (the released 13 where there is no run config to read: loading the
    run then says what is wrong)."""
    try:
        return config_lib.task_table(rundir.read_config(run_dir))
    except FileNotFoundError:
        return tasks_lib.RELEASED


def task_routing(rf: Any, base_only: bool) -> np.ndarray | None:
    """`RecFound.routing` of every task of the run's table, for a model with a task router (None for the base
    alone)."""
    adapters = rf.model.adapters
    if base_only or adapters is None or not adapters.cfg.enabled:
        return None
    return rf.routing()


def write_plots(routing: np.ndarray | None, run_dir: Path, out: Path, table: TaskTable | None = None) -> list[Path]:
    """routing.png (given the routing of every task of the run's ``table``, default the released 13),
    schedule.png and probe_loss.png (when the run logged those series)."""
    table = table or tasks_lib.RELEASED
    written = []
    if routing is not None:
        written.append(plots.routing_heatmap(routing, list(table.tasks), out / "routing.png"))
    records = plots.read_metrics_log(run_dir)
    if plots.has_series(records, "ratio", table):
        written.append(plots.schedule_plot(records, out / "schedule.png", table=table))
    if plots.has_series(records, "probe", table):
        written.append(plots.probe_loss_plot(records, out / "probe_loss.png", table=table))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate, then write metrics.json, results.md and the plots; print the tables."""
    cli.parse(FLAGS, argv, __doc__)
    budgets = parse_budgets(_MAX_NEW_TOKENS.value, tasks_lib.RELEASED if _BASE.value else run_table(Path(_RUN.value)))
    go_offline()
    split = _SPLIT.value
    if _BASE.value:
        run_dir, base_only, data_dir = Path(_BASE.value), True, _DATA.value
        rf = RecFound.from_base(run_dir, dtype=_DTYPE.value, prompt_format=_PROMPT_FORMAT.value)
    else:
        run_dir, base_only = Path(_RUN.value), _BASE_ONLY.value
        data_dir = _DATA.value or rundir.read_run_info(run_dir).get("data")
        if not data_dir:
            cli.usage_error(f"{run_dir}/run.json names no dataset (an imported run?): pass --data DIR")
        rf = RecFound.from_run(run_dir, _STEP.value, base_only=base_only, prompt_format=_PROMPT_FORMAT.value)
    metrics = runner.evaluate(rf, data_dir, split=split, tasks=_TASKS.value, limit_per_task=_LIMIT.value,
                              embedding_stride=_EMBEDDING_STRIDE.value, max_new_tokens=budgets,
                              progress=_PROGRESS.value, bertscore_model=_BERTSCORE_MODEL.value,
                              bertscore_layer=_BERTSCORE_LAYER.value)
    name = _NAME.value or (f"{run_dir.name} (w/o finetuning)" if _BASE.value else
                           "w/o finetuning" if base_only else f"{run_dir.name} (step {rf.step})")
    metrics.update(run_dir=None if _BASE.value else str(run_dir), base=_BASE.value, base_only=base_only, model=name,
                   prompt_format=rf.prompt_format)
    routing = task_routing(rf, base_only)
    if routing is not None:
        metrics["routing_similarity"] = plots.class_similarity(routing, list(rf.table.tasks))

    out = Path(_OUT.value) if _OUT.value else report.default_out_dir(run_dir, rf.step, split, base_only)
    out.mkdir(parents=True, exist_ok=True)
    jsonio.write_json(out / "metrics.json", metrics)
    baselines = [(spec.split("=", 1)[0], jsonio.read_json(spec.split("=", 1)[1])) for spec in _BASELINES.value]
    chance = report.load_chance(data_dir) if split == "test" else None
    markdown = report.results_markdown(metrics, name=name, baselines=baselines, chance=chance,
                                       title=f"Evaluation of {run_dir} ({split})", table=rf.table)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    if not _BASE.value:
        write_plots(routing, run_dir, out, rf.table)
    rows = [(name, metrics), *baselines] + ([("chance", chance)] if chance else [])
    print(report.generative_table(rows, table=rf.table))
    print()
    print(report.embedding_table(rows, table=rf.table))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
