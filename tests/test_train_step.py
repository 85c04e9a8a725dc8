"""The joint train step: InfoNCE, GradCache, micro-batching, frozen base, non-finite steps."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recfound_jax.inference import encoding
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.train import cross_entropy, infonce
from recfound_jax.train import step as step_lib
from tests.train_fixtures import step_options

CFG = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8)


def token_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of next-token losses, number of labelled tokens) of logits [B, T, V] at every position; labels
    aligned with inputs, -100 = no loss."""
    sums, counts = cross_entropy.per_sample_cross_entropy(logits[:, :-1], labels)
    return sums.sum(), counts.sum()


def _model(dropout=0.0, seed=0):
    tmole = TMoLEConfig.default(rank=4, dropout=dropout, task_embedding_dim=16)
    model = Mistral(CFG, tmole=tmole, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for bank in model.adapters.banks.values():
        key, sub = jax.random.split(key)
        bank.b.set_value(0.1 * jax.random.normal(sub, bank.b[...].shape))
    return model


def _emb_batch(size=4, lq=6, lp=7, seed=0):
    rng = np.random.default_rng(seed)
    qmask = (np.arange(lq)[None] < rng.integers(3, lq + 1, size)[:, None]).astype(np.int32)
    pmask = (np.arange(lp)[None] < rng.integers(3, lp + 1, 2 * size)[:, None]).astype(np.int32)
    qpool, ppool = qmask.copy(), pmask.copy()
    qpool[:, :2] = 0
    ppool[:, :2] = 0
    return {"query_ids": jnp.asarray(rng.integers(1, 64, (size, lq)) * qmask), "query_mask": jnp.asarray(qmask),
            "query_pool_mask": jnp.asarray(qpool, jnp.float32),
            "passage_ids": jnp.asarray(rng.integers(1, 64, (2 * size, lp)) * pmask),
            "passage_mask": jnp.asarray(pmask), "passage_pool_mask": jnp.asarray(ppool, jnp.float32),
            "negative_mask": jnp.asarray(np.r_[np.ones(size - 1), 0.0], jnp.float32),
            "task_ids": jnp.asarray(rng.integers(0, 3, size), jnp.int32)}


def _gen_batch(size=4, length=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(length)[None] < rng.integers(4, length + 1, size)[:, None]).astype(np.int32)
    ids = rng.integers(1, 64, (size, length)) * mask
    labels = np.where((np.arange(length)[None] >= 3) & (mask == 1), ids, -100)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels),
            "task_ids": jnp.asarray(rng.integers(3, 13, size), jnp.int32)}


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 5))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p = rng.normal(size=(6, 5))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    scores = q @ p.T / 0.02
    expected = np.mean([np.log(np.exp(s - s.max()).sum()) + s.max() - s[2 * i] for i, s in enumerate(scores)])
    np.testing.assert_allclose(infonce.info_nce(jnp.asarray(q), jnp.asarray(p), 0.02), expected, rtol=1e-5)
    valid = np.array([1, 1, 1, 0, 1, 1.0])
    masked = np.mean([np.log(np.exp(s[valid > 0] - s.max()).sum()) + s.max() - s[2 * i]
                      for i, s in enumerate(scores)])
    np.testing.assert_allclose(infonce.info_nce(jnp.asarray(q), jnp.asarray(p), 0.02, jnp.asarray(valid)), masked,
                               rtol=1e-5)


def test_mean_pool_skips_masked_tokens_and_normalises():
    hidden = jnp.asarray(np.arange(24, dtype=np.float32).reshape(1, 4, 6))
    pooled = encoding.mean_pool(hidden, jnp.asarray([[0, 1, 1, 0]], jnp.float32))
    expected = hidden[0, 1:3].mean(0)
    np.testing.assert_allclose(pooled[0], expected / np.linalg.norm(expected), rtol=1e-6)


def test_token_cross_entropy_is_next_token_on_labels_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 4, 5)).astype(np.float32)
    labels = np.array([[-100, 3, -100, 1]])
    total, count = token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(total, -(logp[0, 0, 3] + logp[0, 2, 1]), rtol=1e-5)
    assert count == 2


@pytest.mark.parametrize("chunk", [1, 2])
def test_gradcache_equals_unchunked(chunk):
    parts = step_lib.ModelParts.of(_model())
    batch = _emb_batch()
    key = jax.random.key(0)
    def loss_and_grads(options):  # jitted as the trainer runs it (op by op, the chunk loop took minutes)
        return jax.jit(lambda params: step_lib.embedding_loss_and_grads(parts, params, parts.base, batch, key,
                                                                        options))(parts.params)

    direct, cached = loss_and_grads(step_options()), loss_and_grads(step_options(gradcache_chunk=chunk))
    np.testing.assert_allclose(cached[0], direct[0], rtol=1e-5)
    chex.assert_trees_all_close(cached[1], direct[1], atol=1e-4, rtol=1e-4)


def test_generative_micro_batches_equal_whole_batch():
    parts = step_lib.ModelParts.of(_model())
    batch = _gen_batch()
    key = jax.random.key(0)
    whole = step_lib.generative_loss_and_grads(parts, parts.params, parts.base, batch, key, step_options())
    micro = step_lib.generative_loss_and_grads(parts, parts.params, parts.base, batch, key,
                                               step_options(generative_micro_batch=1))
    np.testing.assert_allclose(micro[0], whole[0], rtol=1e-5)
    chex.assert_trees_all_close(micro[1], whole[1], atol=1e-6, rtol=1e-4)


def test_step_trains_adapters_and_never_the_base():
    model = _model(dropout=0.1)
    parts = step_lib.ModelParts.of(model)
    leaves = jax.tree.leaves(parts.base, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert not any(isinstance(v, nnx.Param) for v in leaves)
    optimizer = step_lib.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_ratio=0.0, weight_decay=0.0,
                                        grad_clip=1.0)
    state = step_lib.init_train_state(parts.params, optimizer)
    base_before = jax.tree.map(np.array, parts.base)
    params_before = jax.tree.map(np.array, parts.params)
    train_step = jax.jit(step_lib.make_train_step(parts, optimizer, step_options(gradcache_chunk=2)),
                         donate_argnums=0)
    losses_seen = []
    for _ in range(5):
        state, metrics = train_step(state, parts.base, _emb_batch(), _gen_batch(), jax.random.key(1))
        losses_seen.append(float(metrics["loss"]))
        assert int(metrics["finite"]) == 1
    chex.assert_trees_all_equal(jax.tree.map(np.array, parts.base), base_before)
    params_after = jax.tree.map(np.array, state["params"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params_before, params_after)
    assert all(jax.tree.leaves(changed))
    assert losses_seen[-1] < losses_seen[0]
    assert int(state["step"]) == 5


def test_non_finite_step_is_skipped():
    parts = step_lib.ModelParts.of(_model())
    optimizer = step_lib.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_ratio=0.0, weight_decay=0.0,
                                        grad_clip=1.0)
    state = step_lib.init_train_state(parts.params, optimizer)
    before = jax.tree.map(np.array, state)
    poisoned = jax.tree.map(lambda x: x * jnp.nan, parts.base)
    train_step = jax.jit(step_lib.make_train_step(parts, optimizer, step_options()))
    new_state, metrics = train_step(state, poisoned, _emb_batch(), _gen_batch(), jax.random.key(0))
    assert int(metrics["finite"]) == 0
    chex.assert_trees_all_equal(jax.tree.map(np.array, new_state["params"]), before["params"])
    chex.assert_trees_all_equal(jax.tree.map(np.array, new_state["opt_state"]), before["opt_state"])


def test_probe_losses_per_task():
    parts = step_lib.ModelParts.of(_model())
    emb = _emb_batch(6)
    emb["task_ids"] = jnp.asarray([0, 0, 1, 1, 2, 2], jnp.int32)
    emb["task_index"] = emb["task_ids"]
    gen = _gen_batch(4)
    gen["task_index"] = jnp.asarray([0, 0, 1, 1], jnp.int32)
    probe = jax.jit(step_lib.make_probe_fn(parts, 3, 10, 0.02))
    emb_losses, gen_losses = probe(parts.params, parts.base, emb, gen)
    chex.assert_shape(emb_losses, (3,))
    chex.assert_shape(gen_losses, (10,))
    assert np.all(np.isfinite(emb_losses)) and np.all(np.asarray(gen_losses[2:]) == 0)
    # Task 1's generative probe loss is the token mean of its two samples.
    model = parts.merge()
    logits = model(gen["input_ids"][2:], gen["attention_mask"][2:], task_ids=gen["task_ids"][2:])
    total, count = token_cross_entropy(logits, gen["labels"][2:])
    np.testing.assert_allclose(gen_losses[1], total / count, rtol=1e-5)
    # In chunks (the 7B recipe's probe does not fit in one forward): the same losses.
    chunked = jax.jit(step_lib.make_probe_fn(parts, 3, 10, 0.02, embedding_chunk=2, generative_chunk=2))
    chex.assert_trees_all_close(chunked(parts.params, parts.base, emb, gen), (emb_losses, gen_losses), rtol=1e-5,
                                atol=1e-6)


def test_answer_budget_cross_entropy_equals_all_positions():
    model = _model()
    batch = _gen_batch()
    full = cross_entropy.answer_cross_entropy(model, batch, budget=0)
    longest = int((np.asarray(batch["labels"])[:, 1:] != -100).sum(1).max())
    budgeted = cross_entropy.answer_cross_entropy(model, batch, budget=longest)
    chex.assert_trees_all_close(budgeted, full, rtol=1e-6)
    clipped = cross_entropy.answer_cross_entropy(model, batch, budget=longest - 1)
    assert float(clipped[1].sum()) < float(full[1].sum())  # a budget below the longest answer drops labels
