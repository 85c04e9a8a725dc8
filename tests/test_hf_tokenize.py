"""Tokenizing through datasets.Dataset.map and its fingerprinted cache: recfound_jax/data/hf_tokenize.py."""
from __future__ import annotations

import numpy as np
import pytest

from recfound_jax import config as config_lib
from recfound_jax.data import formatting, hf_tokenize, records, sources
from recfound_jax.demo import synthetic, vocabulary
from recfound_jax.tokenizer import Tokenizer
from tests.test_sources import FILES, WRITERS

LENGTHS = dict(query_max_len=72, passage_max_len=48, generative_max_len=176)  # the demo's
SHORT = dict(query_max_len=24, passage_max_len=16, generative_max_len=64)  # every kind has rows cut


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def synthetic_data():
    data = config_lib.synthetic_dir(1, 0)
    synthetic.ensure_dataset(data, scale=1, seed=0)
    return data


def assert_same_split(a: formatting.TokenizedSplit, b: formatting.TokenizedSplit) -> None:
    """Every array equal, dtypes too, and the same truncation counts."""
    for table in ("embedding", "generative"):
        for name, value in vars(getattr(a, table)).items():
            other = getattr(getattr(b, table), name)
            pairs = [(value.data, other.data), (value.offsets, other.offsets)] if isinstance(
                value, formatting.Ragged) else [(value, other)]
            for x, y in pairs:
                assert x.dtype == y.dtype and np.array_equal(x, y), f"{table}.{name}"
    assert (a.stats, a.lengths, a.pad_id) == (b.stats, b.lengths, b.pad_id)


@pytest.mark.parametrize("num_proc, lengths", [(1, LENGTHS), (2, SHORT)])
def test_map_gives_the_arrays_of_the_in_process_tokenizer_on_the_synthetic_dataset(tok, synthetic_data, num_proc,
                                                                                   lengths):
    for split in ("train", "valid"):
        rows, report = records.load_split(synthetic_data, split)
        reference = formatting.tokenize_records(rows, tok, report=report, **lengths)
        mapped = hf_tokenize.tokenize_split(synthetic_data, split, tok, num_proc=num_proc, **lengths)
        assert_same_split(reference, mapped)
        assert mapped.report == report
        assert all(s.truncated > 0 for s in reference.stats.values()) == (lengths is SHORT)


def test_the_three_forms_give_identical_tokenized_splits(tmp_path, tok):
    lengths = dict(query_max_len=8, passage_max_len=16, generative_max_len=16)  # some rows truncated
    splits = {form: hf_tokenize.tokenize_split(write(tmp_path / form), "train", tok, **lengths)
              for form, write in WRITERS.items()}
    assert len(splits["jsonl"].embedding) == 2 and len(splits["jsonl"].generative) == 2
    assert splits["jsonl"].stats["generative"].truncated > 0
    for form in ("parquet", "dataset_dict"):
        assert_same_split(splits["jsonl"], splits[form])


def test_one_kind_alone_gives_an_empty_table_for_the_other(tmp_path, tok):
    data = WRITERS["parquet"](tmp_path / "p", {"train": {"gen.jsonl": FILES["train"]["Sentiment_Analysis.jsonl"]}})
    rows, _ = sources.load_split(data, "train")
    mapped = hf_tokenize.tokenize_split(data, "train", tok, cache_dir=tmp_path / "cache", **LENGTHS)
    assert len(mapped.embedding) == 0 and len(mapped.embedding.seqs) == 0
    assert_same_split(formatting.tokenize_records(rows, tok, **LENGTHS), mapped)


def _small_vocabulary(path, data) -> Tokenizer:
    texts = [row["text"][0] for row in synthetic.read_rows(data, "train", "Sentiment_Analysis")]
    return Tokenizer(vocabulary.train_vocabulary(texts, 600, path))


def test_the_cache_is_reused_and_made_anew_for_another_tokenizer_or_length(tmp_path, tok, synthetic_data,
                                                                           monkeypatch):
    cache = tmp_path / "cache"
    first = hf_tokenize.tokenize_split(synthetic_data, "valid", tok, cache_dir=cache, **LENGTHS)
    files = sorted(p.name for p in cache.glob("*.arrow"))
    assert [name.split("-")[:2] for name in files] == [["valid", "embedding"], ["valid", "generative"]]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached tables should have been read")

    with monkeypatch.context() as patched:
        patched.setattr(hf_tokenize, "_embedding_batch", no_tokenizing)
        patched.setattr(hf_tokenize, "_generative_batch", no_tokenizing)
        again = hf_tokenize.tokenize_split(synthetic_data, "valid", tok, cache_dir=cache, num_proc=2, **LENGTHS)
        assert_same_split(first, again)
        with pytest.raises(AssertionError, match="cached tables"):
            hf_tokenize.tokenize_split(synthetic_data, "valid", tok, cache_dir=cache,
                                       **{**LENGTHS, "generative_max_len": 64})
    assert sorted(p.name for p in cache.glob("*.arrow")) == files

    shorter = hf_tokenize.tokenize_split(synthetic_data, "valid", tok, cache_dir=cache,
                                         **{**LENGTHS, "generative_max_len": 64})
    assert len(list(cache.glob("*.arrow"))) == 3  # the generative table anew, the embedding table read again
    assert shorter.stats["generative"].truncated > first.stats["generative"].truncated
    other = _small_vocabulary(tmp_path / "small.model", synthetic_data)
    with_other = hf_tokenize.tokenize_split(synthetic_data, "valid", other, cache_dir=cache, **LENGTHS)
    assert len(list(cache.glob("*.arrow"))) == 5
    rows, _ = records.load_split(synthetic_data, "valid")
    assert_same_split(formatting.tokenize_records(rows, other, **LENGTHS), with_other)
