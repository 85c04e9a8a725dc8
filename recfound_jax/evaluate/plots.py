"""PNG plots of a run: routing similarity across tasks (the paper's Figure 2), the S2Sched ratio of
each task over training (Figure 3) and the per-task probe losses.

matplotlib runs on the Agg backend (no display needed). Each function writes one PNG and returns
its path.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from recfound_jax import tasks as tasks_lib  # noqa: E402
from recfound_jax.tasks import Task, TaskTable  # noqa: E402

METRICS_FILE = "metrics.jsonl"
BRANCHES = (("embedding", "Embedding tasks"), ("generative", "Generative tasks"))


def read_metrics_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (one per logged step); [] when there is none."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _resolve(tasks: Sequence[Task | str | int], table: TaskTable | None) -> list[Task]:
    """Tasks given as Tasks, or as names, short names or ids of ``table`` (default: the released 13)."""
    table = table or tasks_lib.RELEASED
    return [t if isinstance(t, Task) else table.get(t) for t in tasks]


def cosine_similarity(rows: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of a [n, features] matrix (a zero row gives zeros)."""
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def class_similarity(routing: np.ndarray, tasks: Sequence[Task | str | int],
                     table: TaskTable | None = None) -> dict[str, float | None]:
    """Figure 2's averages: the mean cosine similarity of the routing of two different embedding tasks
    (``intra_embedding``), of two different generative tasks (``intra_generative``) and of an embedding
    task and a generative one (``cross``); None where the tasks give no such pair. ``tasks``: Tasks, or keys
    of ``table`` (default: the released 13)."""
    sim = cosine_similarity(routing)
    embedding = np.array([t.is_embedding for t in _resolve(tasks, table)])
    different = ~np.eye(len(embedding), dtype=bool)
    pairs = {"intra_embedding": np.outer(embedding, embedding) & different,
             "intra_generative": np.outer(~embedding, ~embedding) & different,
             "cross": np.outer(embedding, ~embedding)}
    return {name: float(sim[mask].mean()) if mask.any() else None for name, mask in pairs.items()}


def routing_heatmap(
    routing: np.ndarray, tasks: Sequence[Task | str | int], path: str | os.PathLike, *, title: str | None = None,
    table: TaskTable | None = None,
) -> Path:
    """Figure 2: the cosine similarity between the tasks' routing (gate) distributions.

    routing: [n_tasks, features], row i the gates of ``tasks[i]`` (e.g. `RecFound.routing()`); ``tasks``:
    Tasks, or keys of ``table`` (default: the released 13).
    """
    labels = [t.short for t in _resolve(tasks, table)]
    if len(labels) != len(routing):
        raise ValueError(f"{len(routing)} routing rows for {len(labels)} tasks")
    sim = cosine_similarity(routing)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if sim[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_title(title or "Routing similarity across tasks")
    return _save(fig, path)


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _branch_plot(records: Sequence[dict[str, Any]], prefix: str, ylabel: str, path: str | os.PathLike,
                 title: str, table: TaskTable | None) -> Path:
    """One panel per branch, one line per task of ``table`` (default: the released 13) with ``{prefix}/{task}``."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (kind, branch_title) in zip(axes, BRANCHES):
        for task in (t for t in (table or tasks_lib.RELEASED).tasks if t.kind == kind):
            steps, values = _series(records, f"{prefix}/{task.name}")
            if len(steps):
                ax.plot(steps, values, label=task.short, linewidth=1.2)
        ax.set_title(branch_title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=7, ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    return _save(fig, path)


def schedule_plot(records: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                  table: TaskTable | None = None) -> Path:
    """Figure 3: the S2Sched sampling ratio of each task of the run's ``table`` over the training steps
    ("ratio/<task>")."""
    return _branch_plot(records, "ratio", "sampling ratio", path, "S2Sched ratios", table)


def probe_loss_plot(records: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                    table: TaskTable | None = None) -> Path:
    """The validation probe loss of each task of the run's ``table`` over the training steps ("probe/<task>")."""
    return _branch_plot(records, "probe", "probe loss", path, "Per-task probe losses", table)


def has_series(records: Sequence[dict[str, Any]], prefix: str, table: TaskTable | None = None) -> bool:
    """Whether any record holds a ``{prefix}/<task>`` value of a task of ``table`` (default: the released 13)."""
    return any(f"{prefix}/{t.name}" in r for r in records for t in (table or tasks_lib.RELEASED).tasks)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
