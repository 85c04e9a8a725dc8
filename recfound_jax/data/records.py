"""Read and validate the released RecFound JSONL rows (docs/method.md, "Data").

Two row kinds, told apart by the task's kind:

- embedding:  ``{"query": [instr, text], "pos": [[instr, text], ...], "neg": [[instr, text], ...],
  "task": str, "source"?: str}``
- generative: ``{"text": [prompt, answer, (prompt, answer)...], "task": str, "source"?: str}``

Every line is validated on its own so that an error names ``file:line: field: reason``. A bad row
raises :class:`RecordError` (``on_error="raise"``, the default) or is skipped and counted per reason
(``on_error="skip"``); the :class:`LoadReport` says what was kept, skipped, filtered out or ignored.

Layouts found under a data directory for a split (first that matches wins):

1. ``DIR/{split}/*.jsonl``: one file per task, as ``data/synthetic.py`` writes;
2. files in ``DIR`` itself: ``{split}.jsonl``, ``{split}*.jsonl``, ``*_{split}.jsonl``,
   ``*_{split}_*.jsonl``. The released code reads every file of a folder (``--train_data
   data/origin_data``) and its evaluation defaults are names such as ``Embedding_dataset_test.jsonl``
   and ``Generative_dataset_zero_shot_test_reducued.jsonl``, which the last two patterns accept.

``valid`` also looks for ``validation``, ``val``, ``eval`` and ``dev``.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from recfound_jax import tasks as tasks_lib

DEFAULT_MAX_LINE_BYTES = 1_000_000
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "valid": ("valid", "validation", "val", "eval", "dev"),
    "test": ("test",),
}
# Optional fields that the released data or code uses; any other field is ignored and counted.
OPTIONAL_FIELDS = frozenset({"source", "id"})
EMBEDDING_FIELDS = ("query", "pos", "neg")
GENERATIVE_FIELDS = ("text",)

# Reasons a row is rejected; the report counts skipped rows by these names.
REASONS = (
    "line_too_long",
    "not_utf8",
    "empty_line",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "unknown_task",
    "kind_mismatch",
    "empty_text",
    "no_positive",
    "odd_text_length",
)

Pair = tuple[str, str]


class RecordError(ValueError):
    """A row that does not follow the schema; ``str(err)`` is ``file:line: field: reason``.

    Rows of a table (a parquet file, a split of a saved DatasetDict) have no lines: their ``unit`` is
    ``"row "`` and ``line_no`` their 0-based index in that table (``file.parquet:row 12: ...``).
    """

    def __init__(self, path: str, line_no: int, field: str, reason: str, detail: str, task: str | None = None,
                 unit: str = ""):
        self.path = path
        self.line_no = line_no
        self.field = field
        self.reason = reason
        self.detail = detail
        self.task = task
        super().__init__(f"{path}:{unit}{line_no}: {field}: {reason}: {detail}")


@dataclasses.dataclass(frozen=True)
class EmbeddingRecord:
    """One embedding row: a query and its positive and hard-negative passages, each (instruction, text)."""

    task: str
    task_id: int
    query: Pair
    pos: tuple[Pair, ...]
    neg: tuple[Pair, ...]
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class GenerativeRecord:
    """One generative row: one or more (prompt, answer) turns."""

    task: str
    task_id: int
    turns: tuple[Pair, ...]
    source: str | None = None


Record = EmbeddingRecord | GenerativeRecord


@dataclasses.dataclass
class LoadReport:
    """What loading a split did: rows kept and skipped (per reason and per task), nothing silent."""

    split: str
    files: list[str] = dataclasses.field(default_factory=list)
    lines: int = 0
    blank_lines: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    kept_per_task: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_per_task: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    filtered_per_task: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ignored_fields: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add_error(self, err: RecordError, max_examples: int = 3) -> None:
        """Count one skipped row and keep its message as an example of its reason."""
        self.skipped[err.reason] += 1
        self.skipped_per_task[err.task or "<unknown>"] += 1
        shown = self.examples.setdefault(err.reason, [])
        if len(shown) < max_examples:
            shown.append(str(err))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """A few human-readable lines: kept/skipped totals, then counts per reason and per task."""
        lines = [
            f"split {self.split!r}: {len(self.files)} file(s), {self.lines} line(s), kept {self.kept}, "
            f"skipped {self.total_skipped}, filtered {sum(self.filtered_per_task.values())}, "
            f"blank {self.blank_lines}"
        ]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason}: {n}  e.g. {self.examples.get(reason, [''])[0]}")
        for name, n in sorted(self.kept_per_task.items()):
            lines.append(f"  kept {name}: {n}")
        for name, n in sorted(self.skipped_per_task.items()):
            lines.append(f"  skipped {name}: {n}")
        for name, n in sorted(self.filtered_per_task.items()):
            lines.append(f"  filtered out {name}: {n}")
        for name, n in sorted(self.ignored_fields.items()):
            lines.append(f"  ignored field {name!r} in {n} row(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (the tokenized cache stores it)."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), collections.Counter) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadReport:
        """Inverse of :meth:`to_dict`."""
        kwargs = dict(d)
        for f in dataclasses.fields(cls):
            if f.default_factory is collections.Counter:  # type: ignore[comparison-overlap]
                kwargs[f.name] = collections.Counter(kwargs.get(f.name, {}))
        return cls(**kwargs)


# ----------------------------------------------------------------------------- one row


class _Checker:
    """Raises RecordError with the row's location; holds the task name once it is known."""

    def __init__(self, path: str, line_no: int, unit: str = ""):
        self.path = path
        self.line_no = line_no
        self.unit = unit
        self.task: str | None = None

    def fail(self, field: str, reason: str, detail: str) -> RecordError:
        return RecordError(self.path, self.line_no, field, reason, detail, self.task, self.unit)

    def string(self, value: Any, field: str, *, nonempty: bool) -> str:
        if not isinstance(value, str):
            raise self.fail(field, "wrong_type", f"expected a string, got {_type_name(value)}")
        if not _utf8_encodable(value):
            raise self.fail(field, "not_utf8", "string holds a lone surrogate (not encodable as UTF-8)")
        if nonempty and not value.strip():
            raise self.fail(field, "empty_text", "text is empty or only whitespace")
        return value

    def pair(self, value: Any, field: str) -> Pair:
        if not isinstance(value, list) or len(value) != 2:
            got = f"a list of {len(value)}" if isinstance(value, list) else _type_name(value)
            raise self.fail(field, "wrong_type", f"expected [instruction, text], got {got}")
        instr = self.string(value[0], f"{field}[0]", nonempty=False)
        text = self.string(value[1], f"{field}[1]", nonempty=True)
        return (instr, text)

    def pairs(self, obj: dict, field: str) -> tuple[Pair, ...]:
        value = obj[field]
        if not isinstance(value, list):
            raise self.fail(field, "wrong_type", f"expected a list of [instruction, text], got {_type_name(value)}")
        return tuple(self.pair(item, f"{field}[{i}]") for i, item in enumerate(value))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return f"number {value}"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_line(line: Any, check: _Checker, max_line_bytes: int) -> str:
    if isinstance(line, (bytes, bytearray, memoryview)):
        raw = bytes(line)
        if len(raw) > max_line_bytes:
            raise check.fail("line", "line_too_long", f"{len(raw)} bytes > max_line_bytes={max_line_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise check.fail("line", "not_utf8", f"invalid UTF-8 byte at offset {e.start}") from None
    elif isinstance(line, str):
        if not _utf8_encodable(line):
            raise check.fail("line", "not_utf8", "line holds a lone surrogate (not encodable as UTF-8)")
        size = len(line.encode("utf-8"))
        if size > max_line_bytes:
            raise check.fail("line", "line_too_long", f"{size} bytes > max_line_bytes={max_line_bytes}")
        text = line
    else:
        raise check.fail("line", "wrong_type", f"expected bytes or str, got {type(line).__name__}")
    return text.lstrip("\ufeff")  # a UTF-8 byte-order mark on the first line


def _parse(line: Any, path: str, line_no: int, max_line_bytes: int,
           table: tasks_lib.TaskTable | None = None) -> tuple[Record, list[str]]:
    """The record of one line and the names of the unknown fields it ignored."""
    check = _Checker(path, line_no)
    text = _decode_line(line, check, max_line_bytes)
    if not text.strip():
        raise check.fail("line", "empty_line", "the line is empty")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise check.fail("line", "invalid_json", str(e)[:200]) from None
    return _parse_object(obj, check, table)


def _parse_object(obj: Any, check: _Checker,
                  table: tasks_lib.TaskTable | None = None) -> tuple[Record, list[str]]:
    """The record of one decoded row and the names of the unknown fields it ignored; its task is one of
    ``table`` (default: the released 13)."""
    if not isinstance(obj, dict):
        raise check.fail("row", "not_object", f"expected a JSON object, got {_type_name(obj)}")
    task = _task_of(obj, check, table or tasks_lib.RELEASED)
    check.task = task.name
    source = _source_of(obj, check)
    if task.is_embedding:
        record: Record = _embedding(obj, task, source, check)
    else:
        record = _generative(obj, task, source, check)
    known = set(EMBEDDING_FIELDS if task.is_embedding else GENERATIVE_FIELDS) | OPTIONAL_FIELDS | {"task"}
    return record, sorted(k for k in obj if k not in known)


def _task_of(obj: dict, check: _Checker, table: tasks_lib.TaskTable) -> tasks_lib.Task:
    """The row's task: a name, short name or id of ``table``."""
    if "task" not in obj:
        raise check.fail("task", "missing_field", "the row has no 'task'")
    name = check.string(obj["task"], "task", nonempty=False)
    try:
        return table.get(name)
    except KeyError:
        valid = ", ".join(t.name for t in table.tasks)
        raise check.fail("task", "unknown_task", f"{name[:80]!r} is not one of: {valid}") from None


def _source_of(obj: dict, check: _Checker) -> str | None:
    if obj.get("source") is None:
        return None
    return check.string(obj["source"], "source", nonempty=False)


def _embedding(obj: dict, task: tasks_lib.Task, source: str | None, check: _Checker) -> EmbeddingRecord:
    for field in GENERATIVE_FIELDS:
        if field in obj:
            raise check.fail(field, "kind_mismatch", f"generative field on embedding task {task.name}")
    for field in EMBEDDING_FIELDS:
        if field not in obj:
            raise check.fail(field, "missing_field", f"embedding task {task.name} needs '{field}'")
    query = check.pair(obj["query"], "query")
    pos = check.pairs(obj, "pos")
    if not pos:
        raise check.fail("pos", "no_positive", "the list of positives is empty")
    neg = check.pairs(obj, "neg")
    return EmbeddingRecord(task.name, task.id, query, pos, neg, source)


def _generative(obj: dict, task: tasks_lib.Task, source: str | None, check: _Checker) -> GenerativeRecord:
    for field in EMBEDDING_FIELDS:
        if field in obj:
            raise check.fail(field, "kind_mismatch", f"embedding field on generative task {task.name}")
    if "text" not in obj:
        raise check.fail("text", "missing_field", f"generative task {task.name} needs 'text'")
    value = obj["text"]
    if not isinstance(value, list):
        raise check.fail("text", "wrong_type", f"expected a list [prompt, answer, ...], got {_type_name(value)}")
    if not value:
        raise check.fail("text", "empty_text", "the list of turns is empty")
    if len(value) % 2:
        raise check.fail("text", "odd_text_length", f"{len(value)} strings: expected (prompt, answer) pairs")
    strings = [check.string(s, f"text[{i}]", nonempty=True) for i, s in enumerate(value)]
    turns = tuple((strings[i], strings[i + 1]) for i in range(0, len(strings), 2))
    return GenerativeRecord(task.name, task.id, turns, source)


def parse_row(
    line: bytes | str,
    *,
    path: str = "<row>",
    line_no: int = 0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    table: tasks_lib.TaskTable | None = None,
) -> Record:
    """Validate one JSONL line and return its record; any problem raises :class:`RecordError` only.
    ``table``: the tasks a row may name (default: the released 13)."""
    record, _ = _parse(line, path, line_no, max_line_bytes, table)
    return record


def parse_table_row(row: dict[str, Any], path: str, index: int,
                    table: tasks_lib.TaskTable | None = None) -> tuple[Record, list[str]]:
    """Validate one row of a table (parquet, Arrow): its record and the unknown fields it ignored.

    A table has a column for every field of any row, so a null stands for a field the row does not
    have. Problems raise :class:`RecordError` located at ``path:row index``. ``table``: the tasks a row
    may name (default: the released 13).
    """
    obj = {key: value for key, value in row.items() if value is not None}
    return _parse_object(obj, _Checker(path, index, unit="row "), table)


# ----------------------------------------------------------------------------- files


def split_files(data_dir: str | Path, split: str, suffix: str = ".jsonl") -> list[Path]:
    """The files of ``split`` under ``data_dir`` that end in ``suffix`` (the module docstring's layouts)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data directory not found")
    names = SPLIT_ALIASES.get(split, (split,))
    for name in names:
        folder = data_dir / name
        if folder.is_dir():
            files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
            if not files:
                raise FileNotFoundError(f"{folder}: folder of split {split!r} holds no *{suffix} file")
            return files
    found: set[Path] = set()
    for name in names:
        for pattern in (f"{name}{suffix}", f"{name}*{suffix}", f"*_{name}{suffix}", f"*_{name}_*{suffix}"):
            found.update(p for p in data_dir.glob(pattern) if p.is_file())
    if not found:
        tried = ", ".join(f"{n}/*{suffix}, {n}*{suffix}, *_{n}{suffix}, *_{n}_*{suffix}" for n in names)
        raise FileNotFoundError(f"{data_dir}: no files for split {split!r} (looked for {tried})")
    return sorted(found)


def _read_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line) for each line; None for a line over ``max_line_bytes`` (never read whole)."""
    with open(path, "rb") as f:
        line_no = 0
        while True:
            line = f.readline(max_line_bytes + 2)
            if not line:
                return
            line_no += 1
            if len(line.rstrip(b"\r\n")) > max_line_bytes:
                while not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                    if not line:
                        break
                yield line_no, None
                continue
            yield line_no, line.rstrip(b"\r\n")


def _task_filter(tasks: Iterable[str | int] | None, table: tasks_lib.TaskTable) -> set[int] | None:
    """The ids of ``tasks`` (names, short names or ids of ``table``); KeyError lists the table's names."""
    if tasks is None:
        return None
    return {table.get(t).id for t in tasks}


class RowCollector:
    """Keeps a split's valid rows in order and counts the rest in a :class:`LoadReport`, whatever the rows
    are read from: ``on_error="raise"`` re-raises a row's :class:`RecordError`, ``"skip"`` counts it.
    ``table``: the run's tasks (default: the released 13), which ``tasks`` and the rows' tasks name."""

    def __init__(self, split: str, files: Sequence[str], *, on_error: Literal["raise", "skip"] = "raise",
                 tasks: Iterable[str | int] | None = None, table: tasks_lib.TaskTable | None = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.table = table or tasks_lib.RELEASED
        self.wanted = _task_filter(tasks, self.table)
        self.report = LoadReport(split=split, files=list(files))
        self.records: list[Record] = []

    def blank(self) -> None:
        """Count a blank line (not an error)."""
        self.report.lines += 1
        self.report.blank_lines += 1

    def add(self, parse: Callable[..., tuple[Record, list[str]]], *args: Any) -> None:
        """Count one row: ``parse(*args)`` gives its record and ignored fields, or raises RecordError."""
        self.report.lines += 1
        try:
            record, ignored = parse(*args)
        except RecordError as err:
            if self.on_error == "raise":
                raise
            self.report.add_error(err)
            return
        if self.wanted is not None and record.task_id not in self.wanted:
            self.report.filtered_per_task[record.task] += 1
            return
        self.report.ignored_fields.update(ignored)
        self.report.kept += 1
        self.report.kept_per_task[record.task] += 1
        self.records.append(record)


def _too_long(path: Path, line_no: int, max_line_bytes: int) -> tuple[Record, list[str]]:
    raise RecordError(str(path), line_no, "line", "line_too_long", f"more than max_line_bytes={max_line_bytes} bytes")


def load_split(
    data_dir: str | Path,
    split: str,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    tasks: Iterable[str | int] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    table: tasks_lib.TaskTable | None = None,
) -> tuple[list[Record], LoadReport]:
    """Read and validate every JSONL row of ``split``; keep only ``tasks`` when given (others are counted).

    ``on_error="raise"`` stops at the first bad row with a :class:`RecordError`; ``"skip"`` skips it
    and counts it in the report. Blank lines are counted, not errors. ``table``: the run's tasks
    (`config.task_table`; default: the released 13); a row naming a task outside it is ``unknown_task``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    files = split_files(data_dir, split)
    rows = RowCollector(split, [str(p) for p in files], on_error=on_error, tasks=tasks, table=table)
    for path in files:
        for line_no, raw in _read_lines(path, max_line_bytes):
            if raw is not None and not raw.strip():
                rows.blank()
            elif raw is None:
                rows.add(_too_long, path, line_no, max_line_bytes)
            else:
                rows.add(_parse, raw, str(path), line_no, max_line_bytes, rows.table)
    return rows.records, rows.report
