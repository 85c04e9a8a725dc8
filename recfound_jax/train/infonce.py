"""InfoNCE: the embedding branch's contrastive loss over pooled, L2-normalised query and passage vectors."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
