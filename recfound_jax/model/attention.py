"""Attention masks and the attention call: causal or bidirectional, padding, sliding window, decode."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def full_sequence_mask(
    attention_mask: jax.Array | None, length: int, *, causal: bool, sliding_window: int | None
) -> jax.Array:
    """Boolean mask [B or 1, 1, T, T]: query i may attend key j.

    Causal: j <= i and, with a sliding window w, i - j < w (HF Mistral's rule). Bidirectional: every
    real key, within |i - j| < w when a window is set. Pad keys (attention_mask == 0) are never attended.
    """
    q_pos = jnp.arange(length)[:, None]
    k_pos = jnp.arange(length)[None, :]
    allowed = jnp.ones((length, length), bool)
    if causal:
        allowed &= k_pos <= q_pos
    if sliding_window is not None:
        allowed &= jnp.abs(q_pos - k_pos) < sliding_window
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.astype(bool)[:, None, None, :]
    return allowed


def decode_mask(positions: jax.Array, cache_length: int, *, sliding_window: int | None) -> jax.Array:
    """Boolean mask [B, 1, 1, S] for one new token per row at ``positions`` [B] over a KV cache of S slots."""
    k_pos = jnp.arange(cache_length)[None, :]
    pos = positions[:, None]
    allowed = k_pos <= pos
    if sliding_window is not None:
        allowed &= pos - k_pos < sliding_window
    return allowed[:, None, None, :]


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    implementation: str | None = None,
) -> jax.Array:
    """Grouped-query attention: q [B, T, H, hd], k/v [B, S, KV, hd], mask [B|1, 1, T, S] -> [B, T, H, hd]."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def attend_cache(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array) -> jax.Array:
    """One query per row over a KV cache: q [B, 1, H, hd], caches [B, KV, S, hd], mask [B, 1, 1, S] -> [B, 1, H, hd].

    Written as two batched contractions over the cache's own layout (batch and KV head leading, slots
    then head_dim), so nothing is transposed or copied: a decode step reads the cache once. Query head h
    uses KV head h // (H / KV), as HF's repeat_kv. Scores and softmax in float32.
    """
    batch, _, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bkgh,bksh->bkgs", grouped, k_cache, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores / jnp.sqrt(jnp.float32(head_dim)), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkgs,bksh->bkgh", weights, v_cache)
    return out.reshape(batch, 1, heads, head_dim)


def attend_right_padded(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array,
    *,
    causal: bool,
    sliding_window: int | None,
    implementation: str | None = None,
) -> jax.Array:
    """Attention for right-padded batches from structured arguments (lengths, causal flag, window).

    This is the form cuDNN's fused kernel takes; it equals `attend` with `full_sequence_mask` on every
    real query row when each row's real tokens come first.
    """
    window = None
    if sliding_window is not None:
        window = (sliding_window - 1, 0 if causal else sliding_window - 1)
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        local_window_size=window, implementation=implementation)
