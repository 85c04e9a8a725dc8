"""Reading and validating released-format JSONL rows: recfound_jax/data/records.py."""
from __future__ import annotations

import json
import random

import pytest

from recfound_jax.data import records
from recfound_jax.data.records import EmbeddingRecord, GenerativeRecord, RecordError

EMB = {"query": ["Represent the user:", "bought shoes"], "pos": [["Item:", "running shoe"]],
       "neg": [["Item:", "garden hose"]], "task": "Emb_user"}
GEN = {"text": ["Rate the review: great!", "E"], "task": "Sentiment_Analysis"}


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


def _write(path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_valid_rows_parse_to_records():
    emb = records.parse_row(_line({**EMB, "source": "Beauty"}), path="f.jsonl", line_no=3)
    assert emb == EmbeddingRecord("Emb_user", 0, ("Represent the user:", "bought shoes"),
                                  (("Item:", "running shoe"),), (("Item:", "garden hose"),), "Beauty")
    gen = records.parse_row(json.dumps({"text": ["p1", "a1", "p2", "a2"], "task": "Answer_Generation"}))
    assert gen == GenerativeRecord("Answer_Generation", 12, (("p1", "a1"), ("p2", "a2")), None)


def test_empty_instruction_and_empty_negatives_are_valid():
    row = {**EMB, "query": ["", "text"], "neg": []}
    rec = records.parse_row(_line(row))
    assert rec.query == ("", "text") and rec.neg == ()


BAD_ROWS = [
    # (line, field, reason)
    (b'{"task": "Emb_user", ', "line", "invalid_json"),
    (b'{"task": "Sentiment_Analysis", "text": ["p\xff", "a"]}', "line", "not_utf8"),
    (b'{"task": "Sentiment_Analysis", "text": ["\\ud800", "a"]}', "text[0]", "not_utf8"),
    (b"[1, 2]", "row", "not_object"),
    (_line({"text": ["p", "a"]}), "task", "missing_field"),
    (_line({k: v for k, v in EMB.items() if k != "pos"}), "pos", "missing_field"),
    (_line({k: v for k, v in EMB.items() if k != "neg"}), "neg", "missing_field"),
    (_line({"task": "Sentiment_Analysis"}), "text", "missing_field"),
    (_line({**GEN, "task": 6}), "task", "wrong_type"),
    (_line({**EMB, "query": "bought shoes"}), "query", "wrong_type"),
    (_line({**EMB, "query": ["a", "b", "c"]}), "query", "wrong_type"),
    (_line({**EMB, "pos": [["Item:", 3]]}), "pos[0][1]", "wrong_type"),
    (_line({**EMB, "neg": {"a": 1}}), "neg", "wrong_type"),
    (_line({**GEN, "text": "just a string"}), "text", "wrong_type"),
    (_line({**GEN, "source": 7}), "source", "wrong_type"),
    (_line({**GEN, "task": "Movie_Rating"}), "task", "unknown_task"),
    (_line({**EMB, "text": ["p", "a"]}), "text", "kind_mismatch"),
    (_line({**GEN, "query": ["i", "t"]}), "query", "kind_mismatch"),
    (_line({**EMB, "query": ["instr", "   "]}), "query[1]", "empty_text"),
    (_line({**EMB, "neg": [["Item:", ""]]}), "neg[0][1]", "empty_text"),
    (_line({**GEN, "text": ["", "a"]}), "text[0]", "empty_text"),
    (_line({**GEN, "text": ["p", " \n"]}), "text[1]", "empty_text"),
    (_line({**GEN, "text": []}), "text", "empty_text"),
    (_line({**EMB, "pos": []}), "pos", "no_positive"),
    (_line({**GEN, "text": ["p", "a", "p2"]}), "text", "odd_text_length"),
]


@pytest.mark.parametrize("line, field, reason", BAD_ROWS, ids=[f"{r}-{f}" for _, f, r in BAD_ROWS])
def test_each_bad_row_names_file_line_and_field(tmp_path, line, field, reason):
    path = tmp_path / "train" / "rows.jsonl"
    _write(path, [_line(GEN), line])
    with pytest.raises(RecordError) as info:
        records.load_split(tmp_path, "train")
    err = info.value
    assert (err.path, err.line_no, err.field, err.reason) == (str(path), 2, field, reason)
    assert str(err).startswith(f"{path}:2: {field}: {reason}: ")


def test_line_over_max_bytes(tmp_path):
    path = tmp_path / "train" / "rows.jsonl"
    long_row = _line({**GEN, "text": ["x" * 500, "a"]})
    _write(path, [_line(GEN), _line(GEN), long_row, _line(EMB)])
    with pytest.raises(RecordError, match=rf"^{path}:3: line: line_too_long: "):
        records.load_split(tmp_path, "train", max_line_bytes=200)
    rows, report = records.load_split(tmp_path, "train", on_error="skip", max_line_bytes=200)
    assert len(rows) == 3 and report.skipped == {"line_too_long": 1}
    with pytest.raises(RecordError, match="line_too_long"):
        records.parse_row(long_row, max_line_bytes=200)


def test_parse_row_rejects_odd_inputs_with_record_error_only():
    for bad in (b"", "   ", b"\xef\xbb\xbf", "null", "1e999", "[" * 100_000, "\ud800", 5, None):
        with pytest.raises(RecordError):
            records.parse_row(bad)  # type: ignore[arg-type]


def test_parse_row_never_raises_anything_else_on_mutated_rows():
    rng = random.Random(0)
    seeds = [_line(EMB), _line(GEN), _line({**GEN, "text": ["p", "a", "q", "b"]})]
    alphabet = b'{}[]",:\\ \x00\xff\xc3abu0123-eE.tnfl'
    for _ in range(3000):
        line = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op, pos = rng.randrange(3), rng.randrange(len(line) + 1)
            if op == 0 and line:
                del line[min(pos, len(line) - 1)]
            elif op == 1:
                line.insert(pos, rng.choice(alphabet))
            elif line:
                line[min(pos, len(line) - 1)] = rng.choice(alphabet)
        try:
            records.parse_row(bytes(line))
        except RecordError:
            pass


def test_skip_mode_counts_per_reason_and_task(tmp_path):
    path = tmp_path / "train" / "rows.jsonl"
    lines = [
        _line(EMB),
        _line(GEN),
        b"not json",
        _line({**EMB, "pos": []}),
        _line({**EMB, "pos": []}),
        _line({**GEN, "text": ["p"]}),
        b"",
        _line({**GEN, "id": 17, "extra": 1}),
    ]
    _write(path, lines)
    rows, report = records.load_split(tmp_path, "train", on_error="skip")
    assert [r.task for r in rows] == ["Emb_user", "Sentiment_Analysis", "Sentiment_Analysis"]
    assert report.skipped == {"invalid_json": 1, "no_positive": 2, "odd_text_length": 1}
    assert report.skipped_per_task == {"<unknown>": 1, "Emb_user": 2, "Sentiment_Analysis": 1}
    assert report.kept_per_task == {"Emb_user": 1, "Sentiment_Analysis": 2}
    assert (report.lines, report.blank_lines, report.kept, report.total_skipped) == (8, 1, 3, 4)
    assert report.ignored_fields == {"extra": 1}
    assert report.examples["no_positive"][0].startswith(f"{path}:4: pos: no_positive")
    summary = report.summary()
    for word in ("kept 3", "skipped 4", "invalid_json: 1", "no_positive: 2", "odd_text_length: 1", "'extra'"):
        assert word in summary
    assert records.LoadReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_task_filter_counts_what_it_leaves_out(tmp_path):
    _write(tmp_path / "train" / "a.jsonl", [_line(EMB), _line(GEN), _line(GEN)])
    rows, report = records.load_split(tmp_path, "train", tasks=["Emb_user", "U2I"])
    assert [r.task for r in rows] == ["Emb_user"]
    assert report.filtered_per_task == {"Sentiment_Analysis": 2}


def test_on_error_must_be_raise_or_skip(tmp_path):
    _write(tmp_path / "train" / "a.jsonl", [_line(GEN)])
    with pytest.raises(ValueError, match="on_error"):
        records.load_split(tmp_path, "train", on_error="ignore")  # type: ignore[arg-type]


def test_split_layouts(tmp_path):
    folder = tmp_path / "per_task"
    _write(folder / "train" / "Sentiment_Analysis.jsonl", [_line(GEN)])
    _write(folder / "train" / "Emb_user.jsonl", [_line(EMB)])
    assert [p.name for p in records.split_files(folder, "train")] == ["Emb_user.jsonl", "Sentiment_Analysis.jsonl"]

    flat = tmp_path / "flat"
    _write(flat / "train.jsonl", [_line(GEN)])
    _write(flat / "valid.jsonl", [_line(GEN)])
    assert [p.name for p in records.split_files(flat, "train")] == ["train.jsonl"]

    released = tmp_path / "released"
    for name in ("Embedding_dataset_train.jsonl", "Generative_dataset_train.jsonl",
                 "Embedding_dataset_test.jsonl", "Generative_dataset_zero_shot_test_reducued.jsonl"):
        _write(released / name, [_line(GEN)])
    assert [p.name for p in records.split_files(released, "test")] == [
        "Embedding_dataset_test.jsonl", "Generative_dataset_zero_shot_test_reducued.jsonl"]
    rows, report = records.load_split(released, "train")
    assert len(rows) == 2 and len(report.files) == 2

    alias = tmp_path / "alias"
    _write(alias / "eval" / "x.jsonl", [_line(GEN)])
    assert [p.name for p in records.split_files(alias, "valid")] == ["x.jsonl"]
    with pytest.raises(FileNotFoundError, match="test"):
        records.split_files(alias, "test")
