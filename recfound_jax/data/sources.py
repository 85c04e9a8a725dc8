"""Where a split's rows come from: the three forms ``data.dir`` accepts, each validated row by row.

1. the released layout: JSONL files (``DIR/{split}/{task name}.jsonl``, or the flat names of
   `records.split_files`), as a local snapshot of the hub dataset holds them; errors name ``file:line``;
2. a ``datasets.DatasetDict`` written by ``save_to_disk`` (``DIR/dataset_dict.json`` beside one folder a
   split); errors name ``DIR[split]:row i``;
3. parquet files of the same rows, found as the JSONL files are (``DIR/{split}/*.parquet``, ...); errors
   name ``file.parquet:row i``.

Rows of a table carry the released fields as columns (``query``, ``pos``, ``neg``, ``text``, ``task``,
``source``); a null is a field the row does not have. Row indices are 0-based, as ``dataset[i]`` counts.
JSONL wins over parquet when a split has both.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from recfound_jax.data import records as records_lib
from recfound_jax.tasks import Task, TaskTable

DATASET_DICT_FILE = "dataset_dict.json"  # what `DatasetDict.save_to_disk` writes beside the splits
READ_BATCH_ROWS = 4096
Form = Literal["jsonl", "dataset_dict", "parquet"]


def split_form(data_dir: str | Path, split: str) -> Form:
    """Which form ``split`` of ``data_dir`` is in; FileNotFoundError names what was looked for."""
    data_dir = Path(data_dir)
    if (data_dir / DATASET_DICT_FILE).is_file():
        return "dataset_dict"
    try:
        records_lib.split_files(data_dir, split)
        return "jsonl"
    except FileNotFoundError as jsonl_error:
        try:
            records_lib.split_files(data_dir, split, suffix=".parquet")
        except FileNotFoundError as parquet_error:
            raise FileNotFoundError(f"{jsonl_error}; {parquet_error}; and no {DATASET_DICT_FILE}") from None
        return "parquet"


def _dataset_dict_split(data_dir: Path, split: str) -> tuple[str, datasets.Dataset]:
    splits = datasets.load_from_disk(str(data_dir))
    if not isinstance(splits, datasets.DatasetDict):
        raise ValueError(f"{data_dir}: save_to_disk output of a {type(splits).__name__}, not of a DatasetDict")
    for name in records_lib.SPLIT_ALIASES.get(split, (split,)):
        if name in splits:
            return name, splits[name]
    raise FileNotFoundError(f"{data_dir}: the DatasetDict has no split {split!r} (it has {sorted(splits)})")


def _table_rows(batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield from batch.to_pylist()


def load_split(
    data_dir: str | Path,
    split: str,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    tasks: Iterable[str | int] | None = None,
    max_line_bytes: int = records_lib.DEFAULT_MAX_LINE_BYTES,
    table: TaskTable | None = None,
) -> tuple[list[records_lib.Record], records_lib.LoadReport]:
    """Read and validate every row of ``split`` in whichever form ``data_dir`` holds it (`split_form`).

    The same contract as `records.load_split` (which reads the JSONL form): ``on_error`` raises or skips
    and counts a bad row, ``tasks`` keeps only those tasks. ``max_line_bytes`` applies to JSONL lines.
    ``table``: the run's tasks (`config.task_table`; default: the released 13), the tasks rows may name.
    """
    data_dir = Path(data_dir)
    form = split_form(data_dir, split)
    if form == "jsonl":
        return records_lib.load_split(data_dir, split, on_error=on_error, tasks=tasks, max_line_bytes=max_line_bytes,
                                      table=table)
    if form == "dataset_dict":
        name, dataset = _dataset_dict_split(data_dir, split)
        where = f"{data_dir}[{name}]"
        tables = [(where, _table_rows(dataset.with_format("arrow").iter(batch_size=READ_BATCH_ROWS)))]
    else:
        files = records_lib.split_files(data_dir, split, suffix=".parquet")
        tables = [(str(p), _table_rows(pq.ParquetFile(p).iter_batches(batch_size=READ_BATCH_ROWS))) for p in files]
    rows = records_lib.RowCollector(split, [where for where, _ in tables], on_error=on_error, tasks=tasks,
                                    table=table)
    for where, source in tables:
        for index, row in enumerate(source):
            rows.add(records_lib.parse_table_row, row, where, index, rows.table)
    return rows.records, rows.report


SYNTHETIC = "synthetic"  # the data.dir of the generated synthetic world (recfound_jax.demo.synthetic)


def _spec_position(table: TaskTable, task: Task) -> int:
    return table.added.index(task)


def check_synthetic_tasks(data_dir: str | Path, table: TaskTable, trained: Sequence[Task]) -> None:
    """Raise ValueError when ``data_dir`` is the synthetic world and the run trains a task of ``table`` beyond
    the released 13: the synthetic world writes rows of the released tasks only, so an added task
    (config.added_tasks) needs a data.dir that holds its rows. ``trained``: the run's tasks (`config.run_tasks`)."""
    if str(data_dir) != SYNTHETIC:
        return
    added = sorted((t for t in trained if t in table.added), key=lambda t: t.id)
    if added:
        names = ", ".join(f"config.added_tasks[{_spec_position(table, t)}] ({t.name})" for t in added)
        raise ValueError(f"data.dir='synthetic' holds rows of the 13 released tasks only, but the run trains {names}: "
                         "set data.dir to a dataset with rows of those tasks, or leave them out of data.tasks")


def check_added_task_rows(table: TaskTable, trained: Sequence[Task], report: records_lib.LoadReport,
                          data_dir: str | Path) -> None:
    """Raise ValueError naming each added task (config.added_tasks) of ``trained`` that has no rows in the
    split that ``report`` describes (`load_split`'s report of ``data_dir``)."""
    missing = sorted((t for t in trained if t in table.added and not report.kept_per_task.get(t.name)),
                     key=lambda t: t.id)
    if missing:
        names = ", ".join(f"config.added_tasks[{_spec_position(table, t)}] ({t.name})" for t in missing)
        raise ValueError(f"{data_dir}: split {report.split!r} has no rows of {names}; rows name their task in "
                         "their 'task' field")
