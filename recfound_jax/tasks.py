"""The 13 RecFound tasks: the one registry every other module reads.

Ids, names, kinds and metrics are the released ones (docs/method.md, "Tasks").
The task-embedding table has one more row than there are tasks: id 13 is "none".
"""
from __future__ import annotations

import dataclasses
from typing import Literal

Kind = Literal["embedding", "generative"]


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: its released id and name, short name, kind and evaluation metric."""

    id: int
    name: str
    short: str
    kind: Kind
    metric: str

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"


TASKS: tuple[Task, ...] = (
    Task(0, "Emb_user", "U2I", "embedding", "mrr@20"),
    Task(1, "Emb_query", "Q2I", "embedding", "mrr@20"),
    Task(2, "Emb_item", "I2I", "embedding", "ndcg@20"),
    Task(3, "Query_Rewriting", "QR", "generative", "text_f1"),
    Task(4, "Sequential_Recommendation", "SR", "generative", "recall@1"),
    Task(5, "Product_Relation_Prediction", "PRP", "generative", "macro_f1"),
    Task(6, "Sentiment_Analysis", "SA", "generative", "macro_f1"),
    Task(7, "Attribute_Value_Extraction", "AVE", "generative", "triple_f1"),
    Task(8, "Product_Matching", "PM", "generative", "yes_f1"),
    Task(9, "user_profile", "UP", "generative", "text_f1"),
    Task(10, "item_profile", "IP", "generative", "text_f1"),
    Task(11, "Answerability_Prediction", "AP", "generative", "yes_f1"),
    Task(12, "Answer_Generation", "AG", "generative", "text_f1"),
)

NUM_TASKS = len(TASKS)
NONE_TASK_ID = NUM_TASKS  # the extra row of the task-embedding table
TASK_TABLE_SIZE = NUM_TASKS + 1

# The released evaluation's max new tokens of each generative task: one token for an option letter or
# yes/no, 256 for QR and AVE, 2,048 for the profiles and answers. A run's eval.max_new_tokens starts here.
RELEASED_MAX_NEW_TOKENS: dict[str, int] = {
    "QR": 256, "SR": 1, "PRP": 1, "SA": 1, "AVE": 256, "PM": 1, "UP": 2048, "IP": 2048, "AP": 1, "AG": 2048,
}

BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}
BY_SHORT: dict[str, Task] = {t.short: t for t in TASKS}
EMBEDDING_TASKS: tuple[Task, ...] = tuple(t for t in TASKS if t.kind == "embedding")
GENERATIVE_TASKS: tuple[Task, ...] = tuple(t for t in TASKS if t.kind == "generative")


def get_task(key: str | int) -> Task:
    """Look a task up by released name, short name or id; raise KeyError listing the valid names."""
    if isinstance(key, int) and 0 <= key < NUM_TASKS:
        return TASKS[key]
    if isinstance(key, str):
        if key in BY_NAME:
            return BY_NAME[key]
        if key in BY_SHORT:
            return BY_SHORT[key]
    valid = ", ".join(t.name for t in TASKS)
    raise KeyError(f"unknown task {key!r}; valid tasks: {valid}")
