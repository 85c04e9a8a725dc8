"""Per-task pools and fixed-shape batches from per-task counts (the scheduler decides the counts).

Each task has a pool of its row indices. A pool is visited in a seeded random order, without
replacement; when it runs out it starts its next epoch with a new order (the order of epoch ``e`` of
task ``t`` is ``default_rng([seed, 0, t, e]).permutation``). A batch's rows are laid out task by task in
the order of `BatchConfig.embedding_tasks` / ``generative_tasks`` (the run's table: `tasks.table_with`,
the released 13 by default), ``counts[t]`` rows each.

Embedding batch (B = the sum of the counts, fixed per run; right padding with the pad id):

- ``query_ids [B, Lq]`` int32, ``query_mask [B, Lq]`` int32 (1 = real token),
  ``query_pool_mask [B, Lq]`` float32 (1 = real token after the BOS and instruction prefix);
- ``passage_ids [2B, Lp]``, ``passage_mask``, ``passage_pool_mask``: row ``2i`` is a positive of
  query ``i`` drawn uniformly from its positives, row ``2i+1`` one of its hard negatives drawn
  uniformly. A row without hard negatives reuses what it has (docs/method.md, "Data"): row ``2i+1`` is then
  another of its positives, a different one when it has two or more, else the same one again;
  ``negative_mask [B]`` float32 is 1 where row ``2i+1`` is a real hard negative, so a loss may drop
  the reused ones (a duplicate positive only adds log 2 to that row's InfoNCE and pushes nothing away);
- ``task_ids [B]`` int32.

Generative batch: ``input_ids [Bg, Lg]``, ``attention_mask [Bg, Lg]``, ``labels [Bg, Lg]`` (the
token's own id on answer tokens and their EOS, -100 elsewhere; aligned with ``input_ids``, not
shifted: the train step shifts), ``task_ids [Bg]``; all int32.

Lengths: the kind's max length, or with buckets the smallest bucket >= the longest row of the
global batch (the global batch, so that every process pads to the same shape).

Processes: every process builds the same global batch (same pools, same seeds) and keeps rows
``[i*B/P, (i+1)*B/P)`` of it (``process_index`` i, ``process_count`` P; passages ``[2iB/P, 2(i+1)B/P)``),
so the shards of all processes together are the global batch; B and Bg must be multiples of P.

Resuming: :meth:`Batcher.state_dict` is a small JSON-able dict (per pool its epoch and position,
and the embedding step counter that seeds the draw of positives and negatives); a fresh Batcher on the
same data that loads it yields exactly the batches the first would have yielded.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from recfound_jax.data import formatting
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS, Task, table_with

STATE_VERSION = 1
# Seed streams, so that pool orders and the per-step passage draws never share a seed sequence.
_POOL_STREAM, _PASSAGE_STREAM = 0, 1

Counts = Mapping[int | str, int] | Sequence[int] | np.ndarray


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Global batch sizes, max lengths, seed, optional length buckets and this process's share.

    Sizes, lengths and seed come from a checked run config (`from_config`); `validate` checks only what
    the run config does not decide: the buckets and the process share. ``embedding_tasks`` and
    ``generative_tasks``: the tasks with a pool, in batch layout order (every task of the run's table).
    """

    embedding_batch_size: int
    generative_batch_size: int
    query_len: int
    passage_len: int
    generative_len: int
    seed: int
    query_buckets: tuple[int, ...] = ()
    passage_buckets: tuple[int, ...] = ()
    generative_buckets: tuple[int, ...] = ()
    process_index: int = 0
    process_count: int = 1
    embedding_tasks: tuple[Task, ...] = EMBEDDING_TASKS
    generative_tasks: tuple[Task, ...] = GENERATIVE_TASKS

    @classmethod
    def from_config(cls, c: ConfigDict, *, embedding_batch_size: int, generative_batch_size: int, seed: int,
                    process_index: int = 0, process_count: int = 1) -> BatchConfig:
        """The batch settings of a checked run config (its ``data`` lengths and its task table's tasks) for
        batches of these sizes."""
        table = table_with(c.get("added_tasks", ()))
        return cls(embedding_batch_size=embedding_batch_size, generative_batch_size=generative_batch_size,
                   query_len=c.data.query_len, passage_len=c.data.passage_len, generative_len=c.data.generative_len,
                   seed=seed, process_index=process_index, process_count=process_count,
                   embedding_tasks=table.embedding, generative_tasks=table.generative)

    def validate(self) -> None:
        """Raise ValueError naming the first field that does not make sense."""
        for name, kind in (("embedding_tasks", "embedding"), ("generative_tasks", "generative")):
            tasks = getattr(self, name)
            if any(t.kind != kind for t in tasks) or len({t.id for t in tasks}) != len(tasks):
                raise ValueError(f"{name} must be distinct {kind} tasks, got {[t.name for t in tasks]}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} not in [0, process_count={self.process_count})")
        for name in ("embedding_batch_size", "generative_batch_size"):
            size = getattr(self, name)
            if size % self.process_count:
                raise ValueError(f"{name}={size} must be a multiple of process_count={self.process_count}")
        for kind in ("query", "passage", "generative"):
            max_len, buckets = getattr(self, f"{kind}_len"), getattr(self, f"{kind}_buckets")
            if list(buckets) != sorted(set(buckets)) or any(not 0 < b <= max_len for b in buckets):
                raise ValueError(f"{kind}_buckets={buckets} must be increasing and within (0, {kind}_len={max_len}]")


class TaskPool:
    """The row indices of one task, drawn without replacement in a seeded order, epoch after epoch."""

    def __init__(self, task_id: int, rows: np.ndarray, seed: int, name: str | None = None):
        self.task_id = task_id
        self.name = name or f"id {task_id}"
        self.rows = np.asarray(rows, np.int64)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _current_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, _POOL_STREAM, self.task_id, self.epoch])
            self._order = rng.permutation(len(self.rows))
        return self._order

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` row indices; crossing the end of the pool starts its next epoch."""
        if count and not len(self.rows):
            raise ValueError(f"task {self.name} has no rows, but {count} were asked for")
        out = []
        while count > 0:
            order = self._current_order()
            n = min(count, len(order) - self.position)
            out.append(self.rows[order[self.position: self.position + n]])
            self.position += n
            count -= n
            if self.position == len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def state(self) -> list[int]:
        return [self.epoch, self.position, len(self.rows)]

    def load_state(self, state: Sequence[int]) -> None:
        epoch, position, size = (int(x) for x in state)
        if size != len(self.rows) or not 0 <= position < max(size, 1):
            raise ValueError(f"pool of task {self.task_id}: state {list(state)} "
                             f"does not fit a pool of {len(self.rows)}")
        self.epoch, self.position, self._order = epoch, position, None


def counts_array(counts: Counts, tasks: Sequence[Task]) -> np.ndarray:
    """Per-task counts aligned with ``tasks``, from a {task id, name or short name: count} dict or an int array."""
    if isinstance(counts, Mapping):
        out = np.zeros(len(tasks), np.int64)
        for key, n in counts.items():
            key = int(key) if isinstance(key, np.integer) else key
            found = [i for i, t in enumerate(tasks) if key in (t.id, t.name, t.short) and not isinstance(key, bool)]
            if not found:
                raise ValueError(f"task {key!r} is not one of this batch's tasks ({', '.join(t.name for t in tasks)})")
            out[found[0]] += int(n)
    else:
        out = np.asarray(counts)
        if out.shape != (len(tasks),) or (out.size and not np.issubdtype(out.dtype, np.integer)):
            raise ValueError(f"counts must be {len(tasks)} integers aligned with the tasks, got {out!r}")
        out = out.astype(np.int64)
    if (out < 0).any():
        raise ValueError(f"counts must be >= 0, got {out.tolist()}")
    return out


def largest_remainder(shares: np.ndarray, total: int, minimum: int = 0) -> np.ndarray:
    """Integer counts [n] (int64) summing to ``total`` from exact real shares [n] that sum to it.

    Each count starts at the floor of its share (at least ``minimum``); the rows still missing go one each
    to the largest remainders (share - count), and when the minimum pushed the sum over, the counts above
    it with the largest excess give one back. Ties go to the lower index.
    """
    shares = np.asarray(shares, np.float64)
    counts = np.maximum(np.floor(shares).astype(np.int64), minimum)
    while counts.sum() < total:
        counts[np.argmax(shares - counts)] += 1
    while counts.sum() > total:
        counts[np.argmax(np.where(counts > minimum, counts - shares, -np.inf))] -= 1
    return counts


def _bucket(longest: int, buckets: Sequence[int], max_len: int) -> int:
    for b in buckets:
        if b >= longest:
            return b
    return max_len


def _pad(seqs: formatting.Ragged, index: np.ndarray, length: int, pad_id: int,
         mask_data: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows ``index`` of ``seqs`` right-padded to ``length``: ids, lengths, and mask_data padded with 0."""
    starts = seqs.offsets[index]
    lengths = seqs.offsets[index + 1] - starts
    ids = np.full((len(index), length), pad_id, np.int32)
    extra = None if mask_data is None else np.zeros((len(index), length), np.uint8)
    data = seqs.data
    for r, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        ids[r, :n] = data[s: s + n]
        if extra is not None:
            extra[r, :n] = mask_data[s: s + n]
    return ids, lengths, extra


def _length_mask(lengths: np.ndarray, length: int) -> np.ndarray:
    return np.arange(length)[None, :] < lengths[:, None]


class Batcher:
    """Builds fixed-shape embedding and generative batches of a tokenized split from per-task counts."""

    def __init__(self, data: formatting.TokenizedSplit, config: BatchConfig):
        config.validate()
        for kind, limit in (("query", config.query_len), ("passage", config.passage_len),
                            ("generative", config.generative_len)):
            if data.lengths[kind] > limit:
                raise ValueError(f"data tokenized to {kind} length {data.lengths[kind]} > {kind}_len={limit}")
        self.data = data
        self.config = config
        emb, gen = data.embedding.task_ids, data.generative.task_ids
        self.embedding_pools = {t.id: TaskPool(t.id, np.flatnonzero(emb == t.id), config.seed, t.name)
                                for t in config.embedding_tasks}
        self.generative_pools = {t.id: TaskPool(t.id, np.flatnonzero(gen == t.id), config.seed, t.name)
                                 for t in config.generative_tasks}
        known = {t.id for t in (*config.embedding_tasks, *config.generative_tasks)}
        unknown = sorted((set(np.unique(emb).tolist()) | set(np.unique(gen).tolist())) - known)
        if unknown:
            raise ValueError(f"data has rows of task ids {unknown}, which are not among the batch config's tasks")
        self.embedding_step = 0
        self._embedding_lengths = data.embedding.seqs.lengths
        self._generative_lengths = data.generative.seqs.lengths

    # ------------------------------------------------------------------ rows

    def _take(self, pools: dict[int, TaskPool], tasks: Sequence[Task], counts: Counts, batch_size: int) -> np.ndarray:
        arr = counts_array(counts, tasks)
        if arr.sum() != batch_size:
            raise ValueError(f"counts {arr.tolist()} sum to {arr.sum()}, but the batch size is {batch_size}")
        parts = [pools[t.id].take(int(n)) for t, n in zip(tasks, arr) if n]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _local(self, n: int) -> slice:
        share = n // self.config.process_count
        return slice(self.config.process_index * share, (self.config.process_index + 1) * share)

    def _draw_passages(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the seq index of a random positive, of a random hard negative (or reused positive)."""
        table = self.data.embedding
        pos_start, neg_start = table.pos.offsets[rows], table.neg.offsets[rows]
        n_pos, n_neg = table.pos.offsets[rows + 1] - pos_start, table.neg.offsets[rows + 1] - neg_start
        j = rng.integers(0, n_pos)
        k_neg = rng.integers(0, np.maximum(n_neg, 1))
        k_alt = rng.integers(0, np.maximum(n_pos - 1, 1))
        k_alt = np.where(n_pos > 1, k_alt + (k_alt >= j), j)  # another positive than j when there is one
        has_neg = n_neg > 0
        neg = np.empty(len(rows), np.int64)
        neg[has_neg] = table.neg.data[(neg_start + k_neg)[has_neg]]
        neg[~has_neg] = table.pos.data[(pos_start + k_alt)[~has_neg]]
        return table.pos.data[pos_start + j], neg, has_neg.astype(np.float32)

    # ------------------------------------------------------------------ batches

    def embedding_batch(self, counts: Counts) -> dict[str, np.ndarray]:
        """This process's share of the next embedding batch with ``counts[task]`` rows per task."""
        cfg, table = self.config, self.data.embedding
        rows = self._take(self.embedding_pools, cfg.embedding_tasks, counts, cfg.embedding_batch_size)
        rng = np.random.default_rng([cfg.seed, _PASSAGE_STREAM, self.embedding_step])
        self.embedding_step += 1
        pos, neg, negative_mask = self._draw_passages(rows, rng)
        queries = table.query[rows]
        passages = np.stack([pos, neg], axis=1).reshape(-1)
        lengths = self._embedding_lengths
        query_len = _bucket(int(lengths[queries].max(initial=1)), cfg.query_buckets, cfg.query_len)
        passage_len = _bucket(int(lengths[passages].max(initial=1)), cfg.passage_buckets, cfg.passage_len)
        local = self._local(len(rows))
        local_passages = slice(2 * local.start, 2 * local.stop)
        out = {}
        for name, index, length in (("query", queries[local], query_len),
                                    ("passage", passages[local_passages], passage_len)):
            ids, lens, _ = _pad(table.seqs, index, length, self.data.pad_id)
            mask = _length_mask(lens, length)
            pool = mask & (np.arange(length)[None, :] >= table.prefix_lens[index][:, None])
            out[f"{name}_ids"] = ids
            out[f"{name}_mask"] = mask.astype(np.int32)
            out[f"{name}_pool_mask"] = pool.astype(np.float32)
        out["negative_mask"] = negative_mask[local]
        out["task_ids"] = table.task_ids[rows[local]].astype(np.int32)
        return out

    def generative_batch(self, counts: Counts) -> dict[str, np.ndarray]:
        """This process's share of the next generative batch with ``counts[task]`` rows per task."""
        cfg, table = self.config, self.data.generative
        rows = self._take(self.generative_pools, cfg.generative_tasks, counts, cfg.generative_batch_size)
        length = _bucket(int(self._generative_lengths[rows].max(initial=1)), cfg.generative_buckets, cfg.generative_len)
        local = rows[self._local(len(rows))]
        ids, lens, loss = _pad(table.seqs, local, length, self.data.pad_id, table.loss_mask)
        return {
            "input_ids": ids,
            "attention_mask": _length_mask(lens, length).astype(np.int32),
            "labels": np.where(loss == 1, ids, formatting.IGNORE_INDEX).astype(np.int32),
            "task_ids": table.task_ids[local].astype(np.int32),
        }

    def next_batches(self, embedding_counts: Counts, generative_counts: Counts) -> tuple[dict, dict]:
        """The next embedding and generative batches of one train step."""
        return self.embedding_batch(embedding_counts), self.generative_batch(generative_counts)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-able dict: per pool [epoch, position, size], the embedding step and the seed."""
        return {
            "version": STATE_VERSION,
            "seed": self.config.seed,
            "embedding_step": self.embedding_step,
            "embedding_pools": {str(k): p.state() for k, p in self.embedding_pools.items()},
            "generative_pools": {str(k): p.state() for k, p in self.generative_pools.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the Batcher that wrote ``state`` stopped (same data and seed)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"batcher state version {state.get('version')} != {STATE_VERSION}")
        if state["seed"] != self.config.seed:
            raise ValueError(f"batcher state has seed {state['seed']}, this run has seed {self.config.seed}")
        for key, pools in (("embedding_pools", self.embedding_pools), ("generative_pools", self.generative_pools)):
            if set(state[key]) != {str(k) for k in pools}:
                raise ValueError(f"batcher state {key} has tasks {sorted(state[key])}, expected {sorted(pools)}")
            for task_id, pool_state in state[key].items():
                pools[int(task_id)].load_state(pool_state)
        self.embedding_step = int(state["embedding_step"])
