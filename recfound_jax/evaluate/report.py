"""Markdown tables of evaluation results, laid out like the paper's Tables 2 and 3.

A "scores" source is any of:
- a metrics.json written by ``python -m recfound_jax.evaluate`` (``{"tasks": {name: {"score": x}}}``);
- a synthetic dataset's chance.json (``{name: {"chance": x, ...}}``);
- a flat ``{task name or short name: number}`` (e.g. numbers copied from a paper).
`scores_of` turns each into ``{task name: float or None}``.

Rows and columns follow the tasks of a task table: the released 13 in the paper's orders, then each added
task (config.added_tasks) in a column of its own after its kind's. Without a table given, it is the
released one and every added task a metrics.json names (`table_of`); a source without a score of a task
(a chance.json has the released tasks only) shows "–" there.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recfound_jax import jsonio
from recfound_jax import tasks as tasks_lib
from recfound_jax.tasks import Task, TaskTable

# Column orders of the paper's Table 2 (generative) and Table 3 (embedding).
GENERATIVE_COLUMNS = ("QR", "AVE", "AG", "SR", "SA", "UP", "AP", "PRP", "PM", "IP")
EMBEDDING_COLUMNS = ("I2I", "Q2I", "U2I")
CHANCE_FILE = "chance.json"
MISSING = "–"

Row = tuple[str, Mapping[str, Any]]


def load_chance(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """DATA_DIR/chance.json (written with the synthetic dataset), or None when there is none."""
    path = Path(data_dir) / CHANCE_FILE
    return jsonio.read_json(path) if path.is_file() else None


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("score", value.get("chance"))
    return None if value is None else float(value)


def _entries(source: Mapping[str, Any]) -> Mapping[str, Any]:
    return source["tasks"] if isinstance(source.get("tasks"), Mapping) else source


def table_of(*sources: Mapping[str, Any]) -> TaskTable:
    """The released table and every added task the sources' metrics.json entries describe (their ``id``,
    ``short``, ``kind`` and ``metric``, as `runner.evaluate` writes them), in id order."""
    tasks = {t.name: t for t in tasks_lib.TASKS}
    for source in sources:
        for name, entry in _entries(source).items():
            if name in tasks or not isinstance(entry, Mapping) or not {"short", "kind", "metric"} <= set(entry):
                continue
            if any(entry["short"] == t.short for t in tasks.values()):
                continue
            task_id = entry.get("id")
            if not isinstance(task_id, int) or any(t.id == task_id for t in tasks.values()):
                task_id = max(t.id for t in tasks.values()) + 1
            task_id = max(task_id, tasks_lib.FIRST_ADDED_ID)
            tasks[name] = Task(task_id, name, entry["short"], entry["kind"], entry["metric"])
    return TaskTable(tuple(sorted(tasks.values(), key=lambda t: t.id)))


def _table(rows: Sequence[Row], table: TaskTable | None) -> TaskTable:
    return table if table is not None else table_of(*(source for _, source in rows))


def scores_of(source: Mapping[str, Any], table: TaskTable | None = None) -> dict[str, float | None]:
    """{task name: headline score or None} of every task of ``table`` (default: `table_of(source)`) from a
    metrics.json, a chance.json or a flat mapping; a task the source does not score is None."""
    table = table if table is not None else table_of(source)
    scores: dict[str, float | None] = {t.name: None for t in table.tasks}
    for key, value in _entries(source).items():
        try:
            task = table.get(key)
        except KeyError:
            continue  # other top-level fields of a metrics.json
        scores[task.name] = _number(value)
    return scores


def _format(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A GitHub markdown table: the first ``left`` columns left-aligned (text), the others
    right-aligned (numbers)."""
    align = [":---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def scores_table(rows: Sequence[Row], columns: Sequence[str], *, digits: int = 3,
                 table: TaskTable | None = None) -> str:
    """One markdown row per (name, scores source), one column per task short name of ``table`` (default:
    `table_of` the sources)."""
    table = _table(rows, table)
    body = []
    for name, source in rows:
        scores = scores_of(source, table)
        body.append([name] + [_format(scores[table.get(short).name], digits) for short in columns])
    return markdown_table(["Model", *columns], body)


def table_columns(kind: str, table: TaskTable) -> tuple[str, ...]:
    """The short names of ``kind``'s columns: the paper's released order, then the table's added tasks."""
    released = GENERATIVE_COLUMNS if kind == "generative" else EMBEDDING_COLUMNS
    return released + tuple(t.short for t in table.added if t.kind == kind)


def generative_table(rows: Sequence[Row], *, digits: int = 3, table: TaskTable | None = None) -> str:
    """Table 2's layout: QR AVE AG SR SA UP AP PRP PM IP, then the added generative tasks."""
    table = _table(rows, table)
    return scores_table(rows, table_columns("generative", table), digits=digits, table=table)


def embedding_table(rows: Sequence[Row], *, digits: int = 3, table: TaskTable | None = None) -> str:
    """Table 3's layout: I2I (NDCG@20), Q2I (MRR@20), U2I (MRR@20), then the added embedding tasks."""
    table = _table(rows, table)
    return scores_table(rows, table_columns("embedding", table), digits=digits, table=table)


def task_detail_table(metrics: Mapping[str, Any], *, digits: int = 4, table: TaskTable | None = None) -> str:
    """Per task: metric, score, rows scored, invalid outputs (generative) or skipped queries
    (embedding), the generation budget and how many outputs reached it without an EOS, and seconds."""
    body = []
    for task in (table if table is not None else table_of(metrics)).tasks:
        r = metrics["tasks"].get(task.name)
        if r is None:
            continue
        other = r.get("invalid", r.get("skipped"))
        budget = f"{r['max_new_tokens']} ({r['hit_max_new_tokens']})" if "hit_max_new_tokens" in r else MISSING
        body.append([task.short, task.name, task.metric, _format(_number(r.get("score")), digits),
                     str(r.get("n", 0)), MISSING if other is None else str(other), budget,
                     _format(r.get("seconds"), 1)])
    return markdown_table(["Task", "Name", "Metric", "Score", "n", "Invalid / skipped", "Max new tokens (hit)",
                           "Seconds"], body, left=3)


ROUTING_PAIRS = (("intra_embedding", "two embedding tasks"), ("intra_generative", "two generative tasks"),
                 ("cross", "an embedding and a generative task"))


def routing_table(similarity: Mapping[str, float | None], *, digits: int = 3) -> str:
    """Figure 2's averages (`plots.class_similarity`): mean cosine similarity of the routing of each kind
    of task pair."""
    body = [[label, _format(similarity.get(key), digits)] for key, label in ROUTING_PAIRS]
    return markdown_table(["Task pair", "Mean routing similarity"], body, left=1)


def catalog_table(metrics: Mapping[str, Any], *, digits: int = 4, table: TaskTable | None = None) -> str:
    """Full-catalog Recall@k and NDCG@k of the embedding tasks that have them."""
    found = [(t, metrics["tasks"][t.name]) for t in (table if table is not None else table_of(metrics)).tasks
             if t.is_embedding and "catalog" in metrics["tasks"].get(t.name, {})]
    if not found:
        return ""
    keys = [k for k in found[0][1]["catalog"] if "@" in k]
    body = [[t.short, str(r["catalog_size"]), str(r["catalog"]["n"])]
            + [_format(r["catalog"][k], digits) for k in keys] for t, r in found]
    return markdown_table(["Task", "Catalog", "Queries", *keys], body)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_markdown(metrics: Mapping[str, Any], table: TaskTable | None = None) -> str:
    """The example predictions of each generative task as markdown tables."""
    parts = []
    for task in (table if table is not None else table_of(metrics)).tasks:
        examples = metrics["tasks"].get(task.name, {}).get("examples")
        if not examples:
            continue
        body = [[_one_line(e["prompt"][-80:]), _one_line(e["prediction"]), _one_line(e["reference"])]
                for e in examples]
        parts.append(f"#### {task.short} ({task.name})\n\n"
                     + markdown_table(["Prompt (end)", "Prediction", "Reference"], body, left=3))
    return "\n\n".join(parts)


def results_markdown(
    metrics: Mapping[str, Any],
    *,
    name: str = "RecFound (ours)",
    baselines: Sequence[Row] = (),
    chance: Mapping[str, Any] | None = None,
    title: str = "Evaluation",
    table: TaskTable | None = None,
) -> str:
    """The whole results.md: Tables 2 and 3 (the model, each baseline, chance), then per-task detail,
    full-catalog retrieval and example predictions. ``table``: the run's tasks (default: `table_of` the
    model's metrics and the baselines'); an added task gets a column of its own."""
    rows: list[Row] = [(name, metrics), *baselines]
    if chance is not None:
        rows.append(("chance", chance))
    table = _table(rows, table)
    settings = ", ".join(f"{k}={metrics.get(k)}" for k in ("split", "step", "limit_per_task", "embedding_stride",
                                                           "prompt_format", "max_new_tokens") if k in metrics)
    sections = [
        f"# {title}",
        settings,
        "## Generative tasks (Table 2 layout)",
        generative_table(rows, table=table),
        "## Embedding tasks (Table 3 layout: I2I NDCG@20, Q2I and U2I MRR@20)",
        embedding_table(rows, table=table),
        "## Per task",
        task_detail_table(metrics, table=table),
    ]
    catalog = catalog_table(metrics, table=table)
    if catalog:
        sections += ["## Full-catalog retrieval", catalog]
    if metrics.get("routing_similarity"):
        sections += ["## Routing similarity (Figure 2: routing.png)", routing_table(metrics["routing_similarity"])]
    examples = examples_markdown(metrics, table)
    if examples:
        sections += ["## Example predictions", examples]
    return "\n\n".join(s for s in sections if s) + "\n"


def default_out_dir(run_dir: Path, step: int | None, split: str, base_only: bool) -> Path:
    """RUN_DIR/eval/<step or "base">[-<split> when not test]."""
    name = "base" if base_only else str(step)
    return run_dir / "eval" / (name if split == "test" else f"{name}-{split}")
