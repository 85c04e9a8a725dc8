"""A split's `TokenizedSplit` through ``datasets.Dataset.map(batched=True, num_proc=...)`` and its
fingerprinted cache.

The rows are read and validated first (`sources.load_split`: a bad row is refused with its
``file:line`` or ``file:row i`` before anything is tokenized). Then two tables go through ``map``:

- the embedding sequences: every distinct query and every distinct passage once, in the order
  `formatting.tokenize_records` stores them (per chunk of `formatting.CHUNK_ROWS` rows, its new queries
  then its new passages), with the rows' indices into them kept here;
- the generative rows, one conversation each.

Each sequence is formatted exactly as `formatting.Formatter` does it on its own, so the arrays are those
of `formatting.tokenize_records`, whatever the batch size or ``num_proc``. Truncation is counted per
row in ``stats_*`` columns and summed afterwards.

Cache: with ``cache_dir``, ``map`` writes ``{cache_dir}/{split}-{table}-{fingerprint}.arrow`` (one file a
process) and a later call with the same fingerprint reads it instead. The fingerprint hashes the input
table's own ``datasets`` fingerprint (a hash of its content), the tokenizer file's bytes, the lengths
and `formatting.FORMAT_VERSION`; it is given to ``map`` explicitly because ``datasets`` would hash the
tokenizer's path, not its file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recfound_jax.data import formatting, sources
from recfound_jax.data import records as records_lib
from recfound_jax.data.formatting import IGNORE_INDEX, TruncationStats
from recfound_jax.tasks import TaskTable
from recfound_jax.tokenizer import TextTokenizer, load_tokenizer

MAP_BATCH_ROWS = formatting.CHUNK_ROWS  # rows a map call formats: SentencePiece encodes them in one batch
QUERY, PASSAGE = 0, 1  # the embedding table's "kind" column
STATS_FIELDS = tuple(f.name for f in dataclasses.fields(TruncationStats))


@dataclasses.dataclass(frozen=True)
class EmbeddingPlan:
    """The distinct embedding sequences in storage order, and each row's indices into them."""

    pairs: list[records_lib.Pair]
    kinds: list[int]  # QUERY or PASSAGE
    query: list[int]
    pos: list[list[int]]
    neg: list[list[int]]


def embedding_plan(rows: Sequence[records_lib.EmbeddingRecord]) -> EmbeddingPlan:
    """Which sequences to tokenize, in the order `formatting.tokenize_records` stores them."""
    index: dict[int, dict[records_lib.Pair, int]] = {QUERY: {}, PASSAGE: {}}
    pairs: list[records_lib.Pair] = []
    kinds: list[int] = []
    for start in range(0, len(rows), formatting.CHUNK_ROWS):
        chunk = rows[start: start + formatting.CHUNK_ROWS]
        passages = [p for r in chunk for p in r.pos + r.neg]
        for kind, chunk_pairs in ((QUERY, [r.query for r in chunk]), (PASSAGE, passages)):
            seen = index[kind]
            for pair in chunk_pairs:
                if pair not in seen:
                    seen[pair] = len(pairs)
                    pairs.append(pair)
                    kinds.append(kind)
    return EmbeddingPlan(
        pairs=pairs, kinds=kinds,
        query=[index[QUERY][r.query] for r in rows],
        pos=[[index[PASSAGE][p] for p in r.pos] for r in rows],
        neg=[[index[PASSAGE][p] for p in r.neg] for r in rows],
    )


# ----------------------------------------------------------------------------- map functions (run in workers)

_FORMATTERS: dict[tuple[str, int], formatting.Formatter] = {}


def _formatter(tokenizer_path: str, num_threads: int) -> formatting.Formatter:
    """One Formatter per process and tokenizer file (a worker builds its own on its first batch)."""
    key = (tokenizer_path, num_threads)
    if key not in _FORMATTERS:
        _FORMATTERS[key] = formatting.Formatter(load_tokenizer(tokenizer_path), num_threads=num_threads)
    return _FORMATTERS[key]


def _list_array(packed: formatting.Ragged) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(packed.offsets.astype(np.int32)), pa.array(packed.data))


def _stats_columns(stats: Sequence[TruncationStats]) -> dict[str, pa.Array]:
    return {f"stats_{name}": pa.array([getattr(s, name) for s in stats], pa.int32()) for name in STATS_FIELDS}


def _embedding_batch(batch: pa.Table, *, tokenizer_path: str, num_threads: int, query_len: int, passage_len: int,
                     dtype: str) -> pa.Table:
    fmt = _formatter(tokenizer_path, num_threads)
    pairs = list(zip(batch.column("instruction").to_pylist(), batch.column("text").to_pylist()))
    kinds = batch.column("kind").to_pylist()
    out = fmt.embedding_each(pairs, [query_len if k == QUERY else passage_len for k in kinds])
    return pa.table({
        "ids": _list_array(formatting.Ragged.from_rows([ids for ids, _, _ in out], np.dtype(dtype))),
        "prefix_len": pa.array([n for _, n, _ in out], pa.int32()),
        "kind": batch.column("kind"),
        **_stats_columns([s for _, _, s in out]),
    })


def _generative_batch(batch: pa.Table, *, tokenizer_path: str, num_threads: int, max_len: int,
                      dtype: str) -> pa.Table:
    fmt = _formatter(tokenizer_path, num_threads)
    out = fmt.generative_each(batch.column("turns").to_pylist(), max_len)
    labels = formatting.Ragged.from_rows([labels for _, labels, _ in out], np.int32)
    loss_mask = formatting.Ragged((labels.data != IGNORE_INDEX).astype(np.uint8), labels.offsets)
    return pa.table({
        "ids": _list_array(formatting.Ragged.from_rows([ids for ids, _, _ in out], np.dtype(dtype))),
        "loss_mask": _list_array(loss_mask),
        **_stats_columns([s for _, _, s in out]),
    })


# ----------------------------------------------------------------------------- driving map


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def map_fingerprint(table: datasets.Dataset, tokenizer_digest: str, settings: dict[str, Any]) -> str:
    """The fingerprint of a tokenized table: its input's, the tokenizer file's digest, lengths, format version."""
    key = {"input": table._fingerprint, "tokenizer": tokenizer_digest, "format_version": formatting.FORMAT_VERSION,
           **settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def threads_per_process(num_proc: int) -> int:
    """SentencePiece threads for each map process: every core in one process (as `tokenize_records` encodes),
    the cores shared out among several."""
    if num_proc <= 1:
        return -1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // num_proc)


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if show else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _map(table: datasets.Dataset, function: Any, fn_kwargs: dict[str, Any], *, name: str,
         cache_dir: Path | None, tokenizer_digest: str, num_proc: int) -> pa.Table:
    """The mapped table's Arrow data; read from ``cache_dir`` when this fingerprint was mapped before."""
    if len(table) == 0:
        return function(table.with_format("arrow")[:], **fn_kwargs)
    settings = {"table": name, **{k: v for k, v in fn_kwargs.items() if k not in ("tokenizer_path", "num_threads")}}
    fingerprint = map_fingerprint(table, tokenizer_digest, settings)
    cache_file = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_file = str(cache_dir / f"{name}-{fingerprint}.arrow")
    mapped = table.with_format("arrow").map(
        function, batched=True, batch_size=MAP_BATCH_ROWS, fn_kwargs=fn_kwargs, remove_columns=table.column_names,
        num_proc=num_proc if num_proc > 1 else None, cache_file_name=cache_file, new_fingerprint=fingerprint,
        keep_in_memory=cache_file is None, desc=f"tokenizing {name}")
    return mapped.data.table


def _ragged(column: pa.ChunkedArray, dtype: Any) -> formatting.Ragged:
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return formatting.Ragged(np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype), offsets)


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _summed_stats(table: pa.Table, mask: np.ndarray | None = None) -> TruncationStats:
    columns = {name: _column(table, f"stats_{name}") for name in STATS_FIELDS}
    if mask is not None:
        columns = {name: col[mask] for name, col in columns.items()}
    return TruncationStats(**{name: int(col.sum()) for name, col in columns.items()})


def tokenize_records(
    records: Sequence[records_lib.Record],
    tokenizer: TextTokenizer,
    *,
    query_max_len: int,
    passage_max_len: int,
    generative_max_len: int,
    report: records_lib.LoadReport | None = None,
    cache_dir: str | Path | None = None,
    split: str = "rows",
    num_proc: int = 1,
    progress: bool = False,
) -> formatting.TokenizedSplit:
    """`formatting.tokenize_records` through ``Dataset.map``: the same arrays, made by ``num_proc`` processes
    and cached in ``cache_dir`` (under names starting with ``split``) when given."""
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    dtype = np.dtype(formatting.token_dtype(tokenizer.vocab_size))
    emb = [r for r in records if isinstance(r, records_lib.EmbeddingRecord)]
    gen = [r for r in records if isinstance(r, records_lib.GenerativeRecord)]
    plan = embedding_plan(emb)
    common = {"tokenizer_path": str(tokenizer.path), "num_threads": threads_per_process(num_proc), "dtype": dtype.name}
    how = {"cache_dir": None if cache_dir is None else Path(cache_dir), "num_proc": num_proc,
           # a tokenizer.json's special ids come from the files beside it, so they are hashed too
           "tokenizer_digest": f"{_file_digest(Path(tokenizer.path))}:{tokenizer.bos_id}:{tokenizer.eos_id}:"
                               f"{tokenizer.pad_id}"}
    seqs_in = datasets.Dataset(pa.table({
        "instruction": pa.array([i for i, _ in plan.pairs], pa.string()),
        "text": pa.array([t for _, t in plan.pairs], pa.string()),
        "kind": pa.array(plan.kinds, pa.int8()),
    }))
    turns_in = datasets.Dataset(pa.table({"turns": pa.array([r.turns for r in gen], pa.list_(pa.list_(pa.string())))}))
    with _progress_bars(progress):
        seqs = _map(seqs_in, _embedding_batch, {**common, "query_len": query_max_len, "passage_len": passage_max_len},
                    name=f"{split}-embedding", **how)
        convs = _map(turns_in, _generative_batch, {**common, "max_len": generative_max_len},
                     name=f"{split}-generative", **how)
    kinds = _column(seqs, "kind")
    embedding = formatting.EmbeddingTable(
        seqs=_ragged(seqs.column("ids"), dtype),
        prefix_lens=_column(seqs, "prefix_len").astype(np.int32),
        query=np.asarray(plan.query, np.int64),
        pos=formatting.Ragged.from_rows(plan.pos, np.int64),
        neg=formatting.Ragged.from_rows(plan.neg, np.int64),
        task_ids=np.asarray([r.task_id for r in emb], np.int32),
    )
    generative = formatting.GenerativeTable(
        seqs=_ragged(convs.column("ids"), dtype),
        loss_mask=_ragged(convs.column("loss_mask"), np.uint8).data,
        task_ids=np.asarray([r.task_id for r in gen], np.int32),
    )
    stats = {"query": _summed_stats(seqs, kinds == QUERY), "passage": _summed_stats(seqs, kinds == PASSAGE),
             "generative": _summed_stats(convs)}
    lengths = {"query": query_max_len, "passage": passage_max_len, "generative": generative_max_len}
    return formatting.TokenizedSplit(embedding, generative, tokenizer.pad_id, lengths, stats, report)


def tokenize_split(
    data_dir: str | Path,
    split: str,
    tokenizer: TextTokenizer,
    *,
    query_max_len: int,
    passage_max_len: int,
    generative_max_len: int,
    cache_dir: str | Path | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    tasks: Iterable[str | int] | None = None,
    max_line_bytes: int = records_lib.DEFAULT_MAX_LINE_BYTES,
    loaded: tuple[list[records_lib.Record], records_lib.LoadReport] | None = None,
    num_proc: int = 1,
    progress: bool = False,
    table: TaskTable | None = None,
) -> formatting.TokenizedSplit:
    """Load and validate ``split`` in any form `sources` reads, then tokenize it (`tokenize_records`).

    ``loaded``: the split's rows and report from `sources.load_split` with the same settings, when the caller
    has validated them already. With ``cache_dir`` the tokenized tables of the same rows, tokenizer and lengths
    are read back from ``datasets``' cache files instead of being made again. ``table``: the run's tasks,
    which the rows may name (`config.task_table`; default: the released 13).
    """
    rows, report = loaded or sources.load_split(data_dir, split, on_error=on_error, tasks=tasks,
                                                max_line_bytes=max_line_bytes, table=table)
    return tokenize_records(rows, tokenizer, query_max_len=query_max_len, passage_max_len=passage_max_len,
                            generative_max_len=generative_max_len, report=report, cache_dir=cache_dir, split=split,
                            num_proc=num_proc, progress=progress)
