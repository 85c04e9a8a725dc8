"""The two branch losses: InfoNCE over pooled embeddings and token-mean cross-entropy on answers."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100  # label of tokens that carry no loss


def info_nce(queries: jax.Array, passages: jax.Array, temperature: float,
             passage_valid: jax.Array | None = None) -> jax.Array:
    """Mean InfoNCE of queries [B, D] against every passage [P, D]; query i's positive is passage i * P // B.

    With P = 2B (one positive and one hard negative per query, interleaved), every other query's
    passages are in-batch negatives; under jit over a sharded global batch they include other devices'.
    ``passage_valid`` [P] drops passages from every row's softmax (a reused positive standing in for a
    missing hard negative would otherwise only add log 2).
    """
    return jnp.mean(info_nce_per_query(queries, passages, temperature, passage_valid))


def info_nce_per_query(queries: jax.Array, passages: jax.Array, temperature: float,
                       allowed: jax.Array | None = None) -> jax.Array:
    """InfoNCE of each query [B] (as `info_nce`); ``allowed`` [P] or [B, P] keeps passages in a row's softmax."""
    group = passages.shape[0] // queries.shape[0]
    scores = (queries @ passages.T) / temperature
    if allowed is not None:
        scores = jnp.where(allowed > 0, scores, -jnp.inf)
    positives = jnp.arange(queries.shape[0]) * group
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.take_along_axis(log_probs, positives[:, None], axis=-1)[:, 0]


def per_sample_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of next-token losses [B], labelled-token count [B]) of the logits [B, T - 1, V] of
    every position but the last; labels [B, T] aligned with inputs. (Slicing the hidden states before the
    LM head, not the logits after it, keeps a full-size float32 slice and its padded gradient away.)"""
    targets = labels[:, 1:]
    return target_cross_entropy(logits, targets, targets != IGNORE)


def target_cross_entropy(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample (sum of losses, count) of logits [B, K, V] against targets [B, K] where valid."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(valid, log_z - picked, 0.0)
    return losses.sum(-1), valid.sum(-1).astype(jnp.float32)


def answer_positions(labels: jax.Array, budget: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first ``budget`` labelled next-token positions of each row: (positions, targets, valid), each [B, K].

    Only these positions need LM-head logits: answers are short next to prompts, and the full-vocabulary
    projection of every position dominates a step. With ``budget`` at least the longest answer of the
    data (the trainer computes it), no label is ever dropped.
    """
    targets = labels[:, 1:]
    valid = targets != IGNORE
    budget = min(budget, targets.shape[1])
    positions = jnp.argsort(~valid, axis=1, stable=True)[:, :budget]
    return (positions, jnp.take_along_axis(targets, positions, axis=1),
            jnp.take_along_axis(valid, positions, axis=1))
