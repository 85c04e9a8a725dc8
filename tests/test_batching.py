"""Per-task pools, fixed-shape batches, resuming and process shares: data/batching.py."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from recfound_jax.data import batching, formatting
from recfound_jax.data.batching import BatchConfig, Batcher
from recfound_jax.data.formatting import IGNORE_INDEX
from recfound_jax.data.records import EmbeddingRecord, GenerativeRecord
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS
from recfound_jax.tokenizer import Tokenizer

# Rows per task: U2I 5 (some without negatives), Q2I 3, I2I 4; SA 6, PM 3, AG 2.
EMB_SIZES = {0: 5, 1: 3, 2: 4}
GEN_SIZES = {6: 6, 8: 3, 12: 2}


def _records():
    rows = []
    for task_id, n in EMB_SIZES.items():
        task = EMBEDDING_TASKS[task_id]
        for i in range(n):
            pos = tuple(("Item", f"{task.short} positive {i}.{j} " + "word " * (i * 3)) for j in range(1 + i % 3))
            neg = tuple(("Item", f"{task.short} negative {i}.{j}") for j in range(i % 2 * (1 + i % 3)))
            query = ("Represent", f"{task.short} query {i} " + "x " * i)
            rows.append(EmbeddingRecord(task.name, task.id, query, pos, neg))
    for task_id, n in GEN_SIZES.items():
        task = next(t for t in GENERATIVE_TASKS if t.id == task_id)
        for i in range(n):
            turn = (f"{task.short} prompt {i} " + "p " * i, f"answer {i}")
            rows.append(GenerativeRecord(task.name, task.id, (turn,)))
    return rows


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def data(tok) -> formatting.TokenizedSplit:
    return formatting.tokenize_records(_records(), tok, query_max_len=24, passage_max_len=32, generative_max_len=40)


def _config(**kw) -> BatchConfig:
    base = dict(embedding_batch_size=6, generative_batch_size=4, query_len=24, passage_len=32, generative_len=40,
                seed=3)
    return BatchConfig(**{**base, **kw})


EMB_COUNTS = {0: 3, 1: 1, 2: 2}
GEN_COUNTS = {"Sentiment_Analysis": 2, "Product_Matching": 1, "AG": 1}


def _row_of_query(data, ids: np.ndarray) -> int:
    table = data.embedding
    ids = ids[ids != data.pad_id].tolist()
    matches = [r for r in range(len(table)) if table.seqs.row(int(table.query[r])).tolist() == ids]
    assert len(matches) == 1
    return matches[0]


def test_embedding_batch_shapes_counts_and_contents(data):
    batcher = Batcher(data, _config())
    batch = batcher.embedding_batch(EMB_COUNTS)
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert shapes == {
        "query_ids": ((6, 24), np.int32), "query_mask": ((6, 24), np.int32), "query_pool_mask": ((6, 24), np.float32),
        "passage_ids": ((12, 32), np.int32), "passage_mask": ((12, 32), np.int32),
        "passage_pool_mask": ((12, 32), np.float32), "negative_mask": ((6,), np.float32), "task_ids": ((6,), np.int32),
    }
    assert batch["task_ids"].tolist() == [0, 0, 0, 1, 2, 2]
    cases = collections.Counter()
    for _ in range(4):  # 12 draws from the 5 U2I rows: every row, each kind of negative slot
        for i in range(6):
            cases[_check_passages(data, batch, i)] += 1
        batch = batcher.embedding_batch(EMB_COUNTS)
    assert set(cases) == {"hard negative", "other positive", "same positive"}


def _check_passages(data, batch, i: int) -> str:
    """Check query i's two passages against its row; say what fills the negative slot."""
    table = data.embedding
    row = _row_of_query(data, batch["query_ids"][i])
    assert table.task_ids[row] == batch["task_ids"][i]
    positives = [table.seqs.row(int(s)).tolist() for s in table.pos.row(row)]
    negatives = [table.seqs.row(int(s)).tolist() for s in table.neg.row(row)]
    pos = batch["passage_ids"][2 * i][batch["passage_mask"][2 * i] == 1].tolist()
    neg = batch["passage_ids"][2 * i + 1][batch["passage_mask"][2 * i + 1] == 1].tolist()
    assert pos in positives
    if negatives:
        assert neg in negatives and batch["negative_mask"][i] == 1
        return "hard negative"
    # Reuses what it has: another positive when there are two or more, else the same one.
    assert neg in positives and batch["negative_mask"][i] == 0
    assert (neg != pos) == (len(positives) > 1)
    return "other positive" if neg != pos else "same positive"


def test_masks_and_padding(data):
    batch = Batcher(data, _config()).embedding_batch(EMB_COUNTS)
    table = data.embedding
    for name in ("query", "passage"):
        ids, mask, pool = batch[f"{name}_ids"], batch[f"{name}_mask"], batch[f"{name}_pool_mask"]
        lengths = mask.sum(1)
        np.testing.assert_array_equal(mask, np.arange(ids.shape[1])[None] < lengths[:, None])
        assert (ids[mask == 0] == data.pad_id).all() and (ids[:, 0] == 1).all()
        for r in range(len(ids)):
            row = ids[r, : lengths[r]].tolist()
            seq = next(s for s in range(len(table.seqs)) if table.seqs.row(s).tolist() == row)
            expected = (np.arange(ids.shape[1]) >= table.prefix_lens[seq]) & (mask[r] == 1)
            np.testing.assert_array_equal(pool[r], expected.astype(np.float32))


def test_generative_batch(data, tok):
    batch = Batcher(data, _config()).generative_batch(GEN_COUNTS)
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (4, 40), "attention_mask": (4, 40), "labels": (4, 40), "task_ids": (4,)}
    assert all(v.dtype == np.int32 for v in batch.values())
    assert batch["task_ids"].tolist() == [6, 6, 8, 12]
    table = data.generative
    for r in range(4):
        n = int(batch["attention_mask"][r].sum())
        row = next(i for i in range(len(table)) if table.seqs.row(i).tolist() == batch["input_ids"][r, :n].tolist())
        np.testing.assert_array_equal(batch["labels"][r, :n], table.labels(row))  # aligned, not shifted
        assert (batch["labels"][r, n:] == IGNORE_INDEX).all() and (batch["input_ids"][r, n:] == data.pad_id).all()
        answer = batch["labels"][r][batch["labels"][r] != IGNORE_INDEX]
        assert answer[-1] == tok.eos_id and tok.decode(answer).startswith("answer")


def test_counts_as_array_and_validation(data):
    batcher = Batcher(data, _config())
    batch = batcher.embedding_batch(np.array([3, 1, 2]))
    assert batch["task_ids"].tolist() == [0, 0, 0, 1, 2, 2]
    batch = batcher.generative_batch([0, 0, 0, 4, 0, 0, 0, 0, 0, 0])
    assert batch["task_ids"].tolist() == [6, 6, 6, 6]
    with pytest.raises(ValueError, match="sum to 5"):
        batcher.embedding_batch({0: 5})
    with pytest.raises(ValueError, match="not one of this batch's tasks"):
        batcher.embedding_batch({0: 5, "Sentiment_Analysis": 1})
    with pytest.raises(ValueError, match="has no rows"):
        batcher.generative_batch({"QR": 4})
    with pytest.raises(ValueError, match="aligned"):
        batcher.embedding_batch([6, 0])


def test_pool_is_drawn_without_replacement_epoch_by_epoch(data):
    batcher = Batcher(data, _config(embedding_batch_size=2, generative_batch_size=3))
    seen = [batcher.generative_batch({6: 3})["input_ids"] for _ in range(4)]  # two epochs of 6 rows
    rows = [tuple(r) for b in seen for r in b]
    first, second = rows[:6], rows[6:]
    assert len(set(first)) == 6 and len(set(second)) == 6 and set(first) == set(second)
    assert first != second  # a new order each epoch
    assert batcher.generative_pools[6].epoch == 2 and batcher.generative_pools[6].position == 0
    seen_u2i = collections.Counter()
    for _ in range(5):  # 10 draws from a pool of 5: each row exactly twice
        batch = batcher.embedding_batch({0: 2})
        seen_u2i.update(_row_of_query(data, q) for q in batch["query_ids"])
    assert sorted(seen_u2i.values()) == [2] * 5


def test_buckets_pad_to_the_smallest_fitting_bucket(data):
    batcher = Batcher(data, _config(query_buckets=(8, 16), passage_buckets=(8, 16, 24), generative_buckets=(16, 32)))
    batch = batcher.embedding_batch(EMB_COUNTS)
    for name, buckets, max_len in (("query", (8, 16), 24), ("passage", (8, 16, 24), 32)):
        longest = int(batch[f"{name}_mask"].sum(1).max())
        assert batch[f"{name}_ids"].shape[1] == next((b for b in buckets if b >= longest), max_len)
    gen = batcher.generative_batch(GEN_COUNTS)
    longest = int(gen["attention_mask"].sum(1).max())
    assert gen["input_ids"].shape[1] == next((b for b in (16, 32) if b >= longest), 40)
    with pytest.raises(ValueError, match="query_buckets"):
        _config(query_buckets=(16, 8)).validate()


def _run(batcher: Batcher, steps: int) -> list[dict]:
    return [{**batcher.embedding_batch(EMB_COUNTS), **batcher.generative_batch(GEN_COUNTS)} for _ in range(steps)]


def test_resume_mid_epoch_gives_the_same_batches(data):
    reference = Batcher(data, _config())
    _run(reference, 3)
    state = json.loads(json.dumps(reference.state_dict()))
    assert any(0 < pos for _, pos, _ in state["embedding_pools"].values())  # mid-epoch
    expected = _run(reference, 5)
    resumed = Batcher(data, _config())
    resumed.load_state_dict(state)
    got = _run(resumed, 5)
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = Batcher(data, _config(seed=4))
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_process_shares_make_up_the_global_batch(data):
    buckets = dict(query_buckets=(8, 16), passage_buckets=(8, 16, 24), generative_buckets=(16, 32))
    whole = _run(Batcher(data, _config(**buckets)), 3)
    shares = [_run(Batcher(data, _config(process_index=p, process_count=2, **buckets)), 3) for p in range(2)]
    for step in range(3):
        for key, value in whole[step].items():
            np.testing.assert_array_equal(np.concatenate([shares[0][step][key], shares[1][step][key]]), value)
    with pytest.raises(ValueError, match="multiple of process_count"):
        _config(process_count=4).validate()


def test_batcher_rejects_data_longer_than_the_config(data):
    with pytest.raises(ValueError, match="passage length 32"):
        Batcher(data, _config(passage_len=16))


def test_counts_array_accepts_names_ids_and_numpy_keys():
    counts = batching.counts_array({"U2I": 1, np.int64(2): 3, "Emb_query": 2}, EMBEDDING_TASKS)
    assert counts.tolist() == [1, 2, 3]
