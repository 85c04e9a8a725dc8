"""The embedded synthetic dataset: all 13 RecFound tasks in the released JSONL format, from a generated world.

``python -m recfound_jax.demo.synthetic --out DIR [--scale N] [--seed S] [--lengths]`` writes
- ``DIR/{train,valid,test}/{task}.jsonl``: embedding rows ``{"query", "pos", "neg", "task"}`` (valid and
  test rows add ``"source"``) and generative rows ``{"text": [prompt, answer], "task"}`` whose prompt is
  the paper's Alpaca-style text (Appendix B.1) around one of the paper's instructions (B.2);
- ``DIR/chance.json``: the score of chance (or of a trivial baseline) for each task on the test split;
- ``DIR/corpus.txt``: plain text about the same world, one document a line, for causal-LM pretraining;
- ``DIR/manifest.json`` and the completion marker ``DIR/COMPLETE``.
Every answer follows from its input and the world's rules (synthetic_world.py); the same (scale, seed)
gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
from absl import flags

from recfound_jax import cli, jsonio
from recfound_jax.atomic_dir import build_dir_atomically
from recfound_jax.data.formatting import input_text
from recfound_jax.data.instructions import INSTRUCTIONS, LETTERS, alpaca, embedding_row, generative_row, ordinal
from recfound_jax.demo import synthetic_world as sw
from recfound_jax.evaluate.chance import chance_levels
from recfound_jax.tasks import BY_SHORT, TASKS
from recfound_jax.tokenizer import Tokenizer

GENERATOR_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "valid", "test")
ROWS_PER_SPLIT: dict[str, int] = {"train": 200, "valid": 30, "test": 60}
MARKER = "COMPLETE"
SR_OPTIONS = 4
SR_HISTORY, U2I_HISTORY, UP_HISTORY = 3, 4, 4
TRAIN_NEGATIVES = 3
TEST_NEGATIVES = {"U2I": 19, "Q2I": 19, "I2I": 5}
I2I_POSITIVES = 2
PRONOUNS = ("it", "that one")

SA_OPTIONS = ("very positive", "positive", "neutral", "negative", "very negative")
PRP_OPTIONS = ("Users who buy product 1 may also buy product 2.", "Users who view product 1 may also view product 2.",
               "The product 1 is similar with the product 2.")
AP_QUESTIONS = {"color": "What color is this {noun}?", "material": "What is this {noun} made of?",
                "size": "What size is this {noun}?", "price": "How much does this {noun} cost?",
                "brand": "Which brand makes this {noun}?"}
DOC_SENTENCES = {"color": "The {noun} comes in {color}.", "material": "It is made of {material}.",
                 "size": "I bought the {size} size.", "price": "It cost me {price}.",
                 "brand": "It is made by {brand}."}
AG_ANSWERS = {"color": "The {noun} is {value}.", "material": "It is made of {value}.",
              "size": "It is the {value} size.", "price": "It costs {value}.", "brand": "It is made by {value}."}


Row = dict
Writer = Callable[[sw.World, str, int, np.random.Generator], list[Row]]


def _num_negatives(short: str, split: str) -> int:
    return TEST_NEGATIVES[short] if split == "test" else TRAIN_NEGATIVES


def _sample(pool: Sequence, k: int, rng: np.random.Generator) -> list:
    """``k`` distinct elements of ``pool`` in random order (fewer when the pool is smaller)."""
    return [pool[int(i)] for i in rng.permutation(len(pool))[:k]]


def _take(candidates: Sequence, n: int, rng: np.random.Generator) -> list:
    """``n`` candidates: shuffled passes over the list, as many as needed."""
    out: list = []
    while len(out) < n:
        out.extend(_sample(candidates, n - len(out), rng))
    return out


def _balanced(candidates: Sequence, n: int, rng: np.random.Generator, key: Callable) -> list:
    """``n`` candidates split evenly over the sources (retrieval draws negatives per source)."""
    groups = [g for g in ([c for c in candidates if key(c) == s] for s in sw.SOURCES) if g]
    counts = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    out = [c for group, k in zip(groups, counts) for c in _take(group, k, rng)]
    return [out[int(i)] for i in rng.permutation(len(out))]


def _user_slots(world: sw.World, split: str) -> list[tuple[sw.User, int]]:
    """(user, t) pairs of the split's users: purchases before t are the history, purchase t the target."""
    return [(u, t) for u in world.user_split[split] for t in range(SR_HISTORY, len(u.purchases))]


# ---- embedding tasks --------------------------------------------------------------------------------

def write_u2i(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """U2I: recent purchases (newest first) -> the next purchase; negatives from the same source."""
    rows = []
    for user, t in _balanced(_user_slots(world, split), n, rng, key=lambda s: s[0].purchases[s[1]].source):
        target = user.purchases[t]
        history = user.purchases[max(0, t - U2I_HISTORY):t][::-1]
        pool = [it for it in world.items_of_source(target.source) if it not in user.purchases]
        negs = _sample(pool, _num_negatives("U2I", split), rng)
        rows.append(embedding_row("U2I", split, rng, "\n".join(it.title for it in history), [target.title],
                             [it.title for it in negs], target.source))
    return rows


_QUERY_FORMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("{color} {noun}", ("color", "noun")),
    ("{brand} {noun}", ("brand", "noun")),
    ("{material} {noun}", ("material", "noun")),
    ("{color} {material} {noun}", ("color", "material", "noun")),
    ("{noun} by {brand} in {color}", ("brand", "color", "noun")),
    ("{brand} {material} {noun}", ("brand", "material", "noun")),
)


def write_q2i(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """Q2I: a query made of an item's attributes -> the item; negatives never match every query word.

    Queried items come from the split's items, so test queries ask for items no train query asked for.
    """
    rows = []
    for item in _balanced(world.item_split[split], n, rng, key=lambda it: it.source):
        form, fields = _QUERY_FORMS[int(rng.integers(len(_QUERY_FORMS)))]
        query = form.format(**{f: getattr(item, f) for f in fields}).lower()
        pool = [it for it in world.items_of_source(item.source)
                if any(getattr(it, f) != getattr(item, f) for f in fields)]
        hard = [it for it in pool if it.noun == item.noun]
        k = _num_negatives("Q2I", split)
        negs = _sample(hard, min(len(hard), max(1, k // 3)), rng)
        negs += _sample([it for it in pool if it not in negs], k - len(negs), rng)
        rows.append(embedding_row("Q2I", split, rng, query, [item.title], [it.title for it in negs], item.source))
    return rows


def _i2i_text(item: sw.Item) -> str:
    return f"title: {item.title}, categories: {item.category.name}"


def write_i2i(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """I2I: an item -> items with the same noun (similar); negatives: other nouns of the category first."""
    anchors = [it for it in world.item_split[split]
               if len(world.items_where(category=it.category, noun=it.noun)) > 1]
    rows = []
    for item in _balanced(anchors, n, rng, key=lambda it: it.source):
        same = [it for it in world.items_where(category=item.category, noun=item.noun) if it != item]
        pos = _sample(same, I2I_POSITIVES, rng)
        k = _num_negatives("I2I", split)
        shelf = [it for it in world.items_where(category=item.category) if it.noun != item.noun]
        negs = _sample(shelf, (k + 1) // 2, rng)
        others = [it for it in world.items_of_source(item.source) if it.category != item.category]
        negs += _sample(others, k - len(negs), rng)
        rows.append(embedding_row("I2I", split, rng, _i2i_text(item), [_i2i_text(it) for it in pos],
                             [_i2i_text(it) for it in negs], item.source))
    return rows


# ---- generative tasks -------------------------------------------------------------------------------

_QR_OPENERS = ("Do you have the {title}?", "I want to buy the {title}.", "Tell me about the {title}.")
_QR_QUERIES = ("How much is {p}?", "Is {p} on sale?", "Can I return {p}?", "Does {p} come in {color}?",
               "Can you ship {p} today?", "Is {p} in stock?", "What size is {p}?")


def write_qr(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """QR: rewrite the last query, replacing "it"/"that one" (the last product named) or "the first one"."""
    rows = []
    for first in _take(world.items, n, rng):
        lines = ["A: " + str(rng.choice(_QR_OPENERS)).format(title=first.title)]
        referent, pronoun = first, str(rng.choice(PRONOUNS))
        if rng.uniform() < 0.5:
            shelf = [it for it in world.items_where(category=first.category) if it.noun != first.noun]
            second = _sample(shelf, 1, rng)[0]
            lines.append(f"B: Yes, and we also have the {second.title}.")
            referent, pronoun = (first, "the first one") if rng.uniform() < 0.5 else (second, pronoun)
        else:
            lines.append(str(rng.choice(("B: Yes, it is in stock.", f"B: Yes, it costs {first.price_text}."))))
        query = str(rng.choice(_QR_QUERIES))
        color = str(rng.choice([c for c in sw.COLORS if c != referent.color]))
        lines.append("A: " + query.format(p=pronoun, color=color))
        answer = query.format(p=f"the {referent.title}", color=color)
        rows.append(generative_row("QR", alpaca(str(rng.choice(INSTRUCTIONS["QR"])), "\n".join(lines)), answer))
    return rows


def write_sr(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """SR: the next purchase among 4 options: one same-category item off the user's taste, two off-category."""
    rows = []
    for user, t in _take(_user_slots(world, split), n, rng):
        target = user.purchases[t]
        history = user.purchases[max(0, t - SR_HISTORY):t]
        hard = [it for it in world.items_where(category=target.category)
                if it.brand != user.brands.get(target.category.name) and it.color != user.color
                and it.noun != target.noun and it not in user.purchases]
        taken = {user.primary.name, user.secondary.name, target.category.name} | {it.category.name for it in history}
        far = [it for it in world.items if it.category.name not in taken]
        negs = _sample(hard, 1, rng)
        negs += _sample(far, SR_OPTIONS - 1 - len(negs), rng)
        options = _sample([target] + negs, SR_OPTIONS, rng)
        input_text = "\n".join(f"{ordinal(i + 1)}: {it.title}" for i, it in enumerate(history))
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["SR"])), input_text, [it.title for it in options])
        rows.append(generative_row("SR", prompt, LETTERS[options.index(target)]))
    return rows


_PRP_LETTER = {sw.ALSO_BOUGHT: "A", sw.ALSO_VIEWED: "B", sw.SIMILAR: "C"}


def write_prp(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """PRP: same noun -> C similar; complementary nouns -> A also bought; other nouns of the shelf -> B."""
    rows = []
    for i, a in enumerate(_take(world.items, n, rng)):
        kind = (sw.ALSO_BOUGHT, sw.ALSO_VIEWED, sw.SIMILAR)[i % 3]
        shelf = [b for b in world.items_where(category=a.category) if b != a and sw.relation(a, b) == kind]
        b = _sample(shelf, 1, rng)[0]
        first, second = (a, b) if rng.uniform() < 0.5 else (b, a)
        input_text = f"Product 1: {first.title}\nProduct 2: {second.title}"
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["PRP"])), input_text, PRP_OPTIONS)
        rows.append(generative_row("PRP", prompt, _PRP_LETTER[kind]))
    return rows


def _rated_purchases(world: sw.World, split: str) -> list[tuple[sw.Item, int]]:
    return [(it, r) for u in world.user_split[split] for it, r in zip(u.purchases, u.ratings)]


def write_sa(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """SA: a review written from the rating's words -> A (5 stars) ... E (1 star)."""
    rows = []
    for item, rating in _take(_rated_purchases(world, split), n, rng):
        review = sw.review_text(item, rating, rng, with_fact=bool(rng.uniform() < 0.5))
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["SA"])), review, SA_OPTIONS)
        rows.append(generative_row("SA", prompt, LETTERS[5 - rating]))
    return rows


_AVE_ATTRIBUTES = ("color", "material", "size")
_AVE_SENTENCES = {"color": "Comes in {v}.", "material": "Made of durable {v}.", "size": "Size: {v}."}
_AVE_FILLERS = ("Great for everyday use.", "Easy to clean.", "A popular choice.")


def write_ave(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """AVE: each attribute is placed in the title, the description or both; the answer says where."""
    rows = []
    for item in _take(world.items, n, rng):
        targets = _sample(_AVE_ATTRIBUTES, int(rng.integers(1, 3)), rng)
        # a value may sit in both fields only when it is the one target, so answers hold at most two triples
        place = {a: str(rng.choice(["title", "description", "both"], p=[0.4, 0.4, 0.2])
                        if len(targets) == 1 or a not in targets else rng.choice(["title", "description"]))
                 for a in _AVE_ATTRIBUTES}
        in_title = {a for a, where in place.items() if where in ("title", "both")}
        in_desc = {a for a, where in place.items() if where in ("description", "both")}
        title = " ".join([item.brand] + [getattr(item, a) for a in ("size", "color", "material") if a in in_title]
                         + [item.noun])
        desc = [_AVE_SENTENCES[a].format(v=getattr(item, a)) for a in _AVE_ATTRIBUTES if a in in_desc]
        desc.append(str(rng.choice(_AVE_FILLERS)))
        answer = [{"attribute": a, "value": getattr(item, a), "source": s}
                  for a in targets for s in ("title", "description") if place[a] in (s, "both")]
        input_text = (f"Product title: {title}\nProduct description: {' '.join(desc)}\n"
                      f"Product brand: {item.brand}\nTarget attributes: {', '.join(targets)}")
        rows.append(generative_row("AVE", alpaca(str(rng.choice(INSTRUCTIONS["AVE"])), input_text), json.dumps(answer)))
    return rows


def _listing(item: sw.Item, rng: np.random.Generator, price_jitter: float) -> str:
    """One shop's listing of ``item``: the title written one of several ways, maybe no manufacturer."""
    styles = (item.title, f"{item.noun} - {item.brand} ({item.color}, {item.material})",
              f"{item.color} {item.material} {item.noun} by {item.brand}", item.title.lower())
    maker = item.brand if rng.uniform() < 0.85 else "nan"
    price = item.price * float(rng.uniform(1 - price_jitter, 1 + price_jitter))
    return f"title: {rng.choice(styles)}; manufacturer: {maker}; price: {price:.2f}"


def write_pm(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """PM: two listings; yes iff they are the same catalog item (a "no" pair shares the noun)."""
    rows = []
    for i, a in enumerate(_take(world.items, n, rng)):
        same = i % 2 == 0
        b = a if same else _sample([it for it in world.items_where(category=a.category, noun=a.noun)
                                    if it != a], 1, rng)[0]
        input_text = f"Product 1: {_listing(a, rng, 0.0)}\nProduct 2: {_listing(b, rng, 0.05)}"
        rows.append(generative_row("PM", alpaca(str(rng.choice(INSTRUCTIONS["PM"])), input_text), "yes" if same else "no"))
    return rows


def _document(item: sw.Item, facts: Sequence[str], rng: np.random.Generator) -> str:
    """A customer's note on ``item`` stating exactly the attributes in ``facts``."""
    values = {"color": item.color, "material": item.material, "size": item.size, "price": item.price_text,
              "brand": item.brand, "noun": item.noun}
    said = [DOC_SENTENCES[f].format(**values) for f in facts]
    opener = sw.review_text(item, item.quality, rng).split(".")[0] + "."
    return " ".join([opener] + said)


def _qa_case(item: sw.Item, answerable: bool, rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, document, asked attribute) with the asked attribute in the document iff answerable."""
    attrs = list(AP_QUESTIONS)
    asked = attrs[int(rng.integers(len(attrs)))]
    others = [a for a in attrs if a != asked]
    # one or two facts either way, so the document's length says nothing about the answer
    facts = _sample(others, int(rng.integers(0, 2)) if answerable else int(rng.integers(1, 3)), rng)
    if answerable:
        facts.insert(int(rng.integers(len(facts) + 1)), asked)
    question = AP_QUESTIONS[asked].format(noun=item.noun)
    return question, _document(item, facts, rng), asked


def write_ap(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """AP: yes iff the document states the attribute the question asks about."""
    rows = []
    for i, item in enumerate(_take(world.items, n, rng)):
        answerable = i % 2 == 0
        question, doc, _ = _qa_case(item, answerable, rng)
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["AP"])), f"question: {question}\ndocument: {doc}")
        rows.append(generative_row("AP", prompt, "yes" if answerable else "no"))
    return rows


def write_ag(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """AG: answer an answerable question with the value the document states."""
    rows = []
    for item in _take(world.items, n, rng):
        question, doc, asked = _qa_case(item, True, rng)
        answer = AG_ANSWERS[asked].format(noun=item.noun, value=getattr(item, asked) if asked != "price"
                                          else item.price_text)
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["AG"])), f"Question: {question}\nDocument: {doc}")
        rows.append(generative_row("AG", prompt, answer))
    return rows


def _mode_latest(values: Sequence[str]) -> str:
    """The most frequent value; among ties, the one seen last."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in reversed(values) if counts[v] == best)


def user_profile_answer(items: Sequence[sw.Item], ratings: Sequence[int]) -> str:
    """The profile the history shows: main category, brand and color, best and worst rated item."""
    cat = _mode_latest([it.category.name for it in items])
    brand = _mode_latest([it.brand for it in items])
    color = _mode_latest([it.color for it in items])
    text = f"The user prefers {cat} products by {brand} in {color}"
    if max(ratings) == min(ratings):
        return text + f", rating every item {sw.stars(ratings[0])}."
    best = max(range(len(items)), key=lambda i: (ratings[i], i))
    worst = min(range(len(items)), key=lambda i: (ratings[i], -i))
    return text + f", rating the {items[best].noun} highest and the {items[worst].noun} lowest."


def write_up(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """UP: a rating history -> the category, brand and color it shows most, best and worst item."""
    rows = []
    for user, t in _take(_user_slots(world, split), n, rng):
        lo = max(0, t + 1 - UP_HISTORY)
        items, ratings = user.purchases[lo:t + 1], user.ratings[lo:t + 1]
        history = "; ".join(f"{it.title}: {sw.stars(r)}" for it, r in zip(items, ratings))
        prompt = alpaca(str(rng.choice(INSTRUCTIONS["UP"])).format(history=history))
        rows.append(generative_row("UP", prompt, user_profile_answer(items, ratings)))
    return rows


def item_profile_answer(item: sw.Item) -> str:
    """The item's card: category, brand, color, material from the title; size, price, opinion from the world."""
    return (f"A {item.size} {item.category.name} {item.noun} by {item.brand}, {item.color} {item.material}, "
            f"priced at {item.price_text}; customers find it {sw.OPINIONS[item.quality]}.")


def write_ip(world: sw.World, split: str, n: int, rng: np.random.Generator) -> list[Row]:
    """IP: introduce an item of the split (items are split too, so test items are new to IP)."""
    rows = []
    for item in _take(world.item_split[split], n, rng):
        instruction = str(rng.choice(INSTRUCTIONS["IP"])).format(title=item.title, source=item.source)
        rows.append(generative_row("IP", alpaca(instruction), item_profile_answer(item)))
    return rows


WRITERS: dict[str, Writer] = {
    "U2I": write_u2i, "Q2I": write_q2i, "I2I": write_i2i, "QR": write_qr, "SR": write_sr, "PRP": write_prp,
    "SA": write_sa, "AVE": write_ave, "PM": write_pm, "UP": write_up, "IP": write_ip, "AP": write_ap,
    "AG": write_ag,
}


# ---- files ------------------------------------------------------------------------------------------

def build_rows(world: sw.World) -> dict[str, dict[str, list[Row]]]:
    """Every split's rows per task name; each (split, task) draws from its own seeded stream."""
    rows: dict[str, dict[str, list[Row]]] = {}
    for split_index, split in enumerate(SPLITS):
        rows[split] = {}
        for task in TASKS:
            rng = np.random.default_rng([world.seed, 10 + split_index, task.id])
            rows[split][task.name] = WRITERS[task.short](world, split, ROWS_PER_SPLIT[split] * world.scale, rng)
    return rows


def extra_train_rows(world: sw.World, short: str, n: int, seed: int,
                     exclude_inputs: Collection[str] = frozenset()) -> list[Row]:
    """``n`` more rows of generative task ``short`` drawn as the train split's are (train users, the catalog),
    from a stream of their own: the demo base's instruction data (recfound_jax.demo.pretrain), never a valid
    or test user's row. Rows whose `input_text` is in ``exclude_inputs`` (give the valid and test rows'
    inputs: a product pair or a review can recur across splits) are dropped, so fewer may come back."""
    task = BY_SHORT[short]
    if task.is_embedding:
        raise ValueError(f"{short} is an embedding task; extra rows are drawn for generative tasks only")
    rows = WRITERS[short](world, "train", n, np.random.default_rng([world.seed, 100, seed, task.id]))
    return [row for row in rows if input_text(row["text"][0]) not in exclude_inputs]


def generate(out_dir: str | os.PathLike, *, scale: int = 1, seed: int = 0) -> dict:
    """Write the dataset, chance.json, corpus.txt, manifest.json and the marker into ``out_dir``.

    Returns the manifest: scale, seed, generator version, row counts per split and task, world sizes.
    """
    out = Path(out_dir)
    world = sw.build_world(scale, seed)
    rows = build_rows(world)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for name, task_rows in rows[split].items():
            jsonio.write_jsonl(out / split / f"{name}.jsonl", task_rows)
    jsonio.write_json(out / "chance.json", chance_levels(rows, seed))
    corpus = sw.world_corpus(world, seed)
    (out / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    manifest = {
        "generator": "recfound_jax.demo.synthetic", "generator_version": GENERATOR_VERSION,
        "scale": scale, "seed": seed,
        "rows": {split: {name: len(r) for name, r in rows[split].items()} for split in SPLITS},
        "world": {"categories": len(sw.CATEGORIES), "items": len(world.items), "users": len(world.users),
                  "sources": list(sw.SOURCES)},
        "corpus_documents": len(corpus),
    }
    jsonio.write_json(out / "manifest.json", manifest)
    (out / MARKER).write_text(GENERATOR_VERSION + "\n", encoding="utf-8")
    return manifest


def _check_existing(out: Path, scale: int, seed: int) -> dict:
    manifest = jsonio.read_json(out / "manifest.json")
    if (manifest["scale"], manifest["seed"]) != (scale, seed):
        raise ValueError(f"{out} holds the synthetic dataset of scale={manifest['scale']} seed={manifest['seed']}, "
                         f"not scale={scale} seed={seed}: delete it or pick another folder")
    return manifest


def _remove_outdated(out: Path) -> None:
    """Delete a dataset an older generator wrote: renamed aside first, so no reader sees it half deleted."""
    aside = out.with_name(f".{out.name}.outdated-{os.getpid()}")
    try:
        os.rename(out, aside)
    except FileNotFoundError:
        return  # another process removed it first
    shutil.rmtree(aside)


def ensure_dataset(out_dir: str | os.PathLike, *, scale: int = 1, seed: int = 0) -> dict:
    """The manifest of the dataset in ``out_dir``, generating it first unless its marker is there.

    A dataset written by another generator version is replaced. Generation goes to a temporary folder
    beside ``out_dir`` that is renamed into place, so a reader never sees half a dataset and concurrent
    callers agree on one copy.
    """
    out = Path(out_dir)
    if (out / MARKER).is_file() and (out / MARKER).read_text(encoding="utf-8").strip() != GENERATOR_VERSION:
        _remove_outdated(out)
    if (out / MARKER).is_file():
        return _check_existing(out, scale, seed)
    build_dir_atomically(out, lambda tmp: generate(tmp, scale=scale, seed=seed), marker=MARKER)
    return _check_existing(out, scale, seed)


def pretraining_corpus(out_dir: str | os.PathLike) -> list[str]:
    """The corpus documents of a generated dataset (``corpus.txt``, one document a line)."""
    text = (Path(out_dir) / "corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line]


def read_rows(out_dir: str | os.PathLike, split: str, task_name: str) -> list[Row]:
    """The rows of ``task_name`` in ``split`` of a dataset folder this module wrote, in file order."""
    with open(Path(out_dir) / split / f"{task_name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def token_lengths(out_dir: str | os.PathLike, split: str = "train") -> dict[str, dict[str, int]]:
    """p50/p95/max Mistral-v3 token counts per task: prompts and prompt+answer, or query and passage texts."""
    tok = Tokenizer()
    report = {}
    for task in TASKS:
        rows = read_rows(out_dir, split, task.name)
        if task.is_embedding:
            groups = {"query": [r["query"][1] for r in rows],
                      "passage": [p[1] for r in rows for p in r["pos"] + r["neg"]],
                      "query+instr": [r["query"][0] + "\n" + r["query"][1] for r in rows]}
        else:
            groups = {"prompt": [r["text"][0] for r in rows], "answer": [r["text"][1] for r in rows],
                      "prompt+answer": [r["text"][0] + "\n" + r["text"][1] for r in rows]}
        report[task.name] = {}
        for kind, texts in groups.items():
            lengths = np.array([len(ids) for ids in tok.encode_batch(texts)])
            for stat, value in (("p50", np.percentile(lengths, 50)), ("p95", np.percentile(lengths, 95)),
                                ("max", lengths.max())):
                report[task.name][f"{kind}_{stat}"] = int(round(float(value)))
    return report


FLAGS = flags.FlagValues()
_OUT = flags.DEFINE_string("out", None, "output folder", required=True, flag_values=FLAGS)
_SCALE = flags.DEFINE_integer("scale", 1, "multiplies the world and the row counts", lower_bound=1, flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "the world's and the rows' random seed", flag_values=FLAGS)
_LENGTHS = flags.DEFINE_bool("lengths", False, "print token lengths of the train split", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the dataset into --out and print its manifest (and token lengths with --lengths)."""
    cli.parse(FLAGS, argv, __doc__)
    print(json.dumps(generate(_OUT.value, scale=_SCALE.value, seed=_SEED.value), indent=2))
    if _LENGTHS.value:
        for name, stats in token_lengths(_OUT.value).items():
            print(f"{name:28s} " + " ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    cli.run(main)
