"""The demo base's instruction stage: answer slots from the GritLM labels, the answer-only loss, learning."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from recfound_jax import instruct
from recfound_jax import pretrain as pt
from recfound_jax.data.formatting import IGNORE_INDEX, format_generative
from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig
from recfound_jax.tokenizer import Tokenizer

PAIRS = [("Is the sky blue? Output only yes or no.", "yes"),
         ("Pick one.\nA: red\nB: blue", "B"),
         ("Describe the product.", "A red steel kettle that keeps water hot."),
         ("Is grass red? Output only yes or no.", "no")]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def tiny_model(seed: int = 0) -> Mistral:
    cfg = MistralConfig(vocab_size=Tokenizer().vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64)
    return Mistral(cfg, rngs=nnx.Rngs(seed))


def section(**overrides) -> ConfigDict:
    s = ConfigDict(dict(rows={"AP": 4}, steps=60, batch_size=4, learning_rate=1e-2, warmup_steps=1,
                        decay="cosine", end_lr_fraction=0.1, weight_decay=0.0, grad_clip=1.0, seed=0, log_every=20))
    s.update(overrides)
    return s


def test_answer_slots_are_the_formatters_labels(tokenizer):
    rows = instruct.encode_rows(tokenizer, PAIRS)  # sized to fit every pair
    length, slots = rows.ids.shape[1], rows.targets.shape[1]
    assert length % 8 == 0 and length - 8 < max(len(format_generative(tokenizer, [p])[0]) for p in PAIRS) <= length
    chex.assert_shape([rows.ids, rows.mask], (len(PAIRS), length))
    chex.assert_shape([rows.positions, rows.targets, rows.weights], (len(PAIRS), slots))
    for i, pair in enumerate(PAIRS):
        ids, labels = format_generative(tokenizer, [pair])
        answer = [label for label in labels if label != IGNORE_INDEX]
        assert answer[-1] == tokenizer.eos_id
        n = len(answer)
        assert rows.weights[i].sum() == n and slots >= n
        np.testing.assert_array_equal(rows.targets[i, :n], answer)
        np.testing.assert_array_equal(rows.ids[i, rows.positions[i, :n] + 1], answer)  # p predicts p + 1
        np.testing.assert_array_equal(rows.ids[i, :len(ids)], ids)
        assert rows.mask[i].sum() == len(ids)
    assert slots == max(len([x for x in format_generative(tokenizer, [p])[1] if x != IGNORE_INDEX]) for p in PAIRS)


def test_a_row_that_does_not_fit_is_refused_by_number(tokenizer):
    fitted = instruct.encode_rows(tokenizer, PAIRS)
    length, slots = fitted.ids.shape[1], fitted.targets.shape[1]
    with pytest.raises(ValueError, match="row 2 has"):
        instruct.encode_rows(tokenizer, PAIRS, length, slots - 1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_answer_loss_equals_the_full_logits_cross_entropy_on_the_labels(tokenizer):
    model = tiny_model()
    rows = instruct.encode_rows(tokenizer, PAIRS)
    ids, mask, positions, targets, weights = rows.device()
    loss = instruct.answer_loss(model, ids, mask, positions, targets, weights)
    # reference: every position's logits, the loss read at the formatter's labels, in numpy
    log_probs = _log_softmax(np.asarray(model(ids, mask), np.float64))
    picked = []
    for i, pair in enumerate(PAIRS):
        _, labels = format_generative(tokenizer, [pair])
        picked += [log_probs[i, p - 1, label] for p, label in enumerate(labels) if label != IGNORE_INDEX]
    chex.assert_trees_all_close(loss, jnp.float32(-np.mean(picked)), rtol=1e-5)


def test_the_stage_learns_its_rows_and_reports_held_out_scores(tokenizer):
    model = tiny_model()
    rows = instruct.encode_rows(tokenizer, PAIRS)
    before = jax.tree.map(np.asarray, nnx.state(model, BaseParam))
    s = section()
    result = pt.instruct_train(model, s, rows, {"AP": rows}, progress=False)
    assert [entry["step"] for entry in result["log"]] == [1, 20, 40, 60]
    assert result["log"][-1]["loss"] < result["log"][0]["loss"] - 1.0, result["log"]
    b, a = result["valid_before"]["AP"], result["valid_after"]["AP"]
    assert a["loss"] < b["loss"] - 1.0
    assert a["first_token_accuracy"] == 1.0 and 0.0 <= b["first_token_accuracy"] < 1.0
    after = nnx.state(model, BaseParam)
    changed = jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(np.asarray(y) != x)), before, after))
    assert all(changed), "every base weight is trained in place"


def test_held_out_scores_do_not_depend_on_the_batch_size(tokenizer):
    model = tiny_model(seed=3)
    rows = instruct.encode_rows(tokenizer, PAIRS)
    graphdef, params, rest = nnx.split(model, BaseParam, ...)
    eval_fn = instruct.make_eval_fn(graphdef, rest)
    whole = instruct.held_out(eval_fn, params, rows, batch_size=4)
    chunks = instruct.held_out(eval_fn, params, rows, batch_size=3)  # a padded last batch
    chex.assert_trees_all_close(whole, chunks, rtol=1e-5)
    slot_losses, _ = eval_fn(params, *rows.device()[:4])
    expected = float((np.asarray(slot_losses) * rows.weights).sum() / rows.weights.sum())
    assert whole["loss"] == pytest.approx(expected, rel=1e-5)


def test_batches_visit_every_row_once_an_epoch(tokenizer):
    pairs = [(f"Question {i}?", "yes") for i in range(10)]
    rows = instruct.encode_rows(tokenizer, pairs)
    stream = instruct.batches(rows, batch_size=3, seed=0)
    firsts = [np.asarray(next(stream)[0]) for _ in range(6)]  # two epochs of 3 full batches (one row left out each)
    for epoch in (firsts[:3], firsts[3:]):
        seen = [tuple(r) for batch in epoch for r in batch]
        assert len(set(seen)) == 9 and set(seen) <= {tuple(r) for r in rows.ids}
