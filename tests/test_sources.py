"""The three forms of data.dir, read and validated row by row: recfound_jax/data/sources.py."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfound_jax.data import records, sources
from recfound_jax.data.records import RecordError

EMB = {"query": ["Represent the user:", "bought shoes"], "pos": [["Item:", "running shoe"]],
       "neg": [["Item:", "garden hose"]], "task": "Emb_user"}
GEN = {"text": ["Rate the review: great!", "E"], "task": "Sentiment_Analysis"}
FILES = {  # file name -> rows, per split, as the released layout holds them (one file a task)
    "train": {"Emb_user.jsonl": [EMB, {**EMB, "neg": [], "source": "Beauty"}],
              "Sentiment_Analysis.jsonl": [GEN, {**GEN, "text": ["p1", "a1", "p2", "a2"]}]},
    "valid": {"Sentiment_Analysis.jsonl": [GEN]},
}


def _with_every_column(rows: list[dict]) -> list[dict]:
    """Rows with every field of any of them, null where absent (from_pylist and from_list take the first row's)."""
    columns = sorted({key for row in rows for key in row})
    return [{key: row.get(key) for key in columns} for row in rows]


def write_jsonl(root: Path, files: dict = FILES) -> Path:
    """``root/{split}/{task}.jsonl``."""
    for split, by_file in files.items():
        (root / split).mkdir(parents=True)
        for name, rows in by_file.items():
            (root / split / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_parquet(root: Path, files: dict = FILES) -> Path:
    """``root/{split}/{task}.parquet``: the same rows, one table a file."""
    for split, by_file in files.items():
        (root / split).mkdir(parents=True)
        for name, rows in by_file.items():
            table = pa.Table.from_pylist(_with_every_column(rows))
            pq.write_table(table, root / split / name.replace(".jsonl", ".parquet"))
    return root


def write_dataset_dict(root: Path, files: dict = FILES) -> Path:
    """A DatasetDict of the same rows (the files of a split in name order) written by save_to_disk; ``valid``
    is named ``validation``, as on the hub."""
    splits = {}
    for split, by_file in files.items():
        rows = [row for name in sorted(by_file) for row in by_file[name]]
        splits["validation" if split == "valid" else split] = datasets.Dataset.from_list(_with_every_column(rows))
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "dataset_dict": write_dataset_dict}


@pytest.mark.parametrize("form", list(WRITERS))
def test_every_form_gives_the_records_of_the_jsonl_layout(tmp_path, form):
    data = WRITERS[form](tmp_path / form)
    assert sources.split_form(data, "train") == form
    for split in ("train", "valid"):
        expected, expected_report = records.load_split(write_jsonl(tmp_path / f"ref-{split}"), split)
        rows, report = sources.load_split(data, split)
        assert rows == expected
        assert (report.kept, dict(report.kept_per_task)) == (expected_report.kept, dict(expected_report.kept_per_task))


def test_tasks_filter_and_skip_mode_work_on_tables(tmp_path):
    bad = {"train": {"a.jsonl": [GEN, {**GEN, "text": ["p", " "]}, EMB]}}
    data = write_parquet(tmp_path / "p", bad)
    rows, report = sources.load_split(data, "train", on_error="skip", tasks=["Sentiment_Analysis"])
    assert [r.task for r in rows] == ["Sentiment_Analysis"]
    assert (report.kept, dict(report.skipped), dict(report.filtered_per_task)) == (1, {"empty_text": 1},
                                                                                   {"Emb_user": 1})
    assert report.examples["empty_text"][0].startswith(f"{data}/train/a.parquet:row 1: text[1]: empty_text: ")


def _bad_files() -> dict:
    return {"train": {"Emb_user.jsonl": [EMB, EMB], "Sentiment_Analysis.jsonl": [GEN, {**GEN, "task": "Movie_Rating"}]}}


@pytest.mark.parametrize("form, location", [
    ("jsonl", "{data}/train/Sentiment_Analysis.jsonl:2"),
    ("parquet", "{data}/train/Sentiment_Analysis.parquet:row 1"),
    ("dataset_dict", "{data}[train]:row 3"),  # the Emb_user rows come first
])
def test_a_bad_row_in_each_form_is_refused_with_its_location(tmp_path, form, location):
    data = WRITERS[form](tmp_path / form, _bad_files())
    with pytest.raises(RecordError) as info:
        sources.load_split(data, "train")
    assert str(info.value).startswith(location.format(data=data) + ": task: unknown_task: 'Movie_Rating' is not one of")


def test_a_missing_split_names_every_form_looked_for(tmp_path):
    write_jsonl(tmp_path / "d", {"train": FILES["train"]})
    with pytest.raises(FileNotFoundError, match=r"no files for split 'test'.*\*\.parquet.*dataset_dict\.json"):
        sources.load_split(tmp_path / "d", "test")
    write_dataset_dict(tmp_path / "dd", {"train": FILES["train"]})
    with pytest.raises(FileNotFoundError, match=r"the DatasetDict has no split 'test' \(it has \['train'\]\)"):
        sources.load_split(tmp_path / "dd", "test")
