"""Batched greedy decoding with the model's KV cache: one jitted dispatch per batch.

A batch of right-padded prompts is prefilled in one causal forward that fills the cache; then
`Mistral.decode_step` adds one token a step, each row at its own position, inside a
`jax.lax.while_loop` in the same jit; each layer's weights are sliced from the stacked arrays (and the
router's gates computed) once before the loop. A row stops at its first EOS and emits pad from then on; the
loop ends when every row is done or after ``max_new_tokens`` tokens.

Shapes are bucketed so that a whole evaluation compiles a handful of times: prompt lengths are padded
to powers of two (at least 16, capped at the longest allowed prompt) and the batch to ``batch_size``
(or, for fewer prompts, to the next power of two). Prompts are sorted by length before batching, so
each batch pads little, and the outputs come back in the callers' order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from recfound_jax.model.mistral import Mistral

MIN_BUCKET = 16
PROGRESS_MIN_BATCHES = 8  # show a progress bar by default from this many batches on


def bucket_length(n: int, cap: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length of ``n`` tokens: the next power of two >= max(n, minimum), at most ``cap``."""
    if n > cap:
        raise ValueError(f"{n} tokens exceed the longest allowed sequence of {cap}")
    return min(max(minimum, 1 << max(n - 1, 0).bit_length()), cap)


def bucket_batch(n: int, batch_size: int) -> int:
    """Rows of a batch holding ``n`` sequences: ``batch_size``, or the next power of two when n is smaller."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of the sequences, longest first, cut into batches of ``batch_size``."""
    order = np.argsort(-np.asarray(lengths, np.int64), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def show_progress(progress: bool | None, num_batches: int) -> bool:
    """Whether to draw a progress bar: as asked, or by default when there are many batches."""
    return num_batches >= PROGRESS_MIN_BATCHES if progress is None else progress


def greedy_decode(
    model: Mistral,
    ids: jax.Array,
    lengths: jax.Array,
    task_ids: jax.Array,
    active: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
) -> jax.Array:
    """Greedy continuations [B, max_new_tokens] (int32) of right-padded prompts ids [B, T].

    ``lengths`` [B] are the prompts' real lengths (>= 1), ``active`` [B] marks real rows (padding rows
    are done from the start). A row's output holds its tokens up to and including its first EOS, then
    ``pad_id``. Traceable: call it under jit.
    """
    batch, length = ids.shape
    lengths = lengths.astype(jnp.int32)
    mask = jnp.arange(length)[None, :] < lengths[:, None]
    cache = model.init_cache(batch, length + max_new_tokens)
    last, cache = model.prefill(ids, mask, cache, task_ids=task_ids, logits_at=lengths - 1)
    token = jnp.where(active, jnp.argmax(last, axis=-1).astype(jnp.int32), pad_id)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = ~active | (token == eos_id)
    layers = model.layer_slices(task_ids)  # sliced and routed once, read by every step

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, positions, done, cache, out = carry
        logits, cache = model.decode_step(token, positions, cache, layers=layers)
        token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        return i + 1, token, positions + 1, done | (token == eos_id), cache, out

    carry = (jnp.asarray(1, jnp.int32), token, lengths, done, cache, out)
    return jax.lax.while_loop(cond, body, carry)[-1]


def trim_at_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """A row's generated tokens before its first EOS (all of them when it has none)."""
    hits = np.flatnonzero(tokens == eos_id)
    return tokens[: hits[0]] if hits.size else tokens


class GreedyGenerator:
    """Greedy generation for a model, compiled once per (batch rows, prompt bucket, max new tokens).

    The model's current variables are read at every call, so in-place changes to it are seen.
    ``traces`` counts how many times the decoding function was traced (one per compiled shape).
    """

    def __init__(self, model: Mistral, *, eos_id: int, pad_id: int, max_prompt_len: int):
        self.model = model
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.max_prompt_len = int(max_prompt_len)
        self.graphdef = nnx.graphdef(model)
        self.traces = 0
        self._decode = jax.jit(self._decode_fn, static_argnames=("max_new_tokens",))

    def _decode_fn(self, state: Any, ids, lengths, task_ids, active, *, max_new_tokens: int) -> jax.Array:
        self.traces += 1  # runs only while tracing
        model = nnx.merge(self.graphdef, state)
        return greedy_decode(model, ids, lengths, task_ids, active, max_new_tokens=max_new_tokens,
                             eos_id=self.eos_id, pad_id=self.pad_id)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        task_ids: int | Sequence[int],
        *,
        max_new_tokens: int,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Generated tokens [n, max_new_tokens] of token-id prompts, in the prompts' order.

        Each row holds the tokens up to and including the first EOS, then pad. ``task_ids`` is one task
        for every prompt or one per prompt.
        """
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
        n = len(prompts)
        tasks = np.broadcast_to(np.asarray(task_ids, np.int32), (n,))
        lengths = np.asarray([len(p) for p in prompts], np.int64)
        if n and lengths.min() < 1:
            raise ValueError("every prompt needs at least one token")
        out = np.full((n, max_new_tokens), self.pad_id, np.int32)
        batches = length_sorted_batches(lengths, batch_size)
        state = nnx.state(self.model)
        for rows in tqdm(batches, desc="generate", disable=not show_progress(progress, len(batches))):
            length = bucket_length(int(lengths[rows].max()), self.max_prompt_len)
            args = self._batch_arrays(prompts, tasks, rows, bucket_batch(len(rows), batch_size), length)
            tokens = self._decode(state, *args, max_new_tokens=max_new_tokens)
            out[rows] = np.asarray(tokens)[: len(rows)]
        return out

    def _batch_arrays(self, prompts, tasks, rows, batch, length):
        """(ids, lengths, task_ids, active) of one padded batch; padding rows hold one BOS-like token."""
        ids = np.full((batch, length), self.pad_id, np.int32)
        lens = np.ones(batch, np.int32)
        task_ids = np.full(batch, tasks[rows[0]], np.int32)
        active = np.zeros(batch, bool)
        for j, r in enumerate(rows):
            ids[j, : len(prompts[r])] = prompts[r]
            lens[j], task_ids[j], active[j] = len(prompts[r]), tasks[r], True
        ids[len(rows):, 0] = ids[0, 0]
        return ids, lens, task_ids, active
