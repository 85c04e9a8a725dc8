"""Chance levels: the score of chance, or of a trivial baseline, for each task on a dataset's test split.

Scored with the evaluation's own metrics, so chance and model share one yardstick. The rows are in the
released layout (Alpaca prompts with "### Input:" and "### Options:" sections), so any dataset in that
layout gets the same baselines; the synthetic dataset writes them into its chance.json.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from recfound_jax.data.formatting import input_text, options_of
from recfound_jax.evaluate.metrics import score_task, token_prf
from recfound_jax.tasks import BY_SHORT, TASKS

Row = dict[str, Any]


def expected_random_ndcg(n_pos: int, n_total: int) -> float:
    """Exact expected binary NDCG of a uniformly random ranking of ``n_pos`` positives among ``n_total``."""
    discounts = 1.0 / np.log2(np.arange(n_total) + 2.0)
    return float(n_pos * discounts.mean() / discounts[:n_pos].sum())


def _score(task_name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    return float(score_task(task_name, list(predictions), list(references))["score"])


def _simulated(task_name: str, references: list[str], choices: Sequence[str], rng: np.random.Generator,
               repeats: int = 1000) -> float:
    """Mean score of uniformly random answers from ``choices`` over ``repeats`` seeded draws."""
    return float(np.mean([_score(task_name, list(rng.choice(choices, size=len(references))), references)
                          for _ in range(repeats)]))


def _medoid_answer(answers: Sequence[str], limit: int = 100) -> str:
    """The train answer with the highest mean token F1 against the (first ``limit``) train answers."""
    pool = list(dict.fromkeys(answers))[:limit]
    scores = [np.mean([token_prf(a, b)[2] for b in pool]) for a in pool]
    return pool[int(np.argmax(scores))]


def _ave_baseline(train: list[Row], test: list[Row]) -> list[str]:
    """Per test row: each target attribute answered with its most common train (value, source)."""
    common: dict[str, Counter] = {}
    for row in train:
        for t in json.loads(row["text"][1]):
            common.setdefault(t["attribute"], Counter())[(t["value"], t["source"])] += 1
    preds = []
    for row in test:
        targets = input_text(row["text"][0]).rsplit("Target attributes: ", 1)[1].split(", ")
        guess = {a: common[a].most_common(1)[0][0] for a in targets}
        preds.append(json.dumps([{"attribute": a, "value": v, "source": s} for a, (v, s) in guess.items()]))
    return preds


def chance_levels(rows: dict[str, dict[str, list[Row]]], seed: int) -> dict[str, dict]:
    """{task: {"metric", "chance", "how"}}: chance or trivial-baseline scores on the test split, of the 13
    released tasks (the synthetic world has no others); a run's added tasks have no chance level, and the
    report leaves their chance cells blank."""
    rng = np.random.default_rng([seed, 2])
    test = {t.short: rows["test"][t.name] for t in TASKS}
    train = {t.short: rows["train"][t.name] for t in TASKS}
    answers = lambda short: [r["text"][1] for r in test[short]]
    out: dict[str, tuple[float, str]] = {}
    harmonic = float(np.mean(1.0 / np.arange(1, 21)))
    for short in ("U2I", "Q2I"):
        out[short] = (harmonic, "exact: MRR of a random rank among 1 positive + 19 negatives, H_20/20")
    out["I2I"] = (float(np.mean([expected_random_ndcg(len(r["pos"]), len(r["pos"]) + min(5, len(r["neg"])))
                                 for r in test["I2I"]])),
                  "exact: expected binary NDCG of a random ranking of each test row's positives + 5 negatives")
    out["SR"] = (float(np.mean([1 / len(options_of(r["text"][0])) for r in test["SR"]])),
                 "exact: mean of 1/K for K options per row")
    for short, letters in (("SA", "ABCDE"), ("PRP", "ABC")):
        out[short] = (_simulated(BY_SHORT[short].name, answers(short), list(letters), rng),
                      f"macro F1 of a uniform random letter {letters[0]}-{letters[-1]}, mean of 1000 seeded draws")
    for short in ("PM", "AP"):
        always = _score(BY_SHORT[short].name, ["yes"] * len(answers(short)), answers(short))
        out[short] = (_simulated(BY_SHORT[short].name, answers(short), ["yes", "no"], rng),
                      f"F1 (yes) of a uniform random yes/no, mean of 1000 seeded draws; always yes: {always:.4f}")
    out["AVE"] = (_score(BY_SHORT["AVE"].name, _ave_baseline(train["AVE"], test["AVE"]), answers("AVE")),
                  "triple F1 of answering each target attribute with its most common train (value, source)")
    echo = [input_text(r["text"][0]).rsplit("\nA: ", 1)[1] for r in test["QR"]]
    out["QR"] = (_score(BY_SHORT["QR"].name, echo, answers("QR")), "token F1 of echoing the last query unchanged")
    for short in ("UP", "IP", "AG"):
        constant = _medoid_answer([r["text"][1] for r in train[short]])
        out[short] = (_score(BY_SHORT[short].name, [constant] * len(test[short]), answers(short)),
                      "token F1 of one constant answer: the train answer with the best mean token F1 on train")
    return {t.name: {"metric": t.metric, "chance": round(out[t.short][0], 6), "how": out[t.short][1]}
            for t in TASKS}
