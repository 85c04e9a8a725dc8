"""Your interaction logs as RecFound tasks, in the released JSONL layout.

    python -m recfound_jax.data.from_logs --format recbole --dir DIR --out OUT [--seed 0] [--history 10] ...

DIR holds RecBole atomic files or plain CSV files (`recfound_jax.data.logs`). OUT gets
``{train,valid,test}/{task}.jsonl`` (what ``--config.data.dir=OUT`` trains and evaluates on),
``report.json`` (rows per split and task, rows that could not be built counted by reason, items unseen in
train), ``catalog.jsonl`` (every item with text: `evaluate` ranks U2I over all of it) and the marker
``COMPLETE``. The same logs and flags give byte-identical files.

- Splits: leave-one-out by time, RecBole's default for sequential recommendation. Each user's interactions
  are ordered by timestamp (ties in file order); the last is the test target, the one before it the valid
  target, every earlier one but the first a train target. Users with fewer than ``--min_interactions`` (3)
  are left out.
- U2I: the ``--history`` (10) interactions before a target, newest first, as text -> the target item's text;
  negatives drawn from items the user never interacted with (``--train_negatives`` 3 on train,
  ``--eval_negatives`` 19 on valid and test: the sampled protocol's pool).
- SR: the ``--sr_history`` (3) interactions before a target -> the target among ``--sr_options`` (4) options;
  one negative from the target's ``category`` field where the catalog has one the user never saw, the rest
  from anywhere.
- I2I: an item -> the items that directly follow it in the train interactions of at least
  ``--i2i_min_users`` (2) users (up to ``--i2i_positives`` (2), most users first); query items are split
  80/10/10 between train, valid and test by a seeded permutation.
- UP: only when the user file has a ``profile`` field: a user's train history -> that text. IP: only when the
  item file has a ``description`` field: an item's title -> that text. Users (UP) and items (IP) are split
  80/10/10.
An item's text is its ``title`` field, or ``field: value`` pairs of all its fields when it has no title;
interactions with an item that has no text are left out and counted.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from recfound_jax import cli, jsonio
from recfound_jax.atomic_dir import build_dir_atomically
from recfound_jax.data import logs as logs_lib
from recfound_jax.data.instructions import INSTRUCTIONS, LETTERS, alpaca, embedding_row, generative_row, ordinal
from recfound_jax.tasks import BY_SHORT

SPLITS = ("train", "valid", "test")
MARKER = "COMPLETE"
REPORT = "report.json"
CATALOG = "catalog.jsonl"  # every item with text, one {"item", "text"} a line: U2I's full-catalog ranking


@dataclasses.dataclass(frozen=True)
class Options:
    """Every choice of the conversion (the flags), with its default."""

    seed: int = 0
    source: str = "logs"
    min_interactions: int = 3
    history: int = 10
    sr_history: int = 3
    sr_options: int = 4
    train_negatives: int = 3
    eval_negatives: int = 19
    i2i_min_users: int = 2
    i2i_positives: int = 2


@dataclasses.dataclass
class Catalog:
    """Item texts and categories, and each user's time-ordered item sequence."""

    text: dict[str, str]
    category: dict[str, str]
    sequences: dict[str, list[str]]
    ratings: dict[str, list[float | None]]


def item_text(fields: dict[str, str], title_field: str) -> str:
    """The item's title, or all its fields as ``field: value`` pairs when it has none ('' without fields)."""
    return fields.get(title_field) or "; ".join(f"{k}: {v}" for k, v in sorted(fields.items()))


def build_catalog(logs: logs_lib.Logs, fields: logs_lib.Fields, opts: Options, skipped: Counter) -> Catalog:
    """Texts of the items the logs use, and the sequences of users with enough interactions."""
    text = item_catalog(logs, fields)
    category = {item: f[fields.category] for item, f in logs.items.items() if fields.category in f}
    by_user: dict[str, list[logs_lib.Interaction]] = {}
    for event in logs.interactions:
        if not text.get(event.item):
            skipped["interaction with an item that has no text in the item file"] += 1
            continue
        by_user.setdefault(event.user, []).append(event)
    sequences, ratings = {}, {}
    for user in sorted(by_user):
        events = sorted(by_user[user], key=lambda e: (e.time, e.order))
        if len(events) < opts.min_interactions:
            skipped[f"user with fewer than {opts.min_interactions} interactions"] += 1
            continue
        sequences[user] = [e.item for e in events]
        ratings[user] = [e.rating for e in events]
    return Catalog(text, category, sequences, ratings)


def targets(catalog: Catalog) -> dict[str, list[tuple[str, int]]]:
    """Leave-one-out by time: (user, target position) pairs of each split."""
    out: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for user, items in catalog.sequences.items():
        n = len(items)
        out["train"] += [(user, t) for t in range(1, n - 2)]
        out["valid"].append((user, n - 2))
        out["test"].append((user, n - 1))
    return out


def _negatives(pool: Sequence[str], avoid: set[str], k: int, rng: np.random.Generator) -> list[str]:
    """Up to ``k`` distinct items of ``pool`` outside ``avoid``, in a seeded random order."""
    candidates = [item for item in pool if item not in avoid]
    return [candidates[int(i)] for i in rng.permutation(len(candidates))[:k]]


def _split_of(keys: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """80/10/10 between train, valid and test, by a seeded permutation."""
    order = rng.permutation(len(keys))
    n_train, n_valid = int(0.8 * len(keys)), int(0.1 * len(keys))
    return {keys[int(i)]: ("train" if rank < n_train else "valid" if rank < n_train + n_valid else "test")
            for rank, i in enumerate(order)}


def u2i_rows(catalog: Catalog, slots: dict, opts: Options, rng: np.random.Generator) -> dict[str, list]:
    """U2I rows of every split: recent history (newest first) -> the target."""
    items = sorted(catalog.text)
    out = {}
    for split in SPLITS:
        k = opts.train_negatives if split == "train" else opts.eval_negatives
        rows = []
        for user, t in slots[split]:
            seq = catalog.sequences[user]
            history = seq[max(0, t - opts.history):t][::-1]
            negs = _negatives(items, set(seq), k, rng)
            rows.append(embedding_row("U2I", split, rng, "\n".join(catalog.text[i] for i in history),
                                      [catalog.text[seq[t]]], [catalog.text[i] for i in negs], opts.source))
        out[split] = rows
    return out


def sr_rows(catalog: Catalog, slots: dict, opts: Options, rng: np.random.Generator,
            skipped: Counter, stats: Counter) -> dict[str, list]:
    """SR rows: history -> the target's letter among options with a same-category negative where one exists."""
    items = sorted(catalog.text)
    by_category: dict[str, list[str]] = {}
    for item in items:
        if item in catalog.category:
            by_category.setdefault(catalog.category[item], []).append(item)
    out = {}
    for split in SPLITS:
        rows = []
        for user, t in slots[split]:
            seq = catalog.sequences[user]
            target, seen = seq[t], set(seq)
            hard = _negatives(by_category.get(catalog.category.get(target, ""), []), seen, 1, rng)
            negs = hard + _negatives(items, seen | set(hard), opts.sr_options - 1 - len(hard), rng)
            if len(negs) < opts.sr_options - 1:
                skipped[f"SR: fewer than {opts.sr_options - 1} items the user never saw"] += 1
                continue
            stats["SR rows with a same-category negative"] += bool(hard)
            options = [target, *negs]
            options = [options[int(i)] for i in rng.permutation(len(options))]
            history = seq[max(0, t - opts.sr_history):t]
            input_text = "\n".join(f"{ordinal(i + 1)}: {catalog.text[item]}" for i, item in enumerate(history))
            prompt = alpaca(str(rng.choice(INSTRUCTIONS["SR"])), input_text, [catalog.text[o] for o in options])
            rows.append(generative_row("SR", prompt, LETTERS[options.index(target)]))
        out[split] = rows
    return out


def i2i_rows(catalog: Catalog, slots: dict, opts: Options, rng: np.random.Generator,
             skipped: Counter) -> dict[str, list]:
    """I2I rows: an item -> the items that follow it in the train interactions of enough users."""
    users_of: dict[tuple[str, str], set[str]] = {}
    for user, seq in catalog.sequences.items():
        train_part = seq[:len(seq) - 2]  # valid and test targets are held out
        for a, b in zip(train_part, train_part[1:]):
            if a != b:
                users_of.setdefault((a, b), set()).add(user)
    followers: dict[str, list[tuple[int, str]]] = {}
    for (a, b), users in users_of.items():
        if len(users) >= opts.i2i_min_users:
            followers.setdefault(a, []).append((-len(users), b))
    unfollowed = len(catalog.text) - len(followers)
    skipped[f"I2I: items without a follower shared by {opts.i2i_min_users} users"] = unfollowed
    queries = sorted(followers)
    split_of = _split_of(queries, rng)
    items = sorted(catalog.text)
    out: dict[str, list] = {split: [] for split in SPLITS}
    for item in queries:
        split = split_of[item]
        positives = [b for _, b in sorted(followers[item])[:opts.i2i_positives]]
        k = opts.train_negatives if split == "train" else opts.eval_negatives
        negs = _negatives(items, {item, *positives}, k, rng)
        out[split].append(embedding_row("I2I", split, rng, catalog.text[item],
                                        [catalog.text[p] for p in positives], [catalog.text[n] for n in negs],
                                        opts.source))
    return out


def _history_text(catalog: Catalog, user: str, items: Sequence[str]) -> str:
    ratings = catalog.ratings[user]
    parts = []
    for position, item in enumerate(items):
        rating = ratings[position]
        parts.append(catalog.text[item] + ("" if rating is None else f" ({rating:g} stars)"))
    return "; ".join(parts)


def profile_rows(logs: logs_lib.Logs, catalog: Catalog, fields: logs_lib.Fields, opts: Options,
                 rng: np.random.Generator, skipped: Counter) -> dict[str, dict[str, list]]:
    """UP rows where users have a profile text, IP rows where items have a description: {short: {split: rows}}."""
    out: dict[str, dict[str, list]] = {}
    users = [u for u in catalog.sequences if logs.users.get(u, {}).get(fields.profile)]
    skipped["UP: users without a profile text"] = len(catalog.sequences) - len(users)
    if users:
        split_of, rows = _split_of(users, rng), {split: [] for split in SPLITS}
        for user in users:
            history = catalog.sequences[user][:-2][-opts.history:]
            instruction = str(rng.choice(INSTRUCTIONS["UP"])).format(history=_history_text(catalog, user, history))
            rows[split_of[user]].append(generative_row("UP", alpaca(instruction), logs.users[user][fields.profile]))
        out["UP"] = rows
    described = [i for i in sorted(catalog.text) if logs.items.get(i, {}).get(fields.description)]
    skipped["IP: items without a description"] = len(catalog.text) - len(described)
    if described:
        split_of, rows = _split_of(described, rng), {split: [] for split in SPLITS}
        for item in described:
            instruction = str(rng.choice(INSTRUCTIONS["IP"])).format(title=catalog.text[item], source=opts.source)
            answer = logs.items[item][fields.description]
            rows[split_of[item]].append(generative_row("IP", alpaca(instruction), answer))
        out["IP"] = rows
    return out


def item_catalog(logs: logs_lib.Logs, fields: logs_lib.Fields = logs_lib.DEFAULT_FIELDS) -> dict[str, str]:
    """Item id -> text of every item with text (`item_text`): the catalog U2I is ranked over."""
    texts = {item: item_text(f, fields.title) for item, f in logs.items.items()}
    return {item: text for item, text in texts.items() if text}


def convert(logs: logs_lib.Logs, fields: logs_lib.Fields = logs_lib.DEFAULT_FIELDS,
            opts: Options = Options()) -> tuple[dict[str, dict[str, list]], dict]:
    """({short: {split: rows}}, report) of the logs."""
    rng = np.random.default_rng(opts.seed)
    skipped: Counter = Counter()
    stats: Counter = Counter()
    catalog = build_catalog(logs, fields, opts, skipped)
    if not catalog.sequences:
        raise ValueError(f"no user has {opts.min_interactions} interactions with items that have text: "
                         "nothing to convert")
    slots = targets(catalog)
    tasks = {"U2I": u2i_rows(catalog, slots, opts, rng), "SR": sr_rows(catalog, slots, opts, rng, skipped, stats),
             "I2I": i2i_rows(catalog, slots, opts, rng, skipped)}
    tasks.update(profile_rows(logs, catalog, fields, opts, rng, skipped))
    in_train = {item for user, t in slots["train"] for item in catalog.sequences[user][:t + 1]}
    report = {
        "users": len(catalog.sequences), "items": len(catalog.text), "interactions": len(logs.interactions),
        "rows": {split: {BY_SHORT[s].name: len(rows[split]) for s, rows in tasks.items()} for split in SPLITS},
        "skipped": dict(sorted(skipped.items())), "counts": dict(sorted(stats.items())),
        "targets_unseen_in_train": {split: sum(catalog.sequences[u][t] not in in_train for u, t in slots[split])
                                    for split in ("valid", "test")},
        "options": dataclasses.asdict(opts), "fields": dataclasses.asdict(fields),
    }
    return tasks, report


def write_dataset(out: str | os.PathLike, tasks: dict[str, dict[str, list]], report: dict,
                  catalog: dict[str, str] | None = None) -> Path:
    """Write the converted rows, the report and the item catalog (item id -> text) into ``out`` atomically
    (it must not exist or be empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out")

    def build(tmp: Path) -> None:
        for split in SPLITS:
            (tmp / split).mkdir()
            for short, rows in tasks.items():
                jsonio.write_jsonl(tmp / split / f"{BY_SHORT[short].name}.jsonl", rows[split])
        jsonio.write_json(tmp / REPORT, report)
        items = sorted((catalog or {}).items())
        jsonio.write_jsonl(tmp / CATALOG, ({"item": item, "text": text} for item, text in items))
        (tmp / MARKER).write_text("1\n", encoding="utf-8")

    return build_dir_atomically(out, build, marker=MARKER)


FLAGS = flags.FlagValues()
_FORMAT = flags.DEFINE_enum("format", None, logs_lib.FORMATS, "the log files' format", required=True,
                            flag_values=FLAGS)
_DIR = flags.DEFINE_string("dir", None, "the directory of the log files", required=True, flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "output directory (must not exist or be empty)", required=True,
                           flag_values=FLAGS)
_SOURCE = flags.DEFINE_string("source", None, "the rows' source (sub-dataset) name; default: DIR's name",
                              flag_values=FLAGS)
_OPTION_HELP = {
    "seed": "the negatives', instructions' and 80/10/10 splits' random seed",
    "min_interactions": "users with fewer interactions are left out (leave-one-out needs 3)",
    "history": "U2I and UP: interactions before the target shown as the user's history",
    "sr_history": "SR: interactions before the target shown as the history",
    "sr_options": "SR: options of a row, the target among them",
    "train_negatives": "U2I and I2I: negatives of a train row",
    "eval_negatives": "U2I and I2I: negatives of a valid or test row (the sampled protocol's pool)",
    "i2i_min_users": "I2I: users who must have one item directly after the other",
    "i2i_positives": "I2I: positives of a row at most (the most shared followers)",
}
_OPTION_FLAGS = {name: flags.DEFINE_integer(name, getattr(Options, name), text, flag_values=FLAGS)
                 for name, text in _OPTION_HELP.items()}
_FIELD_FLAGS = {f.name: flags.DEFINE_string(f"{f.name}_field", f.default, f"the {f.name} column",
                                             flag_values=FLAGS)
                for f in dataclasses.fields(logs_lib.Fields)}


def main(argv: Sequence[str] | None = None) -> int:
    """Convert and print where the dataset is and what the report counts."""
    cli.parse(FLAGS, argv, __doc__)

    def run() -> str:
        fields = logs_lib.Fields(**{name: flag.value for name, flag in _FIELD_FLAGS.items()})
        opts = Options(source=_SOURCE.value or Path(_DIR.value).absolute().name,
                       **{name: flag.value for name, flag in _OPTION_FLAGS.items()})
        logs = logs_lib.read_logs(_DIR.value, _FORMAT.value, fields)
        tasks, report = convert(logs, fields, opts)
        out = write_dataset(_OUT.value, tasks, report, item_catalog(logs, fields))
        counts = ", ".join(f"{name} {n}" for name, n in report["rows"]["train"].items())
        return f"wrote {out} ({report['users']} users, {report['items']} items; train rows: {counts}); see {REPORT}"

    return cli.attempt(run, ValueError, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    cli.run(main)
