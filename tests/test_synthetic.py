"""The synthetic dataset: layout, schema, determinism, answers that follow from inputs, chance levels."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recfound_jax.data import instructions, records
from recfound_jax.demo import synthetic as syn
from recfound_jax.demo import synthetic_world as sw
from recfound_jax.evaluate import chance
from recfound_jax.tasks import BY_SHORT, TASKS, get_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    syn.ensure_dataset(out, scale=1, seed=0)
    return out


@pytest.fixture(scope="module")
def world() -> sw.World:
    return sw.build_world(1, 0)


def _rows(data_dir: Path, split: str, short: str) -> list[dict]:
    path = data_dir / split / f"{BY_SHORT[short].name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _input(prompt: str) -> str:
    return prompt.split("### Input:\n", 1)[1].split("\n\n### ", 1)[0]


def _options(prompt: str) -> list[str]:
    block = prompt.split("### Options:\n", 1)[1].split("\n\n### ", 1)[0]
    return [line.split(": ", 1)[1] for line in block.split("\n")]


def _by_title(world: sw.World) -> dict[str, sw.Item]:
    return {it.title: it for it in world.items}


# ---- layout, schema, determinism ---------------------------------------------------------------------

def _check_pair(pair) -> None:
    assert isinstance(pair, list) and len(pair) == 2
    assert all(isinstance(s, str) for s in pair) and pair[1].strip()


def _check_row(row: dict, task_name: str, split: str) -> None:
    task = get_task(task_name)
    assert row["task"] == task_name
    if task.is_embedding:
        expected = {"query", "pos", "neg", "task"} | ({"source"} if split != "train" else set())
        assert set(row) == expected
        assert row["pos"]
        for pair in [row["query"]] + row["pos"] + row["neg"]:
            _check_pair(pair)
        if split != "train":
            assert row["source"] in sw.SOURCES
    else:
        assert set(row) == {"text", "task"}
        prompt, answer = row["text"]
        assert prompt.startswith(instructions.SYSTEM_PROMPT + "\n\n### Instruction:\n")
        assert prompt.endswith("\n\n### Response:") and answer.strip()


def test_layout_schema_and_records_loader(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert (data_dir / syn.MARKER).is_file()
    for split in syn.SPLITS:
        for task in TASKS:
            rows = _rows(data_dir, split, task.short)
            assert len(rows) == manifest["rows"][split][task.name] == syn.ROWS_PER_SPLIT[split]
            for row in rows:
                _check_row(row, task.name, split)
        loaded, report = records.load_split(data_dir, split)
        assert report.kept == len(loaded) == 13 * syn.ROWS_PER_SPLIT[split] and report.total_skipped == 0
        assert not report.ignored_fields


def test_same_seed_gives_identical_files(data_dir, tmp_path):
    syn.generate(tmp_path / "again", scale=1, seed=0)
    files = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (data_dir / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    syn.generate(tmp_path / "other", scale=1, seed=1)
    assert (tmp_path / "other/train/Emb_user.jsonl").read_bytes() != (data_dir / "train/Emb_user.jsonl").read_bytes()


def test_ensure_dataset_reuses_marker_and_refuses_mismatch(data_dir, tmp_path):
    before = (data_dir / "manifest.json").stat().st_mtime_ns
    assert syn.ensure_dataset(data_dir, scale=1, seed=0)["seed"] == 0
    assert (data_dir / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="seed=0"):
        syn.ensure_dataset(data_dir, scale=1, seed=5)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "junk.txt").write_text("x")
    with pytest.raises(FileExistsError):
        syn.ensure_dataset(tmp_path / "partial")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_a_dataset_of_another_generator_version_is_replaced(data_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(data_dir, old)
    (old / syn.MARKER).write_text("0\n")  # as an earlier generator wrote it
    (old / "train" / "Product_Matching.jsonl").write_text("stale\n")
    syn.ensure_dataset(old, scale=1, seed=0)
    assert (old / syn.MARKER).read_text().strip() == syn.GENERATOR_VERSION
    assert (old / "train" / "Product_Matching.jsonl").read_bytes() == (
        data_dir / "train" / "Product_Matching.jsonl").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # nothing left aside


def test_token_lengths_stay_small(data_dir):
    for name, stats in syn.token_lengths(data_dir, "train").items():
        if name in {t.name for t in TASKS if t.is_embedding}:
            assert stats["query_max"] <= 48 and stats["passage_max"] <= 48, (name, stats)
        else:
            assert stats["prompt+answer_max"] <= 160, (name, stats)


# ---- answers follow from inputs -------------------------------------------------------------------

def test_sa_letter_matches_review_words(data_dir):
    for split in syn.SPLITS:
        for row in _rows(data_dir, split, "SA"):
            prompt, letter = row["text"]
            review = _input(prompt)
            rating = 5 - "ABCDE".index(letter)
            assert _options(prompt) == list(syn.SA_OPTIONS)
            opener_hits = [r for r, ops in sw.OPENERS.items() if any(review.startswith(o.split("{")[0]) and
                                                                      o.split("}")[-1] in review for o in ops)]
            closer_hits = [r for r, cls in sw.CLOSERS.items() if review.endswith(tuple(cls))]
            assert rating in opener_hits and closer_hits == [rating], (review, letter)


def test_sr_answer_is_the_next_purchase(data_dir, world):
    titles = _by_title(world)
    for split in syn.SPLITS:
        users = world.user_split[split]
        for row in _rows(data_dir, split, "SR"):
            prompt, letter = row["text"]
            history = [titles[line.split(": ", 1)[1]] for line in _input(prompt).split("\n")]
            options = [titles[t] for t in _options(prompt)]
            target = options["ABCD".index(letter)]
            runs = [tuple(u.purchases[i:i + len(history) + 1]) for u in users
                    for i in range(len(u.purchases) - len(history))]
            assert tuple(history) + (target,) in runs
            assert len(set(options)) == syn.SR_OPTIONS


def test_u2i_positive_is_the_next_purchase(data_dir, world):
    titles = _by_title(world)
    for split in syn.SPLITS:
        users = world.user_split[split]
        for row in _rows(data_dir, split, "U2I"):
            history = [titles[t] for t in row["query"][1].split("\n")][::-1]
            target = titles[row["pos"][0][1]]
            runs = [tuple(u.purchases[i:i + len(history) + 1]) for u in users
                    for i in range(len(u.purchases) - len(history))]
            assert tuple(history) + (target,) in runs
            negs = [titles[n[1]] for n in row["neg"]]
            assert all(n.source == target.source and n != target for n in negs)
            assert len(negs) == len(set(negs)) == syn._num_negatives("U2I", split)


def test_q2i_and_i2i_positives_match_and_negatives_do_not(data_dir, world):
    titles = _by_title(world)
    for row in _rows(data_dir, "test", "Q2I"):
        words = set(row["query"][1].split()) - {"by", "in"}
        assert words <= set(row["pos"][0][1].lower().split())
        assert len(row["neg"]) == 19
        assert all(not words <= set(n[1].lower().split()) for n in row["neg"])
    parse = lambda text: titles[text.split("title: ", 1)[1].split(", categories:", 1)[0]]
    for row in _rows(data_dir, "test", "I2I"):
        query = parse(row["query"][1])
        assert all(parse(p[1]).noun == query.noun and parse(p[1]) != query for p in row["pos"])
        assert len(row["neg"]) == 5 and all(parse(n[1]).noun != query.noun for n in row["neg"])


def _listing_item(listing: str, world: sw.World) -> sw.Item:
    title = listing.split("title: ", 1)[1].split(";", 1)[0]
    words = set(re.sub(r"[-(),]", " ", title).lower().split()) - {"by"}
    found = [it for it in world.items
             if {it.brand.lower(), it.color, it.material, it.noun} == words]
    assert len(found) == 1, listing
    return found[0]


def test_pm_yes_iff_same_product(data_dir, world):
    answers = []
    for row in _rows(data_dir, "test", "PM") + _rows(data_dir, "train", "PM"):
        prompt, answer = row["text"]
        first, second = _input(prompt).split("\n")
        same = _listing_item(first, world) == _listing_item(second, world)
        assert answer == ("yes" if same else "no")
        answers.append(answer)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_prp_letter_follows_relation_rule(data_dir, world):
    titles = _by_title(world)
    letter = {sw.ALSO_BOUGHT: "A", sw.ALSO_VIEWED: "B", sw.SIMILAR: "C"}
    for row in _rows(data_dir, "test", "PRP"):
        prompt, answer = row["text"]
        a, b = (titles[line.split(": ", 1)[1]] for line in _input(prompt).split("\n"))
        assert answer == letter[sw.relation(a, b)]
        assert _options(prompt) == list(syn.PRP_OPTIONS)


def _asked(question: str) -> str:
    for attr, template in syn.AP_QUESTIONS.items():
        if re.fullmatch(re.escape(template).replace(r"\{noun\}", r"\w+"), question):
            return attr
    raise AssertionError(question)


def _states(document: str, attr: str) -> bool:
    pattern = re.escape(syn.DOC_SENTENCES[attr])
    pattern = re.sub(r"\\\{\w+\\\}", r"[$\\w.]+", pattern)
    return re.search(pattern, document) is not None


def test_ap_yes_iff_document_states_the_answer(data_dir):
    for row in _rows(data_dir, "test", "AP") + _rows(data_dir, "train", "AP"):
        prompt, answer = row["text"]
        question, document = _input(prompt).split("\n")
        stated = _states(document[len("document: "):], _asked(question[len("question: "):]))
        assert answer == ("yes" if stated else "no")


def test_ag_answer_value_comes_from_document(data_dir):
    for row in _rows(data_dir, "test", "AG"):
        prompt, answer = row["text"]
        question, document = _input(prompt).split("\n")
        attr = _asked(question[len("Question: "):])
        assert _states(document, attr)
        value = answer.rstrip(".").split()[-1] if attr != "size" else answer.split()[-2]
        assert value in document


def test_qr_resolves_the_pronoun(data_dir, world):
    pronoun = re.compile(r"\b(it|that one|the first one)\b", re.IGNORECASE)
    for row in _rows(data_dir, "test", "QR") + _rows(data_dir, "train", "QR"):
        prompt, answer = row["text"]
        lines = _input(prompt).split("\n")
        named = [t for t in (it.title for it in world.items) if any(t in line for line in lines[:-1])]
        resolved = [t for t in named if t in answer]
        assert len(resolved) == 1 and not pronoun.search(answer), (lines, answer)
        if "the first one" in lines[-1]:
            assert lines[0].find(resolved[0]) >= 0
        elif len(named) == 2:
            assert resolved[0] in lines[1]
        assert pronoun.search(lines[-1])


def test_ave_values_sit_in_the_named_field(data_dir):
    for row in _rows(data_dir, "test", "AVE"):
        prompt, answer = row["text"]
        fields = dict(line.split(": ", 1) for line in _input(prompt).split("\n"))
        targets = fields["Target attributes"].split(", ")
        triples = json.loads(answer)
        assert 1 <= len(triples) <= 2 and {t["attribute"] for t in triples} == set(targets)
        for t in triples:
            assert t["value"] in fields[f"Product {t['source']}"].lower().split() or \
                f" {t['value']}." in fields[f"Product {t['source']}"]


def test_up_and_ip_answers_follow_history_and_world(data_dir, world):
    titles = _by_title(world)
    for row in _rows(data_dir, "test", "UP"):
        prompt, answer = row["text"]
        history = re.findall(r"([A-Z]\w+ \w+ \w+ \w+): (\d) stars?", prompt)
        items, ratings = [titles[t] for t, _ in history], [int(r) for _, r in history]
        assert len(items) == syn.UP_HISTORY
        cat, brand, color = re.match(r"The user prefers (\w+) products by (\w+) in (\w+)", answer).groups()
        for value, field in ((cat, lambda it: it.category.name), (brand, lambda it: it.brand),
                             (color, lambda it: it.color)):
            counts = Counter(field(it) for it in items)
            assert counts[value] == max(counts.values()), (history, answer)
        if max(ratings) > min(ratings):
            best = answer.split("rating the ")[1].split()[0]
            assert best in {it.noun for it, r in zip(items, ratings) if r == max(ratings)}
    for row in _rows(data_dir, "test", "IP"):
        prompt, answer = row["text"]
        title = re.search(r"Introduce product (.+?)(?:,| and describe)", prompt).group(1)
        item = titles[title]
        assert item in world.item_split["test"]
        assert item.price_text in answer and sw.OPINIONS[item.quality] in answer and item.size in answer


def test_corpus_describes_world_without_held_out_histories(data_dir, world):
    corpus = syn.pretraining_corpus(data_dir)
    text = "\n".join(corpus)
    assert all(it.title in text for it in world.items)
    for split, present in (("train", True), ("valid", False), ("test", False)):
        for user in world.user_split[split]:
            assert (f"Shopper {user.id} bought" in text) == present


# ---- chance levels --------------------------------------------------------------------------------

def test_chance_covers_every_task(data_dir):
    chance = json.loads((data_dir / "chance.json").read_text())
    assert set(chance) == {t.name for t in TASKS}
    for task in TASKS:
        entry = chance[task.name]
        assert entry["metric"] == task.metric and entry["how"] and 0.0 < entry["chance"] < 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, 21)) / 20)
    np.testing.assert_allclose(chance["Emb_user"]["chance"], harmonic, atol=1e-6)
    np.testing.assert_allclose(chance["Sequential_Recommendation"]["chance"], 1 / syn.SR_OPTIONS, atol=1e-6)
    np.testing.assert_allclose(chance["Sentiment_Analysis"]["chance"], 0.2, atol=0.03)
    np.testing.assert_allclose(chance["Product_Relation_Prediction"]["chance"], 1 / 3, atol=0.03)


def test_expected_random_ndcg_matches_simulation():
    rng = np.random.default_rng(0)
    n_pos, n_total = 2, 7
    discounts = 1 / np.log2(np.arange(n_total) + 2)
    sims = [discounts[rng.permutation(n_total)[:n_pos]].sum() / discounts[:n_pos].sum() for _ in range(20000)]
    np.testing.assert_allclose(chance.expected_random_ndcg(n_pos, n_total), np.mean(sims), atol=3e-3)


# ---- extra train-side rows (the demo base's instruction data) -----------------------------------------

def _contains_run(sequence: list[str], run: list[str]) -> bool:
    return any(sequence[i:i + len(run)] == run for i in range(len(sequence) - len(run) + 1))


def test_extra_train_rows_are_seeded_fresh_and_from_train_users(world, data_dir):
    extra = syn.extra_train_rows(world, "SR", 40, seed=0)
    assert extra == syn.extra_train_rows(world, "SR", 40, seed=0)
    assert extra != syn.extra_train_rows(world, "SR", 40, seed=1)
    assert len(extra) == 40 and all(row["task"] == BY_SHORT["SR"].name for row in extra)
    assert extra != _rows(data_dir, "train", "SR")[:40]
    train_histories = [[it.title for it in user.purchases] for user in world.user_split["train"]]
    held_out = [[it.title for it in user.purchases] for split in ("valid", "test") for user in world.user_split[split]]
    for row in extra:
        history = [line.split(": ", 1)[1] for line in _input(row["text"][0]).split("\n")]
        assert any(_contains_run(titles, history) for titles in train_histories), history
    # the check has teeth: a valid user's history is found among the held-out users, not among the train ones
    valid_row = _rows(data_dir, "valid", "SR")[0]
    valid_history = [line.split(": ", 1)[1] for line in _input(valid_row["text"][0]).split("\n")]
    assert any(_contains_run(titles, valid_history) for titles in held_out)
    assert not any(_contains_run(titles, valid_history) for titles in train_histories)


def test_extra_train_rows_leave_out_the_held_out_inputs(world, data_dir):
    held_out = {_input(row["text"][0]) for split in ("valid", "test") for row in _rows(data_dir, split, "PRP")}
    every = syn.extra_train_rows(world, "PRP", 600, seed=0)
    kept = syn.extra_train_rows(world, "PRP", 600, seed=0, exclude_inputs=held_out)
    clashing = [row for row in every if _input(row["text"][0]) in held_out]
    assert clashing, "product pairs recur across splits: without the filter some rows are held-out inputs"
    assert kept == [row for row in every if _input(row["text"][0]) not in held_out]
    assert len(kept) == 600 - len(clashing)


def test_extra_train_rows_refuse_an_embedding_task(world):
    with pytest.raises(ValueError, match="U2I is an embedding task"):
        syn.extra_train_rows(world, "U2I", 4, seed=0)
