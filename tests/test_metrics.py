"""Generative-task metrics against hand-computed cases (and an independent BERTScore reference)."""
from __future__ import annotations

import json

import bert_score
import numpy as np
import pytest
import torch
import transformers

from recfound_jax.evaluate import metrics
from recfound_jax.tasks import GENERATIVE_TASKS

# ---------------------------------------------------------------- SR


def test_recall_at_1_hand_case():
    preds = ["A", " B\n", "C", "", "AB", "b"]
    refs = ["A", "B", "D", "A", "A", "B"]
    out = metrics.recall_at_1(preds, refs)
    assert out["score"] == pytest.approx(2 / 6)
    assert (out["n"], out["invalid"], out["correct"]) == (6, 3, 2)


def test_lengths_and_empty_rows_are_rejected():
    with pytest.raises(ValueError, match="predictions"):
        metrics.recall_at_1(["A"], ["A", "B"])
    with pytest.raises(ValueError, match="no rows"):
        metrics.yes_f1([], [])


# ---------------------------------------------------------------- SA, PRP


def test_macro_f1_hand_case_with_invalid_output():
    # A: tp 1, fn 1 -> P 1, R 1/2; B: tp 1, fp 1 -> P 1/2, R 1; C: only an invalid output -> 0.
    out = metrics.macro_f1(["A", "B: good", "B", "X"], ["A", "A", "B", "C: bad"], "ABCDE")
    assert out["score"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)
    assert out["accuracy"] == pytest.approx(0.5)
    assert (out["n"], out["invalid"]) == (4, 1)
    assert sorted(out["per_class"]) == ["A", "B", "C"]
    assert out["per_class"]["B"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                     "support": 1}


def test_macro_f1_averages_over_classes_present_on_either_side():
    # D is predicted but never a label: it enters the average with F1 0; B, C, E are absent from
    # both sides and stay out (averaging them as 0 would give 2/15).
    out = metrics.macro_f1(["A", "D"], ["A", "A"], "ABCDE")
    assert sorted(out["per_class"]) == ["A", "D"]
    assert out["score"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_macro_f1_single_class_and_empty_output():
    assert metrics.macro_f1(["B", "B", " B"], ["B", "B", "B"], "ABC")["score"] == 1.0
    out = metrics.macro_f1(["", "B"], ["B", "B"], "ABC")
    assert out["invalid"] == 1
    assert out["score"] == pytest.approx(2 / 3)  # B: P 1, R 1/2


def test_macro_f1_rejects_reference_outside_classes():
    with pytest.raises(ValueError, match="reference 1"):
        metrics.macro_f1(["A", "A"], ["A", "D"], "ABC")


def test_score_task_uses_each_task_label_set():
    preds, refs = ["A", "D", "C"], ["A", "B", "C"]
    prp = metrics.score_task("Product_Relation_Prediction", preds, refs)
    sa = metrics.score_task("Sentiment_Analysis", preds, refs)
    assert prp["invalid"] == 1 and prp["score"] == pytest.approx(2 / 3)  # A 1, B 0, C 1
    assert sa["invalid"] == 0 and sa["score"] == pytest.approx(0.5)  # A 1, B 0, C 1, D 0


# ---------------------------------------------------------------- PM, AP


def test_yes_f1_hand_case():
    preds = ["Yes", " no ", "no", "yes.", "maybe", "YES"]
    refs = ["yes", "yes", "no", "no", "yes", "no"]
    out = metrics.yes_f1(preds, refs)
    # "yes." against "no" becomes a false positive, "maybe" against "yes" a false negative.
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (1, 2, 2, 1)
    assert out["score"] == pytest.approx(1 / 3)
    assert out["accuracy"] == pytest.approx(2 / 6)
    assert out["invalid"] == 2


def test_yes_f1_without_positive_predictions_is_zero():
    out = metrics.yes_f1(["no", "no"], ["yes", "no"])
    assert (out["score"], out["precision"], out["recall"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="yes/no"):
        metrics.yes_f1(["yes"], ["maybe"])


# ---------------------------------------------------------------- AVE


def _triples(*rows: tuple) -> str:
    return json.dumps([{"attribute": a, "value": v, "source": s} for a, v, s in rows])


def test_triple_matches_rules():
    label = ("color", "dark red", "title")
    assert metrics.triple_matches(("color", "dark red", "title"), label)
    assert metrics.triple_matches(("color", "red", "title"), label)  # pred inside label
    assert metrics.triple_matches(("color", "dark red wine", "product title"), label)  # other way
    assert not metrics.triple_matches(("colour", "dark red", "title"), label)
    assert not metrics.triple_matches(("color", "blue", "title"), label)
    assert not metrics.triple_matches(("color", "", "title"), label)  # no empty wildcard
    assert not metrics.triple_matches(("color", "red", None), label)
    assert metrics.triple_matches(("color", None, "title"), ("color", None, "title"))


def test_triple_f1_hand_case():
    preds = [
        _triples(("color", "dark red", "title"), ("brand", "acme", "title"),
                 ("size", "large", "description")),
        "not json",
        _triples(("color", "blue", "title")),
        _triples(("color", "red", "title and description")),  # hits both labels, counted once
        json.dumps([{"attribute": "x"}]),  # malformed element: predicted, never a hit
        _triples(("color", "", "title")),
        _triples(("color", "red", "title")),
    ]
    refs = [
        _triples(("color", "red", "title"), ("size", "large", "description")),
        _triples(("material", "cotton", "title")),
        "[]",
        _triples(("color", "red", "title"), ("color", "red", "description")),
        json.dumps([{"attribute": "x", "value": 1, "source": "title"}]),
        _triples(("color", "red", "title")),
        "oops",  # unparseable reference: skipped with its prediction
    ]
    out = metrics.triple_f1(preds, refs)
    assert (out["predicted"], out["hits"], out["labels"], out["matched_labels"]) == (7, 3, 7, 4)
    assert out["precision"] == pytest.approx(3 / 7)
    assert out["recall"] == pytest.approx(4 / 7)
    assert out["score"] == pytest.approx(24 / 49)
    assert (out["n"], out["invalid"], out["skipped_references"]) == (6, 1, 1)
    assert out["malformed_triples"] == 1


def test_triple_f1_non_list_json_is_invalid_and_empty_labels():
    out = metrics.triple_f1(['{"attribute": "a"}', "[]"], ["[]", "[]"])
    assert (out["invalid"], out["predicted"], out["labels"], out["score"]) == (1, 0, 0, 0.0)
    via_task = metrics.score_task("Attribute_Value_Extraction", ["[]"], [_triples(("a", "b", "c"))])
    assert via_task["score"] == 0.0 and via_task["recall"] == 0.0


# ---------------------------------------------------------------- QR, AG, UP, IP


def test_token_prf_hand_cases():
    assert metrics.normalize_answer("The Cat, sat!  on a mat.") == "cat sat on mat"
    p, r, f = metrics.token_prf("The cat sat.", "a cat sat on the mat")
    assert (p, r) == (1.0, 0.5) and f == pytest.approx(2 / 3)
    p, r, f = metrics.token_prf("red red blue", "red blue blue")  # bag overlap: red 1, blue 1
    assert (p, r, f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert metrics.token_prf("", "cat") == (0.0, 0.0, 0.0)
    assert metrics.token_prf("the", "a") == (1.0, 1.0, 1.0)  # both normalise to nothing


def test_text_f1_averages_rows():
    preds, refs = ["The cat sat.", "  ", "dog"], ["a cat sat on the mat", "cat", "dog"]
    out = metrics.score_task("Query_Rewriting", preds, refs)
    assert out["metric"] == "token_f1"
    assert out["score"] == pytest.approx((2 / 3 + 0.0 + 1.0) / 3)
    assert out["precision"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert out["recall"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert (out["n"], out["invalid"]) == (3, 1)


def test_score_task_covers_every_generative_task():
    samples = {
        "recall@1": ("A", "A"),
        "macro_f1": ("A", "A"),
        "yes_f1": ("yes", "yes"),
        "triple_f1": (_triples(("a", "b", "c")), _triples(("a", "b", "c"))),
        "text_f1": ("a cat", "a cat"),
    }
    for task in GENERATIVE_TASKS:
        pred, ref = samples[task.metric]
        out = metrics.score_task(task.name, [pred], [ref])
        assert out["score"] == 1.0, task.name
        assert {"score", "n", "invalid"} <= set(out) and out["task"] == task.name
    with pytest.raises(ValueError, match="embedding"):
        metrics.score_task("Emb_user", ["x"], ["x"])


# ---------------------------------------------------------------- BERTScore

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "red",
          "blue", "a", "dog", ".", "##s"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A random 2-layer BERT and its WordPiece tokenizer saved to a local directory."""
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(_VOCAB)},
                                           model_max_length=16)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(_VOCAB), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    transformers.BertModel(config).eval().save_pretrained(path)
    return str(path)


def _reference_bertscore(pairs: list[tuple[str, str]], path: str, layer: int) -> np.ndarray:
    """Per pair (P, R, F1), each text embedded alone (no padding); as bert-score: every token is a
    match target, the means skip [CLS] and [SEP] (the first and last positions)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()

    def embed(text: str) -> np.ndarray:
        enc = tokenizer(text, truncation=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer][0].numpy()
        return h / np.linalg.norm(h, axis=-1, keepdims=True)

    rows = []
    for pred, ref in pairs:
        sim = embed(pred) @ embed(ref).T
        p, r = sim.max(axis=1)[1:-1].mean(), sim.max(axis=0)[1:-1].mean()
        rows.append((p, r, 2 * p * r / (p + r)))
    return np.array(rows)


def test_bertscore_matches_per_sentence_reference(tiny_bert):
    preds = ["the cat sat", "a dog on the mat .", "red " * 30, "blue cats"]
    refs = ["the cat sat", "the cat sat on the mat", "red blue", "a red dog"]
    out = metrics.bertscore(preds, refs, tiny_bert, layer=1, batch_size=3, device="cpu")
    expected = _reference_bertscore(list(zip(preds, refs)), tiny_bert, 1)
    np.testing.assert_allclose(out["per_row_f1"], expected[:, 2], atol=1e-5)
    np.testing.assert_allclose(out["precision"], expected[:, 0].mean(), atol=1e-5)
    np.testing.assert_allclose(out["recall"], expected[:, 1].mean(), atol=1e-5)
    assert out["per_row_f1"][0] == pytest.approx(1.0, abs=1e-5)  # identical texts


@pytest.mark.parametrize("layer", [1, 2])
def test_bertscore_equals_the_bert_score_package(tiny_bert, layer):
    """The released evaluation's own scorer (bert-score, idf and baseline rescaling off, a chosen layer). Not on
    an empty text: bert-score 0.3.13 fails on one under transformers 5 (no build_inputs_with_special_tokens)."""
    preds = ["the cat sat", "a dog on the mat .", "red " * 30, "blue cats"]
    refs = ["the cat sat", "the cat sat on the mat", "red blue", "a red dog"]
    p, r, f = bert_score.score(preds, refs, model_type=tiny_bert, num_layers=layer, batch_size=3, device="cpu",
                               idf=False, rescale_with_baseline=False, lang="en")
    ours = metrics.bertscore(preds, refs, tiny_bert, layer=layer, batch_size=3, device="cpu")
    np.testing.assert_allclose(ours["per_row_f1"], f.numpy(), atol=1e-5)
    np.testing.assert_allclose([ours["precision"], ours["recall"]], [p.mean(), r.mean()], atol=1e-5)


def test_bertscore_through_score_task_and_errors(tiny_bert, tmp_path):
    out = metrics.score_task("Answer_Generation", ["the cat", ""], ["the cat", "dog"],
                             bertscore_model=tiny_bert, bertscore_layer=2)
    assert out["metric"] == "bertscore_f1"
    assert out["score"] == out["bertscore_f1"] == pytest.approx(0.5, abs=1e-5)  # empty text -> 0
    assert out["token_f1"] == pytest.approx(0.5) and out["invalid"] == 1
    with pytest.raises(ValueError, match="layer"):
        metrics.bertscore(["a"], ["a"], tiny_bert, layer=3)
    with pytest.raises(ValueError, match="local directory"):
        metrics.bertscore(["a"], ["a"], str(tmp_path / "missing"))


def test_bertscore_tokenizer_adds_prefix_space_to_byte_level_bpe(tmp_path, tiny_bert):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "Ġ": 5, "c": 6, "a": 7,
             "t": 8, "at": 9, "cat": 10, "Ġc": 11, "Ġcat": 12}
    merges = [("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("c", "at")]
    transformers.RobertaTokenizer(vocab=vocab, merges=merges).save_pretrained(tmp_path)
    plain = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert plain.convert_ids_to_tokens(plain("cat cat")["input_ids"])[1] == "cat"
    tok = metrics.bertscore_tokenizer(str(tmp_path))
    tokens = tok.convert_ids_to_tokens(tok("cat cat")["input_ids"])
    assert tokens == ["<s>", "Ġcat", "Ġcat", "</s>"]
    bert = metrics.bertscore_tokenizer(tiny_bert)  # WordPiece: unchanged
    assert bert.convert_ids_to_tokens(bert("the cat")["input_ids"]) == ["[CLS]", "the", "cat",
                                                                        "[SEP]"]
