"""Metrics of the ten generative tasks (docs/method.md, "Evaluation") and `score_task`.

Every metric takes a list of predicted strings (the decoded outputs) and a list of reference
strings (the answers of the test rows) and returns a dict with at least
``{"score": float, "n": int, "invalid": int}`` plus its components. An invalid output, one the
task's format does not allow, always counts as wrong. A malformed reference is a data error and
raises ValueError naming its row, except for AVE, whose released protocol skips such rows (they are
counted under ``skipped_references``).

Conventions shared by every metric: a ratio whose denominator is zero is 0.0, and F1 is
2PR / (P + R), or 0.0 when P + R = 0.
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from recfound_jax import tasks as tasks_lib
from recfound_jax.tasks import Task, TaskTable

_OPTION_LETTERS = frozenset(string.ascii_uppercase)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2.0 * precision * recall, precision + recall)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no rows to score")


# ---------------------------------------------------------------- SR: Recall@1


def recall_at_1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """SR Recall@1: the stripped output must equal the stripped option letter of the reference.

    An output that is not a single upper-case letter is invalid (and wrong).
    """
    _check_lengths(predictions, references)
    correct = invalid = 0
    for pred, ref in zip(predictions, references):
        pred = pred.strip()
        if len(pred) != 1 or pred not in _OPTION_LETTERS:
            invalid += 1
        elif pred == ref.strip():
            correct += 1
    n = len(references)
    return {"score": _ratio(correct, n), "n": n, "invalid": invalid, "correct": correct}


# ---------------------------------------------------------------- SA, PRP: macro-F1


def _first_letter(text: str) -> str:
    text = text.strip()
    return text[0] if text else ""


def macro_f1(
    predictions: Sequence[str], references: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """Macro P/R/F1 on the first option letter (SA: classes "ABCDE", PRP: "ABC").

    The class of a text is the first character of the stripped text. A reference whose class is not
    in `classes` raises ValueError. A prediction whose class is not in `classes` (or an empty
    output) is invalid: it is a false negative of the reference's class and a false positive of
    no class, so it lowers recall without crediting or blaming any real class's precision. (The
    released script instead swaps it for a wrong letter, A or B, a false positive of that class.)

    The average runs over the classes that occur in the references or in the valid predictions
    (scikit-learn's default label set); a class absent from both sides has no defined P, R or F1
    and is left out. Per class: P = tp / (tp + fp), R = tp / (tp + fn), each 0.0 on a zero
    denominator, and F1 from those.
    """
    _check_lengths(predictions, references)
    allowed = set(classes)
    ref_classes = []
    for row, ref in enumerate(references):
        label = _first_letter(ref)
        if label not in allowed:
            raise ValueError(f"reference {row} ({ref!r}) is not one of {sorted(allowed)}")
        ref_classes.append(label)
    pred_classes = [_first_letter(p) for p in predictions]
    pred_classes = [p if p in allowed else None for p in pred_classes]

    present = sorted(set(ref_classes) | {p for p in pred_classes if p is not None})
    per_class: dict[str, dict[str, float]] = {}
    for c in present:
        tp = sum(r == c and p == c for r, p in zip(ref_classes, pred_classes))
        fp = sum(r != c and p == c for r, p in zip(ref_classes, pred_classes))
        fn = sum(r == c and p != c for r, p in zip(ref_classes, pred_classes))
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_class[c] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "support": tp + fn,
        }
    n = len(references)
    correct = sum(r == p for r, p in zip(ref_classes, pred_classes))
    return {
        "score": float(np.mean([v["f1"] for v in per_class.values()])),
        "n": n,
        "invalid": sum(p is None for p in pred_classes),
        "precision": float(np.mean([v["precision"] for v in per_class.values()])),
        "recall": float(np.mean([v["recall"] for v in per_class.values()])),
        "accuracy": _ratio(correct, n),
        "per_class": per_class,
    }


# ---------------------------------------------------------------- PM, AP: F1 with positive "yes"


def yes_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Binary F1 with positive class "yes" on the lower-cased stripped output.

    An output other than "yes"/"no" is invalid and scored as the opposite of its reference (a false
    negative when the reference is "yes", a false positive when it is "no"), as the released script
    does. A reference other than yes/no (any case, stripped) raises ValueError.
    """
    _check_lengths(predictions, references)
    tp = fp = fn = tn = invalid = 0
    for row, (pred, ref) in enumerate(zip(predictions, references)):
        ref = ref.strip().lower()
        if ref not in ("yes", "no"):
            raise ValueError(f"reference {row} ({ref!r}) is not yes/no")
        pred = pred.strip().lower()
        if pred not in ("yes", "no"):
            invalid += 1
            pred = "no" if ref == "yes" else "yes"
        tp += pred == "yes" and ref == "yes"
        fp += pred == "yes" and ref == "no"
        fn += pred == "no" and ref == "yes"
        tn += pred == "no" and ref == "no"
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    n = len(references)
    return {
        "score": _f1(precision, recall),
        "n": n,
        "invalid": invalid,
        "precision": precision,
        "recall": recall,
        "accuracy": _ratio(tp + tn, n),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


# ---------------------------------------------------------------- AVE: triple F1

Triple = tuple[Any, Any, Any]
_TRIPLE_KEYS = ("attribute", "value", "source")


def _field(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def _parse_triples(text: str) -> list[Triple | None] | None:
    """The JSON list as triples; None when the text is not a JSON list.

    A list element that is not an object with the three keys becomes None: it counts as a
    predicted triple that can never match.
    """
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(parsed, list):
        return None
    triples: list[Triple | None] = []
    for item in parsed:
        if isinstance(item, dict) and all(key in item for key in _TRIPLE_KEYS):
            triples.append(tuple(_field(item[key]) for key in _TRIPLE_KEYS))
        else:
            triples.append(None)
    return triples


def _contains_either_way(a: str | None, b: str | None) -> bool:
    # An empty string is a substring of everything: it only matches exactly, never as a wildcard.
    if not a or not b:
        return False
    return a in b or b in a


def triple_matches(pred: Triple, label: Triple) -> bool:
    """A predicted (attribute, value, source) hits a label when it equals it, or when the attributes
    are equal and the values, and also the sources, are each a non-empty substring of the other
    (in either direction)."""
    if pred == label:
        return True
    return (
        pred[0] == label[0]
        and _contains_either_way(pred[1], label[1])
        and _contains_either_way(pred[2], label[2])
    )


def triple_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """AVE F1 over (attribute, value, source) triples, micro-averaged over all rows.

    Each output is parsed as a JSON list of {"attribute", "value", "source"} objects; an output that
    is not a JSON list gives no predicted triples and counts as invalid; a list element without the
    three keys is a predicted triple that never hits. Each predicted triple counts once:
    precision = (predicted triples that hit some label of their row) / (predicted triples), and
    recall = (labels hit by some prediction of their row) / (labels). A reference that is not a JSON
    list of triples is skipped with its prediction (counted in ``skipped_references``); an empty
    label list is valid and adds only to the predicted count.
    """
    _check_lengths(predictions, references)
    n = invalid = skipped = n_pred = n_label = hits = matched = malformed = 0
    for pred_text, ref_text in zip(predictions, references):
        labels = _parse_triples(ref_text)
        if labels is None or any(label is None for label in labels):
            skipped += 1
            continue
        n += 1
        preds = _parse_triples(pred_text)
        if preds is None:
            invalid += 1
            preds = []
        malformed += sum(p is None for p in preds)
        valid_preds = [p for p in preds if p is not None]
        n_pred += len(preds)
        n_label += len(labels)
        hits += sum(any(triple_matches(p, lab) for lab in labels) for p in valid_preds)
        matched += sum(any(triple_matches(p, lab) for p in valid_preds) for lab in labels)
    precision, recall = _ratio(hits, n_pred), _ratio(matched, n_label)
    return {
        "score": _f1(precision, recall),
        "n": n,
        "invalid": invalid,
        "precision": precision,
        "recall": recall,
        "predicted": n_pred,
        "labels": n_label,
        "hits": hits,
        "matched_labels": matched,
        "malformed_triples": malformed,
        "skipped_references": skipped,
    }


# ---------------------------------------------------------------- QR, AG, UP, IP: text F1


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles (a/an/the), squash spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_prf(prediction: str, reference: str) -> tuple[float, float, float]:
    """SQuAD token (precision, recall, F1) of one pair: bag-of-tokens overlap after normalisation.

    When either side normalises to no tokens, all three are 1.0 if both do and 0.0 otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        same = float(pred_tokens == ref_tokens)
        return same, same, same
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    overlap = sum(common.values())
    precision, recall = overlap / len(pred_tokens), overlap / len(ref_tokens)
    return precision, recall, _f1(precision, recall)


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str,
    layer: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, Any]:
    """Baseline-free BERTScore P/R/F1 per row with an encoder loaded from a local directory.

    As the bert-score package computes it by default: each text is stripped, tokenized with
    `bertscore_tokenizer` (truncated to its `model_max_length`, special tokens added) and embedded
    by `AutoModel`; the hidden states of `layer` (0 = the embedding output, default the last
    layer; the released protocol uses longformer-large-4096 at layer 14) are L2-normalised.
    P is the mean, over the predicted tokens, of each one's best cosine against all reference
    tokens, and R the same the other way (greedy matching, no idf, no baseline rescaling);
    F1 = 2PR / (P + R). Special tokens ([CLS], [SEP], <s>, </s>) take no part in the means but can
    be a token's best match, as in bert-score. A text with no non-special token scores 0.0.
    Padding never matches (bert-score lets a padding position count as cosine 0, which only
    matters when every real cosine of a token is negative). Never touches the network.
    """
    _check_lengths(predictions, references)
    if not os.path.isdir(model_path):
        raise ValueError(f"bertscore model path {model_path!r} is not a local directory")
    import torch  # noqa: PLC0415 (heavy and optional: only the BERTScore path needs it)
    from transformers import AutoModel  # noqa: PLC0415 (likewise)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = bertscore_tokenizer(model_path)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).to(device).eval()
    n_layers = model.config.num_hidden_layers
    layer = n_layers if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise ValueError(f"bertscore layer {layer} is outside 0..{n_layers}")

    texts = sorted(set(predictions) | set(references))
    embedded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        embedded.update(zip(batch, _embed_tokens(batch, tokenizer, model, layer, device)))

    pairs = zip(predictions, references)
    rows = np.array([_greedy_prf(*embedded[p], *embedded[r]) for p, r in pairs])
    return {
        "precision": float(rows[:, 0].mean()),
        "recall": float(rows[:, 1].mean()),
        "f1": float(rows[:, 2].mean()),
        "per_row_f1": rows[:, 2].tolist(),
    }


def bertscore_tokenizer(model_path: str):
    """The model's tokenizer from a local directory; byte-level BPE ones (RoBERTa, Longformer,
    GPT-2) get a prefix space, so the first word is tokenized like the others (as bert-score does).
    """
    import transformers  # noqa: PLC0415 (heavy and optional: only BERTScore needs it)

    byte_level = (
        transformers.GPT2Tokenizer,
        transformers.GPT2TokenizerFast,  # a separate class before transformers 5
        transformers.RobertaTokenizer,
        transformers.RobertaTokenizerFast,
    )
    AutoTokenizer = transformers.AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if isinstance(tokenizer, byte_level) and not tokenizer.add_prefix_space:
        tokenizer = AutoTokenizer.from_pretrained(
            model_path, local_files_only=True, add_prefix_space=True
        )
    return tokenizer


def _embed_tokens(
    batch: list[str], tokenizer, model, layer: int, device: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: L2-normalised hidden states [tokens, d] of its non-padding tokens, and a bool
    [tokens] that is False on special tokens."""
    import torch  # noqa: PLC0415 (heavy and optional: only BERTScore needs it)

    enc = tokenizer(
        [t.strip() for t in batch],
        padding=True,
        truncation=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    special = enc.pop("special_tokens_mask").numpy().astype(bool)
    present = enc["attention_mask"].numpy().astype(bool)
    with torch.no_grad():
        out = model(**{k: v.to(device) for k, v in enc.items()}, output_hidden_states=True)
    # Some encoders (Longformer) pad inputs internally: keep only the positions that were given.
    hidden = out.hidden_states[layer][:, : present.shape[1]].float().cpu().numpy()
    result = []
    for h, here, spec in zip(hidden, present, special):
        h = h[here]
        h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
        result.append((h, ~spec[here]))
    return result


def _greedy_prf(
    pred: np.ndarray, pred_counted: np.ndarray, ref: np.ndarray, ref_counted: np.ndarray
) -> tuple[float, float, float]:
    if not pred_counted.any() or not ref_counted.any():
        return 0.0, 0.0, 0.0
    sim = pred @ ref.T
    precision = float(sim.max(axis=1)[pred_counted].mean())
    recall = float(sim.max(axis=0)[ref_counted].mean())
    return precision, recall, _f1(precision, recall)


def text_f1(
    predictions: Sequence[str],
    references: Sequence[str],
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    bertscore_batch_size: int = 8,
) -> dict[str, Any]:
    """QR, AG, UP, IP: SQuAD token F1 averaged over rows, and BERTScore F1 when a model is given.

    ``score`` is the BERTScore F1 when `bertscore_model` (a local directory) is set, the token F1
    otherwise (``metric`` names which); the token scores are always returned. An output that is
    empty after stripping counts as invalid (its token F1 is 0.0 unless the reference is empty too).
    """
    _check_lengths(predictions, references)
    rows = np.array([token_prf(p, r) for p, r in zip(predictions, references)])
    result: dict[str, Any] = {
        "n": len(references),
        "invalid": sum(not p.strip() for p in predictions),
        "token_precision": float(rows[:, 0].mean()),
        "token_recall": float(rows[:, 1].mean()),
        "token_f1": float(rows[:, 2].mean()),
    }
    if bertscore_model is None:
        result.update(
            metric="token_f1",
            score=result["token_f1"],
            precision=result["token_precision"],
            recall=result["token_recall"],
        )
        return result
    bs = bertscore(predictions, references, bertscore_model, bertscore_layer, bertscore_batch_size)
    result.update(
        metric="bertscore_f1",
        score=bs["f1"],
        precision=bs["precision"],
        recall=bs["recall"],
        bertscore_precision=bs["precision"],
        bertscore_recall=bs["recall"],
        bertscore_f1=bs["f1"],
    )
    return result


# ---------------------------------------------------------------- entry point


def score_task(
    task: Task | str | int,
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    bertscore_batch_size: int = 8,
    table: TaskTable | None = None,
) -> dict[str, Any]:
    """Score one generative task with the metric its table entry names; a macro_f1 task with its own
    option letters (`Task.classes`).

    ``task``: a Task (of any run's table), or a name, short name or id of ``table`` (default: the released 13).
    The BERTScore options only apply to the text tasks (metric "text_f1"). The result also holds
    ``task`` (the task's name) and ``task_metric`` (its metric name).
    """
    if not isinstance(task, Task):
        task = (table or tasks_lib.RELEASED).get(task)
    if task.kind != "generative":
        raise ValueError(f"{task.name} is an embedding task: score it with evaluate.retrieval")
    if task.metric == "recall@1":
        result = recall_at_1(predictions, references)
    elif task.metric == "macro_f1":
        if not task.classes:
            raise ValueError(f"task {task.name} is scored by macro_f1 but names no classes (its option letters)")
        result = macro_f1(predictions, references, task.classes)
    elif task.metric == "yes_f1":
        result = yes_f1(predictions, references)
    elif task.metric == "triple_f1":
        result = triple_f1(predictions, references)
    elif task.metric == "text_f1":
        result = text_f1(
            predictions, references, bertscore_model, bertscore_layer, bertscore_batch_size
        )
    else:
        raise ValueError(f"task {task.name} has unknown metric {task.metric!r}")
    return {"task": task.name, "task_metric": task.metric, **result}
