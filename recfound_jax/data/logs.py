"""Interaction logs read from RecBole atomic files or plain CSV files, checked row by row.

RecBole (``--format recbole``): DIR holds one ``NAME.inter`` and optionally ``NAME.item`` and ``NAME.user``,
tab-separated, whose first line names each column ``field:type`` (type one of token, token_seq, float,
float_seq). CSV (``--format csv``): DIR holds ``interactions.csv`` and optionally ``items.csv`` and
``users.csv``, comma-separated with a header row of plain field names. Either way the interaction file has
the user, item and timestamp fields (and optionally a rating); the item and user files have an id field and
text fields. A bad row is refused as ``file:line: field: reason``.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

FORMATS = ("recbole", "csv")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclasses.dataclass(frozen=True)
class Fields:
    """Which columns mean what: ids, time, rating, and the text fields the tasks are written from."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str = "rating"
    title: str = "title"
    category: str = "category"
    description: str = "description"
    profile: str = "profile"


DEFAULT_FIELDS = Fields()


@dataclasses.dataclass(frozen=True)
class Interaction:
    """One logged interaction; ``order`` is its position in the file (it breaks timestamp ties)."""

    user: str
    item: str
    time: float
    rating: float | None
    order: int


@dataclasses.dataclass(frozen=True)
class Logs:
    """Interactions, and the text fields of items and users (id -> {field: text})."""

    interactions: tuple[Interaction, ...]
    items: dict[str, dict[str, str]]
    users: dict[str, dict[str, str]]


def _table(path: Path, fmt: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(field names, [(line number, values)]) of one file; RecBole's ``:type`` suffixes checked and dropped."""
    delimiter = "\t" if fmt == "recbole" else ","
    with open(path, encoding="utf-8", newline="") as f:
        quoting = csv.QUOTE_NONE if fmt == "recbole" else csv.QUOTE_MINIMAL  # RecBole's files are plain TSV
        lines = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    if not lines:
        raise ValueError(f"{path}:1: the file is empty; it needs a header row")
    header = lines[0]
    if fmt == "recbole":
        names = []
        for column in header:
            name, _, kind = column.partition(":")
            if kind not in RECBOLE_TYPES:
                raise ValueError(f"{path}:1: {column}: a RecBole column is field:type, type one of {RECBOLE_TYPES}")
            names.append(name)
        header = names
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if not values:
            continue
        if len(values) != len(header):
            raise ValueError(f"{path}:{number}: {len(values)} columns, the header has {len(header)}")
        rows.append((number, values))
    return header, rows


def _column(path: Path, header: list[str], field: str, *, required: bool = True) -> int | None:
    if field in header:
        return header.index(field)
    if required:
        raise ValueError(f"{path}:1: {field}: not in the header (fields: {', '.join(header)})")
    return None


def _number(path: Path, line: int, field: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: {field}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{path}:{line}: {field}: not finite: {value!r}")
    return number


def read_interactions(path: Path, fmt: str, fields: Fields) -> tuple[Interaction, ...]:
    """The interactions of ``path``: user, item and time fields required, rating optional."""
    header, rows = _table(path, fmt)
    user, item, time = (_column(path, header, f) for f in (fields.user, fields.item, fields.time))
    rating = _column(path, header, fields.rating, required=False)
    out = []
    for order, (line, values) in enumerate(rows):
        for index, name in ((user, fields.user), (item, fields.item)):
            if not values[index].strip():
                raise ValueError(f"{path}:{line}: {name}: empty")
        out.append(Interaction(values[user].strip(), values[item].strip(),
                               _number(path, line, fields.time, values[time]),
                               None if rating is None else _number(path, line, fields.rating, values[rating]), order))
    return tuple(out)


def read_entities(path: Path | None, fmt: str, id_field: str) -> dict[str, dict[str, str]]:
    """id -> {field: text} of an item or user file (every column but the id; empty values left out)."""
    if path is None:
        return {}
    header, rows = _table(path, fmt)
    key = _column(path, header, id_field)
    out: dict[str, dict[str, str]] = {}
    for line, values in rows:
        entity = values[key].strip()
        if entity in out:
            raise ValueError(f"{path}:{line}: {id_field}: {entity!r} already given")
        out[entity] = {name: value.strip() for i, (name, value) in enumerate(zip(header, values))
                       if i != key and value.strip()}
    return out


def _files(directory: Path, fmt: str) -> tuple[Path, Path | None, Path | None]:
    """(interactions, items or None, users or None) of a log directory."""
    if fmt == "csv":
        inter = directory / "interactions.csv"
        if not inter.is_file():
            raise FileNotFoundError(f"{directory}: no interactions.csv (the csv format's interaction file)")
        optional = [directory / "items.csv", directory / "users.csv"]
    else:
        found = sorted(directory.glob("*.inter"))
        if len(found) != 1:
            raise FileNotFoundError(f"{directory}: {len(found)} .inter files; RecBole's layout has exactly one")
        inter = found[0]
        optional = [inter.with_suffix(".item"), inter.with_suffix(".user")]
    items, users = (path if path.is_file() else None for path in optional)
    return inter, items, users


def read_logs(directory: str | Path, fmt: str, fields: Fields = DEFAULT_FIELDS) -> Logs:
    """The logs of ``directory`` in ``fmt`` (`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    inter, items, users = _files(Path(directory), fmt)
    return Logs(read_interactions(inter, fmt, fields), read_entities(items, fmt, fields.item),
                read_entities(users, fmt, fields.user))
