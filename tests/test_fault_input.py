"""Faults of a run's inputs, provoked for real: bad data rows of every kind (strict and skip mode, in the
trainer and through the CLI), a row parser fed by hypothesis, a base whose weights make every step
non-finite, and pickle weight files that would run code if loaded.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from recfound_jax import jsonio
from recfound_jax.convert.hf import load_hf
from recfound_jax.data import records
from recfound_jax.data.records import EmbeddingRecord, GenerativeRecord, RecordError
from recfound_jax.runs import checkpoint
from recfound_jax.tasks import TASKS
from recfound_jax.tokenizer import Tokenizer
from recfound_jax.train.trainer import Trainer
from tests import fault_fixtures as ff
from tests.train_fixtures import tiny_config

EMB = {"query": ["Represent the user:", "bought shoes"], "pos": [["Item:", "running shoe"]],
       "neg": [["Item:", "garden hose"]], "task": "Emb_user"}
GEN = {"text": ["Rate the review: great!", "E"], "task": "Sentiment_Analysis"}
TEN_MB = 10 * 1024 * 1024


def _row(obj) -> bytes:
    return json.dumps(obj).encode()


# (kind, bad line, field, reason); the line is the second of its file, after a good row.
BAD_KINDS = [
    ("invalid_json", b'{"task": "Sentiment_Analysis", "text": ["p", "a"]', "line", "invalid_json"),
    ("truncated_file", _row(GEN)[:25], "line", "invalid_json"),  # the file's last line, cut mid-JSON
    ("not_an_object", b'["Sentiment_Analysis", "p", "a"]', "row", "not_object"),
    ("missing_task", _row({"text": ["p", "a"]}), "task", "missing_field"),
    ("missing_positives", _row({k: v for k, v in EMB.items() if k != "pos"}), "pos", "missing_field"),
    ("mistyped_query", _row({**EMB, "query": "bought shoes"}), "query", "wrong_type"),
    ("mistyped_answer", _row({**GEN, "text": ["p", 5]}), "text[1]", "wrong_type"),
    ("unknown_task", _row({**GEN, "task": "Movie_Rating"}), "task", "unknown_task"),
    ("kind_mismatch", _row({**EMB, "text": ["p", "a"]}), "text", "kind_mismatch"),
    ("empty_passage", _row({**EMB, "pos": [["Item:", "  "]]}), "pos[0][1]", "empty_text"),
    ("empty_turns", _row({**GEN, "text": []}), "text", "empty_text"),
    ("no_positive", _row({**EMB, "pos": []}), "pos", "no_positive"),
    ("odd_text_list", _row({**GEN, "text": ["p", "a", "p2"]}), "text", "odd_text_length"),
    ("not_utf8", b'{"task": "Sentiment_Analysis", "text": ["caf\xe9", "a"]}', "line", "not_utf8"),
    ("ten_mb_line", b'{"task": "Sentiment_Analysis", "text": ["' + b"x" * TEN_MB + b'", "a"]}', "line",
     "line_too_long"),
]
KIND_IDS = [kind for kind, *_ in BAD_KINDS]


def _write_bad_file(folder: Path, index: int, kind: str, line: bytes) -> Path:
    """``folder/bad_<index>_<kind>.jsonl``: a good row, then the bad one (no newline after a truncated file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bad_{index:02d}_{kind}.jsonl"
    path.write_bytes(_row(GEN) + b"\n" + line + (b"" if kind == "truncated_file" else b"\n"))
    return path


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = ff.shared_base(tmp_path_factory)
    cache = ff.shared_cache(tmp_path_factory)
    return base, cache, ff.cli_env(cache)


@pytest.fixture(scope="module")
def bad_corpus(setup, tmp_path_factory) -> Path:
    """The synthetic train and valid splits plus one file per bad kind in train and three in valid."""
    _, cache, _ = setup
    data = ff.copy_dataset(ff.synthetic_data(cache), tmp_path_factory.mktemp("bad") / "data")
    for i, (kind, line, _, _) in enumerate(BAD_KINDS):
        _write_bad_file(data / "train", i, kind, line)
    for i, (kind, line, _, _) in enumerate(BAD_KINDS[-3:]):
        _write_bad_file(data / "valid", i, kind, line)
    return data


# ----------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("kind, line, field, reason", BAD_KINDS, ids=KIND_IDS)
def test_strict_mode_names_file_line_field_and_reason_before_compiling(setup, tmp_path, kind, line, field, reason):
    base, _, _ = setup
    path = _write_bad_file(tmp_path / "data" / "train", 0, kind, line)
    c = tiny_config(base, data__dir=str(tmp_path / "data"))
    with pytest.raises(RecordError) as info:
        Trainer(c, tmp_path / "run", progress=False)
    assert str(info.value).startswith(f"{path}:2: {field}: {reason}: "), str(info.value)[:300]
    assert len(str(info.value)) < 1000  # the 10 MB line is not echoed
    assert not (tmp_path / "run" / checkpoint.CHECKPOINTS).exists()


def test_strict_mode_cli_fails_fast_with_the_first_bad_row(setup, bad_corpus, tmp_path):
    base, _, env = setup
    config = ff.write_config(tmp_path / "config.py", base, data__dir=str(bad_corpus))
    proc, seconds = ff.run_cli(config, tmp_path / "run", env=env)
    kind, _, field, reason = BAD_KINDS[0]
    assert proc.returncode != 0
    assert _last_line(proc.stderr).startswith(
        f"recfound_jax.data.records.RecordError: {bad_corpus}/train/bad_00_{kind}.jsonl:2: {field}: {reason}: ")
    assert not (tmp_path / "run" / checkpoint.CHECKPOINTS).exists()
    assert seconds < 60, f"{seconds:.1f} s to reject the data"


def test_skip_mode_counts_every_reason_in_the_log_and_summary(setup, bad_corpus, tmp_path):
    base, _, env = setup
    config = ff.write_config(tmp_path / "config.py", base, data__dir=str(bad_corpus), data__on_error="skip",
                             train__steps=8, train__checkpoint_every=8)
    proc, _ = ff.run_cli(config, tmp_path / "run", env=env)
    ff.finished(proc, "the skip-mode run")
    report = jsonio.read_json(tmp_path / "run" / "summary.json")["data_load_report"]
    expected = {"train": {}, "valid": {}}
    for split, kinds in (("train", BAD_KINDS), ("valid", BAD_KINDS[-3:])):
        for _, _, _, reason in kinds:
            expected[split][reason] = expected[split].get(reason, 0) + 1
    for split in ("train", "valid"):
        assert report[split]["skipped"] == expected[split], split
        for reason, n in expected[split].items():
            assert f"skipped {reason}: {n}" in proc.stderr, (split, reason)
        assert report[split]["kept"] == sum(report[split]["kept_per_task"].values())
    synthetic_train = sum(1 for p in (bad_corpus / "train").glob("*.jsonl") if not p.name.startswith("bad_")
                          for _ in p.open("rb"))
    assert report["train"]["kept"] == synthetic_train + len(BAD_KINDS)  # the good first row of each bad file


# ----------------------------------------------------------------------------- the row parser

FIELDS = ("task", "query", "pos", "neg", "text", "source", "id")
TASK_NAMES = [t.name for t in TASKS]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(TASK_NAMES))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
                      max_leaves=16)
rows = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def _check_outcome(line, max_line_bytes: int = records.DEFAULT_MAX_LINE_BYTES) -> None:
    """parse_row returns a record that satisfies the schema, or raises RecordError with a known reason."""
    try:
        record = records.parse_row(line, path="f.jsonl", line_no=7, max_line_bytes=max_line_bytes)
    except RecordError as err:
        assert err.reason in records.REASONS
        assert str(err).startswith(f"f.jsonl:7: {err.field}: {err.reason}: ")
        return
    assert isinstance(record, (EmbeddingRecord, GenerativeRecord))
    if isinstance(record, EmbeddingRecord):
        assert record.pos and record.query[1].strip() and all(p[1].strip() for p in record.pos + record.neg)
    else:
        assert record.turns and all(a.strip() and b.strip() for a, b in record.turns)


@settings(max_examples=300, deadline=None)
@given(rows, st.booleans())
def test_parse_row_on_generated_rows_only_raises_record_error(row, as_bytes):
    line = json.dumps(row, ensure_ascii=False)
    _check_outcome(line.encode("utf-8", "surrogatepass") if as_bytes else line)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)), st.integers(1, 300))
def test_parse_row_on_arbitrary_bytes_and_text_only_raises_record_error(line, max_line_bytes):
    _check_outcome(line, max_line_bytes)


# ----------------------------------------------------------------------------- non-finite steps

SNOWMAN = "☃"


def _spoil_rows(path: Path) -> None:
    """Put a snowman at both ends of every query and prompt text (so truncation cannot drop it)."""
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "query" in row:
            row["query"][1] = f"{SNOWMAN} {row['query'][1]} {SNOWMAN}"
        else:
            row["text"][0] = f"{SNOWMAN} {row['text'][0]} {SNOWMAN}"
        out.append(json.dumps(row))
    path.write_text("\n".join(out) + "\n")


def test_nonfinite_steps_are_skipped_then_stop_the_run_and_no_checkpoint_holds_nan(setup, tmp_path):
    """A base whose embedding row of one token is NaN, and train rows that all hold that token (valid rows,
    the S2Sched probes, do not): every step's loss is NaN."""
    base, cache, env = setup
    poisoned = tmp_path / "base"
    shutil.copytree(base, poisoned)
    tokenizer = Tokenizer(poisoned / "tokenizer.model")
    (snowman,) = [i for i in tokenizer.encode(SNOWMAN) if tokenizer.id_to_piece(i) == SNOWMAN]
    weights = load_file(poisoned / "model.safetensors")
    weights["model.embed_tokens.weight"][snowman] = np.nan
    save_file(weights, poisoned / "model.safetensors")
    data = ff.copy_dataset(ff.synthetic_data(cache), tmp_path / "data")
    for path in (data / "train").glob("*.jsonl"):
        _spoil_rows(path)
    assert not any(SNOWMAN in p.read_text() for p in (data / "valid").glob("*.jsonl"))
    config = ff.write_config(tmp_path / "config.py", poisoned, data__dir=str(data), train__steps=8,
                             train__checkpoint_every=1, train__max_nonfinite=3)
    workdir = tmp_path / "run"
    proc, _ = ff.run_cli(config, workdir, env=env)

    assert proc.returncode != 0
    message = _last_line(proc.stderr)
    assert message.startswith("recfound_jax.train.trainer.NonFiniteError: 3 steps in a row had a non-finite loss "
                              "or gradient (last at step 3); tasks in the last batch: "), message
    named = message.split("tasks in the last batch: ")[1]
    assert sum(t.name in named for t in TASKS) >= 2, named
    logged = ff.metrics(workdir)
    assert [(r["step"], r["finite"]) for r in logged] == [(1, 0), (2, 0), (3, 0)]
    assert all(not np.isfinite(r["loss"]) for r in logged)
    with checkpoint.Checkpointer(workdir) as checkpointer:
        assert checkpointer.steps() == [1, 2]
    start = ff.orbax_arrays(workdir / checkpoint.INITIAL)
    for step in (1, 2):
        params = ff.orbax_arrays(workdir / checkpoint.CHECKPOINTS / str(step) / "params")
        opt_state = ff.orbax_arrays(workdir / checkpoint.CHECKPOINTS / str(step) / "opt_state")
        assert all(np.all(np.isfinite(x)) for x in [*params.values(), *opt_state.values()])
        assert params.keys() == start.keys()
        for key, value in params.items():  # skipped steps leave the trainable state as it started
            np.testing.assert_array_equal(value, start[key], err_msg=key)


# ----------------------------------------------------------------------------- unsafe weight files


class _Trap:
    """Unpickling this touches ``marker``: what a malicious pytorch_model.bin could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _trap(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Trap(marker)}))
    return path


def test_the_trap_would_run_code_if_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(_trap(tmp_path / "x.bin", marker).read_bytes())  # noqa: S301 (the point of the test)
    assert marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.pt", "model.pth"])
def test_pickle_weights_are_refused_unread(setup, tmp_path, name):
    base, _, _ = setup
    folder, marker = tmp_path / "base", tmp_path / "ran"
    folder.mkdir()
    shutil.copy(base / "config.json", folder / "config.json")
    _trap(folder / name, marker)
    with pytest.raises(ValueError, match=rf"only pickle weights \({name}\).*safetensors only"):
        load_hf(folder, dtype=jnp.float32)
    index = {"weight_map": {"model.embed_tokens.weight": name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"{name}.* is not a \.safetensors file"):
        load_hf(folder, dtype=jnp.float32)
    assert not marker.exists()


def test_safetensors_load_while_a_pickle_beside_them_stays_unread(setup, tmp_path):
    base, _, _ = setup
    folder, marker = tmp_path / "base", tmp_path / "ran"
    shutil.copytree(base, folder)
    _trap(folder / "pytorch_model.bin", marker)
    model = load_hf(folder, dtype=jnp.float32)
    expected = load_file(base / "model.safetensors")["model.embed_tokens.weight"]
    np.testing.assert_array_equal(np.asarray(model.embed.get_value()), expected)
    assert not marker.exists()
