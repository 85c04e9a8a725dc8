"""The demo base's instruction stage: answer slots from the GritLM labels, the answer-only loss, learning."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from recfound_jax.data.formatting import IGNORE_INDEX, format_generative
from recfound_jax.demo import instruct
from recfound_jax.demo import pretrain as pt
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
    ids, mask, index, targets, weights = rows.batch(np.arange(len(PAIRS))).device()
    loss = instruct.answer_loss(model, ids, mask, index, targets, weights)
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
    result = pt.instruct_train(model, s, {"AP": rows}, {"AP": rows}, progress=False)
    assert [entry["step"] for entry in result["log"]] == [1, 20, 40, 60]
    assert result["log"][-1]["loss"] < result["log"][0]["loss"] - 1.0, result["log"]
    b, a = result["valid_before"]["AP"], result["valid_after"]["AP"]
    assert a["loss"] < b["loss"] - 1.0
    assert a["first_token_accuracy"] == 1.0 and 0.0 <= b["first_token_accuracy"] < 1.0
    assert a["answer_accuracy"] == 1.0 and b["answer_accuracy"] <= b["first_token_accuracy"]
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
    slot_losses, argmax = eval_fn(params, *rows.batch(np.arange(len(PAIRS))).device()[:4])
    expected = float((np.asarray(slot_losses) * rows.weights.reshape(-1)).sum() / rows.weights.sum())
    assert whole["loss"] == pytest.approx(expected, rel=1e-5)
    hits = np.asarray(argmax).reshape(rows.targets.shape) == rows.targets
    assert whole["first_token_accuracy"] == hits[:, 0].mean()
    assert whole["answer_accuracy"] == np.mean([hits[i, :int(w.sum())].all() for i, w in enumerate(rows.weights)])


def test_a_mixed_batch_flattens_each_tasks_slots_and_its_loss_is_the_per_token_mean(tokenizer):
    short = instruct.encode_rows(tokenizer, [PAIRS[0], PAIRS[3]])  # 2 slots: one word and EOS
    long = instruct.encode_rows(tokenizer, [PAIRS[2]], length=short.ids.shape[1] + 8)  # a sentence's slots
    parts = [short.batch(np.array([1, 0])), long.batch(np.array([0]))]
    for part, rows in zip(parts, (short, long)):
        chex.assert_shape([part.index, part.targets, part.weights], (len(part.ids) * rows.targets.shape[1],))
        chex.assert_shape([part.ids, part.mask], (len(part.ids), rows.ids.shape[1]))
        live = part.weights > 0
        np.testing.assert_array_equal(part.ids.reshape(-1)[part.index[live] + 1], part.targets[live])
    model = tiny_model(seed=1)
    loss = instruct.parts_answer_loss(model, [part.device() for part in parts])
    picked = []
    for part, pairs in zip(parts, ([PAIRS[3], PAIRS[0]], [PAIRS[2]])):
        log_probs = _log_softmax(np.asarray(model(jnp.asarray(part.ids), jnp.asarray(part.mask)), np.float64))
        for i, pair in enumerate(pairs):
            _, labels = format_generative(tokenizer, [pair])
            picked += [log_probs[i, p - 1, label] for p, label in enumerate(labels) if label != IGNORE_INDEX]
    chex.assert_trees_all_close(loss, jnp.float32(-np.mean(picked)), rtol=1e-5)


@pytest.mark.parametrize("sizes, batch_size, expected", [
    ({"AP": 3000, "PRP": 12000, "SA": 1500, "AVE": 6000}, 32, {"AP": 4, "PRP": 17, "SA": 2, "AVE": 9}),
    ({"AP": 10, "PRP": 10}, 5, {"AP": 3, "PRP": 2}),  # a tie of remainders goes to the first task
    ({"AP": 1000, "PRP": 1000, "SA": 1}, 4, {"AP": 2, "PRP": 1, "SA": 1}),  # at least one row a task
    ({"AP": 5}, 4, {"AP": 4}),
])
def test_batch_shares_split_a_batch_by_the_row_counts(sizes, batch_size, expected):
    assert instruct.batch_shares(sizes, batch_size) == expected


def test_batch_shares_refuse_a_batch_smaller_than_the_task_count():
    with pytest.raises(ValueError, match="a batch of 2 rows cannot hold one row of each of 3 tasks"):
        instruct.batch_shares({"AP": 5, "PRP": 5, "SA": 5}, 2)


def test_batches_hold_each_tasks_share_and_visit_its_rows_once_a_pass(tokenizer):
    yes_no = instruct.encode_rows(tokenizer, [(f"Question {i}?", "yes") for i in range(6)])
    letters = instruct.encode_rows(tokenizer, [(f"Pick {i}.\nA: x\nB: y", "B") for i in range(3)])
    stream = instruct.batches({"AP": yes_no, "PRP": letters}, batch_size=3, seed=0)  # shares: AP 2, PRP 1
    drawn = [[[np.asarray(a) for a in part] for part in next(stream)] for _ in range(6)]  # 2 passes of AP, 4 of PRP
    assert len({tuple(a.shape for part in step for a in part) for step in drawn}) == 1, "one shape every step"
    assert [len(part[0]) for part in drawn[0]] == [2, 1]
    ap_rows = [tuple(step[0][0][i]) for step in drawn for i in (0, 1)]
    prp_rows = [tuple(step[1][0][0]) for step in drawn]
    for first_pass in (ap_rows[:6], ap_rows[6:]):
        assert set(first_pass) == {tuple(r) for r in yes_no.ids}
    for first_pass in (prp_rows[:3], prp_rows[3:]):
        assert set(first_pass) == {tuple(r) for r in letters.ids}
