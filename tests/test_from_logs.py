"""Interaction logs to RecFound tasks: hand-built logs with known splits and negatives, both file formats,
bad rows refused with their place, and the synthetic world's logs round-tripped through RecBole's files."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from recfound_jax.data import from_logs, logs
from recfound_jax.data.formatting import input_text, options_of
from recfound_jax.data.records import load_split
from recfound_jax.demo import recbole_export
from recfound_jax.demo import synthetic_world as sw
from recfound_jax.evaluate import runner
from recfound_jax.inference.recfound import RecFound
from recfound_jax.tasks import BY_SHORT
from recfound_jax.train.trainer import train
from tests.train_fixtures import tiny_config, write_tiny_base

# user -> (item, timestamp) in file order (not time order); u3 has two interactions only
EVENTS = {
    "u1": [("i3", 30), ("i1", 10), ("i2", 20), ("i4", 40), ("i5", 50)],
    "u2": [("i1", 5), ("i2", 6), ("i6", 7), ("i7", 8)],
    "u3": [("i1", 1), ("i8", 2)],
    "u4": [("i1", 3), ("i2", 4), ("i9", 5), ("i5", 6)],
}
ITEMS = {  # item -> (title, category); i10 is never bought, i11 has no title
    "i1": ("red kettle", "kitchen"), "i2": ("blue mug", "kitchen"), "i3": ("steel pan", "kitchen"),
    "i4": ("garden hose", "garden"), "i5": ("hose nozzle", "garden"), "i6": ("desk lamp", "office"),
    "i7": ("lamp bulb", "office"), "i8": ("dog leash", "pets"), "i9": ("cat bowl", "pets"),
    "i10": ("wooden spatula", "kitchen"),
}


def _write_csv(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,timestamp,rating"] + [f"{u},{i},{t},4" for u, events in EVENTS.items()
                                                     for i, t in events]
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = ["item_id,title,category"] + [f"{i},{title},{cat}" for i, (title, cat) in ITEMS.items()]
    (directory / "items.csv").write_text("\n".join(items) + "\n")
    return directory


def _write_recbole(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float\trating:float"]
    lines += [f"{u}\t{i}\t{t}\t4" for u, events in EVENTS.items() for i, t in events]
    (directory / "shop.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tcategory:token"] + [f"{i}\t{t}\t{c}" for i, (t, c) in ITEMS.items()]
    (directory / "shop.item").write_text("\n".join(items) + "\n")
    return directory


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    directory = _write_csv(tmp_path_factory.mktemp("csv"))
    tasks, report = from_logs.convert(logs.read_logs(directory, "csv"), opts=from_logs.Options(seed=3))
    return tasks, report


def _title(text: str) -> str:
    return {title: item for item, (title, _) in ITEMS.items()}[text]


def _sequences() -> dict[str, list[str]]:
    """Each user's items in time order (users with 3 or more only)."""
    return {u: [i for i, _ in sorted(events, key=lambda e: e[1])] for u, events in EVENTS.items() if len(events) >= 3}


def test_leave_one_out_by_time(converted):
    tasks, report = converted
    u2i = tasks["U2I"]
    targets = {split: sorted((r["query"][1], _title(r["pos"][0][1])) for r in u2i[split]) for split in u2i}
    # u1 in time order: i1 i2 i3 i4 i5 -> test i5, valid i4, train targets i2, i3; u3 is too short
    assert ("steel pan\nblue mug\nred kettle", "i4") in targets["valid"]  # history newest first
    assert sorted(t for _, t in targets["test"]) == ["i5", "i5", "i7"]
    assert sorted(t for _, t in targets["valid"]) == ["i4", "i6", "i9"]
    assert sorted(t for _, t in targets["train"]) == ["i2", "i2", "i2", "i3"]
    assert report["skipped"]["user with fewer than 3 interactions"] == 1
    assert report["users"] == 3
    # the train interactions (all but each user's last two) hold i1, i2 and i3 only
    assert report["targets_unseen_in_train"] == {"valid": 3, "test": 3}


def test_negatives_are_items_the_user_never_saw(converted):
    tasks, _ = converted
    for split, rows in tasks["U2I"].items():
        for row in rows:
            history = {_title(t) for t in row["query"][1].split("\n")}
            negatives = {_title(n[1]) for n in row["neg"]}
            assert not negatives & (history | {_title(row["pos"][0][1])})
            # train: 3; valid and test: every item the user never saw (the pool is smaller than 19)
            seen = len(history) + (1 if split == "test" else 2)
            assert len(negatives) == (3 if split == "train" else len(ITEMS) - seen)
            assert (split == "train") == ("source" not in row)


def test_sr_has_a_same_category_negative_where_one_exists(converted):
    tasks, report = converted
    users_of: dict[tuple, list[list[str]]] = {}  # (history, target) -> the sequences it may come from
    for seq in _sequences().values():
        for t in range(1, len(seq)):
            users_of.setdefault((tuple(seq[max(0, t - 3):t]), seq[t]), []).append(seq)
    rows = [row for split_rows in tasks["SR"].values() for row in split_rows]
    assert len(rows) == 10 and report["counts"]["SR rows with a same-category negative"] > 0

    def follows_the_rules(options: list[str], target: str, seq: list[str]) -> bool:
        same = [o for o in options if o != target and ITEMS[o][1] == ITEMS[target][1]]
        unseen_same = [i for i in ITEMS if ITEMS[i][1] == ITEMS[target][1] and i not in seq]
        return not (set(options) - {target}) & set(seq) and bool(same) == bool(unseen_same)

    for row in rows:
        prompt, letter = row["text"]
        options = [_title(o.split(": ", 1)[1]) for o in options_of(prompt)]
        target = options["ABCD".index(letter)]
        history = tuple(_title(line.split(": ", 1)[1]) for line in input_text(prompt).split("\n"))
        assert len(set(options)) == 4
        assert any(follows_the_rules(options, target, seq) for seq in users_of[(history, target)])


def test_i2i_pairs_need_enough_users(converted):
    tasks, _ = converted
    rows = [row for split_rows in tasks["I2I"].values() for row in split_rows]
    # only i1 -> i2 directly follows in the train interactions of 2 users (u2, u4; u1 too)
    assert [(_title(r["query"][1]), [_title(p[1]) for p in r["pos"]]) for r in rows] == [("i1", ["i2"])]


def test_csv_and_recbole_give_the_same_rows(tmp_path, converted):
    tasks, _ = converted
    again, _ = from_logs.convert(logs.read_logs(_write_recbole(tmp_path / "rb"), "recbole"),
                                 opts=from_logs.Options(seed=3))
    assert again == tasks
    other, _ = from_logs.convert(logs.read_logs(_write_recbole(tmp_path / "rb"), "recbole"),
                                 opts=from_logs.Options(seed=4))
    assert other["U2I"]["test"] != tasks["U2I"]["test"]  # another seed, other negatives


@pytest.mark.parametrize("edit,message", [
    (lambda lines: lines[:2] + ["u1,i1"] + lines[2:], r"interactions\.csv:3: 2 columns, the header has 4"),
    (lambda lines: lines[:3] + ["u1,i1,noon,4"] + lines[3:], r"interactions\.csv:4: timestamp: not a number: 'noon'"),
    (lambda lines: ["user,item_id,timestamp,rating"] + lines[1:], r"interactions\.csv:1: user_id: not in the header"),
    (lambda lines: lines + [",i1,3,4"], r"interactions\.csv:\d+: user_id: empty"),
])
def test_a_bad_row_is_refused_with_its_place(tmp_path, edit, message):
    directory = _write_csv(tmp_path / "csv")
    path = directory / "interactions.csv"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=message):
        logs.read_logs(directory, "csv")


def test_a_bad_recbole_header_is_refused(tmp_path):
    directory = _write_recbole(tmp_path / "rb")
    path = directory / "shop.inter"
    path.write_text(path.read_text().replace("timestamp:float", "timestamp:date", 1))
    with pytest.raises(ValueError, match=r"shop\.inter:1: timestamp:date: a RecBole column is field:type"):
        logs.read_logs(directory, "recbole")


def test_cli_writes_the_released_layout_and_refuses_a_used_folder(tmp_path, capsys):
    directory = _write_recbole(tmp_path / "rb")
    out = tmp_path / "out"
    assert from_logs.main(["--format", "recbole", "--dir", str(directory), "--out", str(out), "--sr_options", "3"]) == 0
    assert "3 users" in capsys.readouterr().out
    report = json.loads((out / from_logs.REPORT).read_text())
    assert report["options"]["sr_options"] == 3 and report["options"]["source"] == "rb"
    assert sorted(p.name for p in (out / "valid").iterdir()) == sorted(
        f"{BY_SHORT[s].name}.jsonl" for s in ("U2I", "SR", "I2I"))
    records, _ = load_split(out, "valid")
    assert len(records) == report["rows"]["valid"]["Emb_user"] + report["rows"]["valid"]["Sequential_Recommendation"]
    catalog = [json.loads(line) for line in (out / from_logs.CATALOG).read_text().splitlines()]
    assert sorted(r["item"] for r in catalog) == sorted(ITEMS) and {r["text"] for r in catalog} == {
        title for title, _ in ITEMS.values()}
    assert from_logs.main(["--format", "recbole", "--dir", str(directory), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_synthetic_world_round_trips_through_recbole_files(tmp_path):
    world = sw.build_world(1, 0)
    directory = recbole_export.write_recbole(world, tmp_path / "rb")  # rows newest first
    tasks, report = from_logs.convert(logs.read_logs(directory, "recbole"))
    assert report["users"] == len(world.users) and report["interactions"] == sum(len(u.purchases) for u in world.users)
    expected = Counter(("\n".join(it.title for it in u.purchases[:-1][-10:][::-1]), u.purchases[-1].title)
                       for u in world.users)
    assert Counter((r["query"][1], r["pos"][0][1]) for r in tasks["U2I"]["test"]) == expected
    assert set(tasks) == {"U2I", "SR", "I2I", "UP", "IP"}
    out = from_logs.write_dataset(tmp_path / "out", tasks, report)
    records, _ = load_split(out, "train")
    assert (out / from_logs.MARKER).is_file() and len(records) == sum(report["rows"]["train"].values())


def test_a_run_trains_and_evaluates_on_converted_logs(tmp_path, monkeypatch):
    """The synthetic world's logs as RecBole files -> from_logs -> 3 tiny training steps on the 5 tasks the logs
    give (data.tasks; S2Sched over them) -> every one of them scored on test, and no other task."""
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path / "cache"))
    directory = recbole_export.write_recbole(sw.build_world(1, 0), tmp_path / "rb")
    read = logs.read_logs(directory, "recbole")
    out = from_logs.write_dataset(tmp_path / "data", *from_logs.convert(read), from_logs.item_catalog(read))
    shorts = ("U2I", "I2I", "SR", "UP", "IP")
    c = tiny_config(write_tiny_base(tmp_path / "base"), data__dir=str(out), data__tasks=",".join(shorts),
                    train__steps=3, s2sched__warmup_ratio=0.0, s2sched__update_every=1)
    summary = train(c, tmp_path / "run", progress=False)
    assert summary["completed"] and set(summary["probe_loss_final"]) == {BY_SHORT[s].name for s in shorts}
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    counts = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("count/")}
    assert set(counts) == {BY_SHORT[s].name for s in shorts}
    assert sum(counts[BY_SHORT[s].name] for s in ("U2I", "I2I")) == c.train.embedding_batch
    rf = RecFound.from_run(tmp_path / "run")
    metrics = runner.evaluate(rf, str(out), split="test", limit_per_task=4, progress=False)
    assert set(metrics["tasks"]) == {BY_SHORT[s].name for s in shorts}
    assert all(metrics["tasks"][BY_SHORT[s].name]["score"] is not None for s in ("U2I", "SR", "UP", "IP"))
    u2i = metrics["tasks"]["Emb_user"]  # ranked over every item of the shop, the user's history masked
    assert u2i["catalog_size"] == 200 and u2i["catalog"]["history_masked"] and u2i["catalog"]["n"] == 4
