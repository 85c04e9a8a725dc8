"""The task table: the 13 released RecFound tasks, and the tasks a config adds to them.

Ids, names, kinds and metrics of the 13 are the released ones (docs/method.md, "Tasks"); the released
importer maps exactly these. Row 13 of the task-embedding table is "none" (the zero-shot call path), so
a task a config adds (`TaskTable.extended`) gets id 14, the next 15, and the table grows by one row each.
Every module that handles a run reads the run's `TaskTable` (`recfound_jax.config.task_table`); the
module-level names below are the released table's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Kind = Literal["embedding", "generative"]
KINDS: tuple[str, ...] = ("embedding", "generative")
# The metrics a task may name, by kind (recfound_jax.evaluate.metrics and .retrieval compute them).
METRICS: dict[str, tuple[str, ...]] = {
    "embedding": ("mrr@20", "ndcg@20"),
    "generative": ("text_f1", "recall@1", "macro_f1", "triple_f1", "yes_f1"),
}
# Kind codes of the task-embedding table's rows (`TaskTable.row_kinds`).
ROW_EMBEDDING, ROW_GENERATIVE, ROW_NONE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: its id (its row of the task-embedding table), name, short name, kind and metric.

    ``max_new_tokens``: a generative task's default budget of new tokens at evaluation. ``classes``: the
    option letters a ``macro_f1`` task answers with.
    """

    id: int
    name: str
    short: str
    kind: Kind
    metric: str
    max_new_tokens: int = 0
    classes: str = ""

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"


TASKS: tuple[Task, ...] = (
    Task(0, "Emb_user", "U2I", "embedding", "mrr@20"),
    Task(1, "Emb_query", "Q2I", "embedding", "mrr@20"),
    Task(2, "Emb_item", "I2I", "embedding", "ndcg@20"),
    # The released evaluation's budgets: one token for an option letter or yes/no, 256 for QR and AVE,
    # 2,048 for the profiles and answers.
    Task(3, "Query_Rewriting", "QR", "generative", "text_f1", 256),
    Task(4, "Sequential_Recommendation", "SR", "generative", "recall@1", 1),
    Task(5, "Product_Relation_Prediction", "PRP", "generative", "macro_f1", 1, "ABC"),
    Task(6, "Sentiment_Analysis", "SA", "generative", "macro_f1", 1, "ABCDE"),
    Task(7, "Attribute_Value_Extraction", "AVE", "generative", "triple_f1", 256),
    Task(8, "Product_Matching", "PM", "generative", "yes_f1", 1),
    Task(9, "user_profile", "UP", "generative", "text_f1", 2048),
    Task(10, "item_profile", "IP", "generative", "text_f1", 2048),
    Task(11, "Answerability_Prediction", "AP", "generative", "yes_f1", 1),
    Task(12, "Answer_Generation", "AG", "generative", "text_f1", 2048),
)

NUM_TASKS = len(TASKS)
NONE_TASK_ID = NUM_TASKS  # the "none" row of the task-embedding table
TASK_TABLE_SIZE = NUM_TASKS + 1  # the released table's rows
FIRST_ADDED_ID = TASK_TABLE_SIZE


class TaskSpecError(ValueError):
    """An added task's spec that cannot work; the message names its position and field."""


@dataclasses.dataclass(frozen=True)
class TaskTable:
    """The tasks of a run in id order: the 13 released ones, then the added ones (ids 14, 15, ...)."""

    tasks: tuple[Task, ...]

    @property
    def rows(self) -> int:
        """Rows of the task-embedding table: every id, and the "none" row 13."""
        return max(TASK_TABLE_SIZE, max(t.id for t in self.tasks) + 1)

    @property
    def embedding(self) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if t.is_embedding)

    @property
    def generative(self) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if not t.is_embedding)

    @property
    def added(self) -> tuple[Task, ...]:
        """The tasks beyond the released 13."""
        return tuple(t for t in self.tasks if t.id >= FIRST_ADDED_ID)

    def row_kinds(self) -> tuple[int, ...]:
        """The kind code of every row (`ROW_EMBEDDING`, `ROW_GENERATIVE`, `ROW_NONE` for row 13)."""
        kinds = [ROW_NONE] * self.rows
        for t in self.tasks:
            kinds[t.id] = ROW_EMBEDDING if t.is_embedding else ROW_GENERATIVE
        return tuple(kinds)

    def max_new_tokens(self) -> dict[str, int]:
        """Each generative task's default evaluation budget, by short name."""
        return {t.short: t.max_new_tokens for t in self.generative}

    def get(self, key: str | int) -> Task:
        """A task by name, short name or id; raise KeyError listing the table's names."""
        for t in self.tasks:
            if key in (t.id, t.name, t.short) and not isinstance(key, bool):
                return t
        valid = ", ".join(t.name for t in self.tasks)
        raise KeyError(f"unknown task {key!r}; valid tasks: {valid}")

    def extended(self, specs: Sequence[Mapping[str, Any]]) -> TaskTable:
        """This table with one task per spec added, in order, at the next free ids (`task_from_spec`)."""
        tasks = list(self.tasks)
        for position, spec in enumerate(specs):
            task = task_from_spec(spec, max(FIRST_ADDED_ID, max(t.id for t in tasks) + 1), position)
            clash = [t for t in tasks if {t.name, t.short} & {task.name, task.short}]
            if clash:
                raise TaskSpecError(f"[{position}]: name {task.name!r} or short {task.short!r} is already "
                                    f"task {clash[0].id} ({clash[0].name}, {clash[0].short})")
            tasks.append(task)
        return TaskTable(tuple(tasks))


SPEC_FIELDS = ("name", "short", "kind", "metric", "max_new_tokens", "classes")


def task_from_spec(spec: Mapping[str, Any], task_id: int, position: int = 0) -> Task:
    """The Task of one added-task spec: name, short, kind, metric (one of its kind's `METRICS`), and for a
    generative task max_new_tokens (>= 1) and, for macro_f1, classes (its option letters)."""
    def fail(field: str, reason: str) -> None:
        raise TaskSpecError(f"[{position}].{field}: {reason}")

    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        fail(unknown[0], f"unknown field; known fields: {', '.join(SPEC_FIELDS)}")
    for field in ("name", "short", "kind", "metric"):
        if not isinstance(spec.get(field), str) or not spec[field].strip():
            fail(field, f"must be a non-empty string, got {spec.get(field)!r}")
    kind, metric = spec["kind"], spec["metric"]
    if kind not in KINDS:
        fail("kind", f"{kind!r} not in {KINDS}")
    if metric not in METRICS[kind]:
        fail("metric", f"{metric!r} is not a metric of {kind} tasks {METRICS[kind]}")
    budget = spec.get("max_new_tokens", 0)
    if kind == "generative" and (not isinstance(budget, int) or budget < 1):
        fail("max_new_tokens", f"a generative task needs a budget of at least 1 token, got {budget!r}")
    classes = spec.get("classes", "")
    if metric == "macro_f1" and (not isinstance(classes, str) or len(set(classes)) < 2
                                 or not classes.isalpha() or not classes.isupper()):
        fail("classes", f"a macro_f1 task needs its option letters, e.g. 'ABC', got {classes!r}")
    return Task(task_id, spec["name"], spec["short"], kind, metric,
                int(budget) if kind == "generative" else 0, classes if metric == "macro_f1" else "")


RELEASED = TaskTable(TASKS)


def table_with(added: Sequence[Mapping[str, Any]] = ()) -> TaskTable:
    """The released table with the ``added`` task specs (a run config's ``added_tasks``) after it."""
    return RELEASED.extended([dict(spec) for spec in added])

# The released table's names, for what only knows the released tasks (the importer, the synthetic world).
RELEASED_MAX_NEW_TOKENS: dict[str, int] = RELEASED.max_new_tokens()
BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}
BY_SHORT: dict[str, Task] = {t.short: t for t in TASKS}
EMBEDDING_TASKS: tuple[Task, ...] = RELEASED.embedding
GENERATIVE_TASKS: tuple[Task, ...] = RELEASED.generative


def get_task(key: str | int) -> Task:
    """A released task by name, short name or id; raise KeyError listing the valid names."""
    if isinstance(key, int) and not 0 <= key < NUM_TASKS:
        key = str(key)  # ids outside the released 13 are not released tasks
    return RELEASED.get(key)
