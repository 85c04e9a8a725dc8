"""Embedding encoding: mean pooling over the text tokens, and batched, bucketed encoding of token sequences.

Embedding inputs run under bidirectional attention; the pooled vector is the float32 mean of the last
hidden states over the tokens after the instruction prefix, L2-normalised. Training (the InfoNCE branch)
and inference pool with the same function.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from recfound_jax.inference import decoding
from recfound_jax.model.mistral import Mistral


def mean_pool(hidden: jax.Array, pool_mask: jax.Array) -> jax.Array:
    """L2-normalised float32 mean of hidden [B, T, D] over tokens where pool_mask [B, T] is 1."""
    weights = pool_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    pooled = summed / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    norm = jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True))
    return pooled / jnp.maximum(norm, 1e-12)


class EmbeddingEncoder:
    """Pooled, L2-normalised embeddings of tokenized inputs; compiled once per (batch rows, length bucket).

    ``traces`` counts how many times the encoding function was traced.
    """

    def __init__(self, model: Mistral, *, pad_id: int):
        self.model = model
        self.pad_id = int(pad_id)
        self.graphdef = nnx.graphdef(model)
        self.traces = 0
        self._encode = jax.jit(self._encode_fn)

    def _encode_fn(self, state: Any, ids, mask, pool_mask, task_ids) -> jax.Array:
        self.traces += 1  # runs only while tracing
        model = nnx.merge(self.graphdef, state)
        hidden = model.hidden_states(ids, mask, task_ids=task_ids, causal=False)
        return mean_pool(hidden, pool_mask)

    def encode(
        self,
        seqs: Sequence[Sequence[int]],
        prefix_lens: Sequence[int],
        task_id: int,
        *,
        max_len: int,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> np.ndarray:
        """float32 [n, hidden] embeddings of token sequences, pooled over tokens from ``prefix_lens`` on."""
        n = len(seqs)
        out = np.zeros((n, self.model.config.hidden_size), np.float32)
        lengths = np.asarray([len(s) for s in seqs], np.int64)
        batches = decoding.length_sorted_batches(lengths, batch_size)
        state = nnx.state(self.model)
        for rows in tqdm(batches, desc="embed", disable=not decoding.show_progress(progress, len(batches))):
            length = decoding.bucket_length(int(lengths[rows].max()), max_len)
            batch = decoding.bucket_batch(len(rows), batch_size)
            ids = np.full((batch, length), self.pad_id, np.int32)
            mask = np.zeros((batch, length), np.int32)
            pool = np.zeros((batch, length), np.float32)
            mask[len(rows):, 0] = 1  # padding rows attend to one token, so no row is fully masked
            for j, r in enumerate(rows):
                ids[j, : lengths[r]] = seqs[r]
                mask[j, : lengths[r]] = 1
                pool[j, prefix_lens[r]: lengths[r]] = 1.0
            tasks = np.full(batch, task_id, np.int32)
            out[rows] = np.asarray(self._encode(state, ids, mask, pool, tasks))[: len(rows)]
        return out
