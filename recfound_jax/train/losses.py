"""The two branch losses: InfoNCE over pooled embeddings and token-mean cross-entropy on answers."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100  # label of tokens that carry no loss


def mean_pool(hidden: jax.Array, pool_mask: jax.Array) -> jax.Array:
    """L2-normalised float32 mean of hidden [B, T, D] over tokens where pool_mask [B, T] is 1."""
    weights = pool_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    pooled = summed / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    norm = jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True))
    return pooled / jnp.maximum(norm, 1e-12)


def info_nce(queries: jax.Array, passages: jax.Array, temperature: float,
             passage_valid: jax.Array | None = None) -> jax.Array:
    """Mean InfoNCE of queries [B, D] against every passage [P, D]; query i's positive is passage i * P // B.

    With P = 2B (one positive and one hard negative per query, interleaved), every other query's
    passages are in-batch negatives; under jit over a sharded global batch they include other devices'.
    ``passage_valid`` [P] drops passages from every row's softmax (a reused positive standing in for a
    missing hard negative would otherwise only add log 2).
    """
    group = passages.shape[0] // queries.shape[0]
    scores = (queries @ passages.T) / temperature
    if passage_valid is not None:
        scores = jnp.where(passage_valid[None, :] > 0, scores, -jnp.inf)
    positives = jnp.arange(queries.shape[0]) * group
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, positives[:, None], axis=-1))


def token_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of next-token losses, number of labelled tokens); labels aligned with inputs, IGNORE = no loss."""
    targets = labels[:, 1:]
    logits = logits[:, :-1].astype(jnp.float32)
    valid = targets != IGNORE
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(valid, log_z - picked, 0.0)
    return losses.sum(), valid.sum().astype(jnp.float32)


def per_sample_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of token losses [B], labelled-token count [B])."""
    targets = labels[:, 1:]
    logits = logits[:, :-1].astype(jnp.float32)
    valid = targets != IGNORE
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(valid, log_z - picked, 0.0)
    return losses.sum(-1), valid.sum(-1).astype(jnp.float32)
