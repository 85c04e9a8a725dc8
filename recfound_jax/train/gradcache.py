"""GradCache: a contrastive loss over a large batch with the memory of one chunk of it.

The loss couples every query with every passage, so an ordinary backward keeps the activations of
the whole batch. GradCache (Gao et al., 2021) splits the work in three: (1) the representations of
each chunk without gradient; (2) the loss of all of them and its gradient with respect to the
representations; (3) one backward per chunk, recomputing its forward with the same dropout key, fed
with that chunk's slice of the representation gradient. The parameter gradient equals the ordinary
one; only chunk-sized activations are alive at any time.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
QUERY_KEYS = ("query_ids", "query_mask", "query_pool_mask", "task_ids")
PASSAGE_KEYS = ("passage_ids", "passage_mask", "passage_pool_mask")


def chunked(batch: Batch, chunk: int) -> Batch:
    """The embedding batch as [n, chunk, ...] query arrays and [n, passages per query * chunk, ...]
    passage arrays: chunk i holds queries i * chunk ... and their own passages."""
    n = batch["query_ids"].shape[0] // chunk
    group = batch["passage_ids"].shape[0] // batch["query_ids"].shape[0]
    out = {k: batch[k].reshape(n, chunk, *batch[k].shape[1:]) for k in QUERY_KEYS}
    out.update({k: batch[k].reshape(n, group * chunk, *batch[k].shape[1:]) for k in PASSAGE_KEYS})
    return out


def loss_and_grads(reps: Callable[[Any, Batch, jax.Array], tuple[jax.Array, jax.Array]],
                   loss: Callable[[jax.Array, jax.Array], jax.Array],
                   params: Any, batch: Batch, key: jax.Array, chunk: int) -> tuple[jax.Array, Any]:
    """(loss, gradient wrt params) of ``loss(queries [B, D], passages [P, D])`` with the representations
    from ``reps(params, chunk_batch, key)``, computed ``chunk`` queries at a time; ``chunk`` divides B."""
    chunks = chunked(batch, chunk)
    keys = jax.random.split(key, batch["query_ids"].shape[0] // chunk)
    frozen = jax.lax.stop_gradient(params)
    q_reps, p_reps = jax.lax.map(lambda x: reps(frozen, *x), (chunks, keys))
    value, (g_q, g_p) = jax.value_and_grad(loss, argnums=(0, 1))(
        q_reps.reshape(-1, q_reps.shape[-1]), p_reps.reshape(-1, p_reps.shape[-1]))
    g_q, g_p = g_q.reshape(q_reps.shape), g_p.reshape(p_reps.shape)

    def backward(acc, x):
        c, k, gq, gp = x
        _, vjp = jax.vjp(lambda p: reps(p, c, k), params)
        (grads,) = vjp((gq, gp))
        return jax.tree.map(jnp.add, acc, grads), None

    grads, _ = jax.lax.scan(backward, jax.tree.map(jnp.zeros_like, params), (chunks, keys, g_q, g_p))
    return value, grads
