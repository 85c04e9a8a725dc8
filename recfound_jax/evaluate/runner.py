"""Evaluate a model on the tasks of its run's table in a split (docs/method.md, "Evaluation").

`evaluate(rf, data_dir)` reads the rows with `sources.load_split` (any form of data.dir) and scores every task:

- generative tasks: greedy generation from each row's last prompt (``text[-2]``), scored against
  its last answer (``text[-1]``) with `metrics.score_task`;
- embedding tasks: queries embedded with their own instruction (role "query"), passages with theirs
  (role "passage"); the released sampled protocol (U2I, Q2I: MRR@20 over 1 positive + 19 negatives;
  I2I: NDCG@20 over the positives + 5 negatives, negatives of the same task and source) on every
  ``embedding_stride``-th row, plus exact full-catalog Recall@k / NDCG@k over every distinct
  passage text of the task.

The result holds, per task, the paper's headline metric under ``"score"`` and the details beside it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recfound_jax import config as config_lib
from recfound_jax import tasks as tasks_lib
from recfound_jax.data import from_logs, sources
from recfound_jax.data import records as records_lib
from recfound_jax.evaluate import metrics, retrieval
from recfound_jax.inference.recfound import RecFound
from recfound_jax.tasks import Task, TaskTable

NUM_EXAMPLES = 3
EXAMPLE_PROMPT_CHARS = 300
SAMPLED_NEGATIVES = {"U2I": 19, "Q2I": 19, "I2I": 5}
SAMPLED_K = 20
SEED = 42
Budgets = int | Mapping[str, int]


def table_of(config: Any = None) -> TaskTable:
    """The task table of a run config (`config.task_table`), or the released 13 without one."""
    return tasks_lib.RELEASED if config is None else config_lib.task_table(config)


def generation_budgets(config: Any = None, overrides: Budgets | None = None) -> dict[str, int]:
    """Max new tokens of each generative task of the run's table, by short name: `config.generation_budgets`
    (each task's table budget, then the run config's eval.max_new_tokens; a run saved before that key existed
    loads with the released budgets as its default; with no config at all, the released table's), then
    ``overrides``: one budget for every task, or a budget per task (short or full name), raising or lowering
    the config's."""
    table = table_of(config)
    budgets = table.max_new_tokens() if config is None else config_lib.generation_budgets(config)
    if isinstance(overrides, int):
        overrides = {short: overrides for short in budgets}
    for key, budget in (overrides or {}).items():
        task = table.get(key)
        if task.is_embedding:
            raise ValueError(f"max_new_tokens: {task.short} is an embedding task; it generates nothing")
        if budget < 1:
            raise ValueError(f"max_new_tokens: {task.short}={budget}; a budget is at least 1 token")
        budgets[task.short] = int(budget)
    return budgets


def load_task_rows(data_dir: str, split: str, tasks: Sequence[Task],
                   table: TaskTable | None = None) -> dict[str, list[records_lib.Record]]:
    """The rows of each task in the split, in file order; rows may name any task of ``table`` (default: the
    released 13)."""
    rows, _ = sources.load_split(data_dir, split, tasks=[t.name for t in tasks], table=table)
    by_task: dict[str, list[records_lib.Record]] = {t.name: [] for t in tasks}
    for row in rows:
        by_task[row.task].append(row)
    return by_task


# ---------------------------------------------------------------- generative tasks


def evaluate_generative(
    rf: Any,
    task: Task,
    rows: Sequence[records_lib.GenerativeRecord],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
) -> dict[str, Any]:
    """Generate up to ``max_new_tokens`` from each row's last prompt and score against its last answer;
    ``hit_max_new_tokens`` counts the outputs that reached the budget without an EOS."""
    prompts = [row.turns[-1][0] for row in rows]
    references = [row.turns[-1][1] for row in rows]
    ids = rf.generate_ids(prompts, task=task.name, max_new_tokens=max_new_tokens, batch_size=batch_size)
    predictions = [rf.tokenizer.decode(row) for row in ids]
    result = metrics.score_task(task, predictions, references, bertscore_model=bertscore_model,
                                bertscore_layer=bertscore_layer)
    result["max_new_tokens"] = max_new_tokens
    result["hit_max_new_tokens"] = sum(len(row) >= max_new_tokens for row in ids)
    result["examples"] = [
        {"prompt": p[-EXAMPLE_PROMPT_CHARS:], "prediction": pred, "reference": ref}
        for p, pred, ref in list(zip(prompts, predictions, references))[:NUM_EXAMPLES]
    ]
    return result


# ---------------------------------------------------------------- embedding tasks


def _distinct(items: Iterable) -> list:
    return list(dict.fromkeys(items))


@dataclasses.dataclass
class Passages:
    """Every distinct (instruction, text) passage of a task's rows, embedded once (role "passage").

    ``first[text]`` is the first pair a text came with: the one that stands for the text where a
    passage is identified by its text alone (the sampled pool, the catalog).
    """

    pairs: list[tuple[str, str]]
    emb: np.ndarray
    index: dict[tuple[str, str], int]
    first: dict[str, tuple[str, str]]

    @classmethod
    def embed(cls, rf: Any, task: Task, rows: Sequence[records_lib.EmbeddingRecord],
              batch_size: int) -> Passages:
        """Embed the rows' passages."""
        pairs = _distinct(p for row in rows for p in (*row.pos, *row.neg))
        emb = rf.embed_pairs(pairs, task=task.name, role="passage", batch_size=batch_size)
        first: dict[str, tuple[str, str]] = {}
        for pair in pairs:
            first.setdefault(pair[1], pair)
        return cls(pairs, np.asarray(emb), {p: i for i, p in enumerate(pairs)}, first)

    def of_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return self.emb[[self.index[p] for p in pairs]]

    def of_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.of_pairs([self.first[t] for t in texts])


def sampled_protocol(task: Task) -> tuple[int, bool]:
    """(negatives per query, whether the metric is NDCG@20) of an embedding task's sampled protocol: the
    released one for U2I, Q2I, I2I; for an added task its metric's (mrr@20: 19 negatives, ndcg@20: 5)."""
    ndcg = task.metric == "ndcg@20"
    return SAMPLED_NEGATIVES.get(task.short, 5 if ndcg else 19), ndcg


def _sampled_metric(task: Task, rows: Sequence[records_lib.EmbeddingRecord],
                    queries: Sequence[records_lib.EmbeddingRecord], query_emb: np.ndarray,
                    passages: Passages) -> dict[str, Any]:
    """The released protocol: MRR@20 (U2I, Q2I) or NDCG@20 (I2I) against negatives of the same
    source drawn from every distinct (text, source) passage of ``rows``."""
    pool = _distinct((text, row.source) for row in rows for _, text in (*row.pos, *row.neg))
    pool_emb = passages.of_texts([text for text, _ in pool])
    pool_sources = [source for _, source in pool]
    pool_by_text: dict[str, list[int]] = {}
    for j, (text, _) in enumerate(pool):
        pool_by_text.setdefault(text, []).append(j)
    never = [{text for _, text in row.pos} | ({row.query[1]} if task.short == "I2I" else set()) for row in queries]
    exclude = [[j for text in texts for j in pool_by_text.get(text, [])] for texts in never]
    query_sources = [row.source for row in queries]
    num_negatives, ndcg = sampled_protocol(task)
    common = dict(num_negatives=num_negatives, k=SAMPLED_K, seed=SEED, exclude=exclude)
    if ndcg:
        positives = [passages.of_pairs(row.pos) for row in queries]
        result = retrieval.sampled_ndcg(query_emb, positives, query_sources, pool_emb, pool_sources, **common)
    else:
        positive_emb = passages.of_pairs([row.pos[0] for row in queries])
        result = retrieval.sampled_mrr(query_emb, positive_emb, query_sources, pool_emb, pool_sources, **common)
    result["pool_size"] = len(pool)
    return result


def read_catalog(data_dir: str | Path) -> list[str]:
    """The item texts of ``data_dir/catalog.jsonl`` (one ``{"item", "text"}`` a line, as
    `recfound_jax.data.from_logs` writes it), or [] when the dataset has none."""
    path = Path(data_dir) / from_logs.CATALOG
    if not path.is_file():
        return []
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _catalog_metric(rf: Any, task: Task, queries: Sequence[records_lib.EmbeddingRecord], query_emb: np.ndarray,
                    passages: Passages, extra_texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Exact Recall@k / NDCG@k over every distinct passage text and ``extra_texts`` (the dataset's whole
    catalog); the relevant items are the positives. U2I queries never rank the items of their own history
    (the query's lines), as sequential recommendation's full ranking masks a user's history."""
    texts = _distinct([*passages.first, *extra_texts])
    new = texts[len(passages.first):]
    catalog = passages.of_texts(list(passages.first))
    if new:
        instruction = passages.pairs[0][0] if passages.pairs else ""
        catalog = np.concatenate([catalog, np.asarray(rf.embed_pairs([(instruction, t) for t in new], task=task.name,
                                                                     role="passage", batch_size=batch_size))])
    position = {text: i for i, text in enumerate(texts)}
    relevant = [[position[text] for _, text in row.pos] for row in queries]
    exclude = ([[position[line] for line in row.query[1].split("\n") if line in position] for row in queries]
               if task.short == "U2I" else None)
    result = retrieval.catalog_metrics(query_emb, catalog, relevant, exclude=exclude)
    result.update(catalog_size=len(texts), history_masked=exclude is not None)
    return result


def evaluate_embedding(
    rf: Any,
    task: Task,
    rows: Sequence[records_lib.EmbeddingRecord],
    *,
    embedding_stride: int = 1,
    limit: int | None = None,
    batch_size: int = 64,
    catalog_texts: Sequence[str] = (),
) -> dict[str, Any]:
    """The sampled metric (MRR@20 or NDCG@20) of every ``embedding_stride``-th row (the first
    ``limit`` of them) and the full-catalog Recall@k / NDCG@k of the same queries.

    ``rows`` are all the task's rows of the split: every distinct (instruction, text) passage among
    them is embedded once. The candidate pool of the sampled protocol is every distinct
    (text, source) among those passages (embedded with the first instruction it came with); a query
    never draws its own positives, nor (I2I) an item with its own text, as a negative. The catalog
    is every distinct passage text and ``catalog_texts`` (U2I: the dataset's `read_catalog`); a query's
    relevant items are its positives, and a U2I query does not rank its own history.
    """
    queries = list(rows[::embedding_stride][:limit])
    passages = Passages.embed(rf, task, rows, batch_size)
    query_emb = np.asarray(rf.embed_pairs([row.query for row in queries], task=task.name, role="query",
                                          batch_size=batch_size))
    sampled = _sampled_metric(task, rows, queries, query_emb, passages)
    catalog = _catalog_metric(rf, task, queries, query_emb, passages, catalog_texts, batch_size)
    return {
        "task": task.name,
        "task_metric": task.metric,
        "score": sampled["score"] if sampled["n"] else None,  # no query had enough negatives
        "n": sampled["n"],
        "skipped": sampled["skipped"],
        "queries": len(queries),
        "pool_size": sampled["pool_size"],
        "catalog_size": catalog.pop("catalog_size"),
        "catalog": catalog,
    }


# ---------------------------------------------------------------- all tasks


def _select_tasks(tasks: Iterable[str | int] | None, config: Any = None) -> list[Task]:
    """``tasks`` (of the run's table), else the tasks the run trained (its data.tasks), else every task of
    its table (the released 13 without a config), in id order."""
    table = table_of(config)
    if tasks is None:
        if config is None or not config.data.get("tasks"):
            return list(table.tasks)
        return sorted((t for kind in config_lib.run_tasks(config) for t in kind), key=lambda t: t.id)
    return sorted({table.get(t) for t in tasks}, key=lambda t: t.id)


def evaluate(
    rf: Any,
    data_dir: str,
    *,
    split: str = "test",
    tasks: Iterable[str | int] | None = None,
    limit_per_task: int | None = None,
    embedding_stride: int = 1,
    max_new_tokens: Budgets | None = None,
    progress: bool = True,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
) -> dict[str, Any]:
    """Score ``rf`` (a `recfound_jax.inference.recfound.RecFound`) on every task (or ``tasks``) of a split.

    Returns ``{"split", "data_dir", "step", "limit_per_task", "embedding_stride", "seconds",
    "tasks": {task name: {"short", "kind", "metric", "score", ... details, "seconds"}}}``, where
    ``score`` is the paper's headline metric of the task. ``limit_per_task`` caps the rows scored
    per task (generative rows; embedding queries after the stride), while the embedding candidate
    pool and catalog always hold every passage of the split. A task with no rows in the split is
    reported with ``score`` None and ``n`` 0. The released protocol uses ``embedding_stride=10``.
    Generation budgets: `generation_budgets` of the model's run config and ``max_new_tokens``.
    """
    if embedding_stride < 1:
        raise ValueError(f"embedding_stride must be >= 1, got {embedding_stride}")
    config = getattr(rf, "config", None)
    budgets = generation_budgets(config, max_new_tokens)
    selected = _select_tasks(tasks, config)
    rows = load_task_rows(data_dir, split, selected, table_of(config))
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(selected, desc=f"evaluate {split}", unit="task", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.short)
        task_start = time.perf_counter()
        if not rows[task.name]:
            result: dict[str, Any] = {"task": task.name, "task_metric": task.metric, "score": None, "n": 0}
        elif task.is_embedding:
            result = evaluate_embedding(rf, task, rows[task.name], embedding_stride=embedding_stride,
                                        limit=limit_per_task,
                                        catalog_texts=read_catalog(data_dir) if task.short == "U2I" else ())
        else:
            result = evaluate_generative(rf, task, rows[task.name][:limit_per_task],
                                         max_new_tokens=budgets[task.short], bertscore_model=bertscore_model,
                                         bertscore_layer=bertscore_layer)
        result.update(id=task.id, short=task.short, kind=task.kind, metric=task.metric,
                      seconds=round(time.perf_counter() - task_start, 3))
        results[task.name] = result
    bar.close()
    return {
        "split": split,
        "data_dir": str(data_dir),
        "step": getattr(rf, "step", None),
        "limit_per_task": limit_per_task,
        "embedding_stride": embedding_stride,
        "max_new_tokens": {t.short: budgets[t.short] for t in selected if not t.is_embedding},
        "seconds": round(time.perf_counter() - start, 3),
        "tasks": results,
    }


SUBSET_MAX_NEW_TOKENS = 16


def evaluate_subset(
    model_or_rf: Any,
    data_dir: str,
    *,
    limit_per_task: int,
    split: str = "valid",
    config: Any = None,
    tokenizer: Any = None,
    max_new_tokens: int = SUBSET_MAX_NEW_TOKENS,
) -> dict[str, float]:
    """A quick evaluation during training: ``{"eval/<task name>": score}`` on the first
    ``limit_per_task`` rows of each task, each task's budget capped at ``max_new_tokens``, no progress bar.

    ``model_or_rf`` is a `RecFound`, or a `Mistral` with its run ``config`` and ``tokenizer``.
    Keep one RecFound across calls: its jitted encoder and generator compile once and read the
    model's current parameters on every call. Tasks that could not be scored are left out.
    """
    rf = model_or_rf
    if not isinstance(rf, RecFound):
        if config is None or tokenizer is None:
            raise ValueError("evaluate_subset of a bare model needs its config and tokenizer")
        rf = RecFound(model_or_rf, config, tokenizer)
    capped = {short: min(budget, max_new_tokens) for short, budget in generation_budgets(rf.config).items()}
    result = evaluate(rf, data_dir, split=split, limit_per_task=limit_per_task, max_new_tokens=capped,
                      progress=False)
    return {f"eval/{name}": float(r["score"]) for name, r in result["tasks"].items() if r["score"] is not None}
