"""The Mistral decoder in Flax NNX, with TMoLE adapters on the attention projections.

Base weights are `BaseParam` variables (frozen: never trained, never in the optimizer) stacked over
layers, [L, ...], and the layers run under `jax.lax.scan`, so compile time does not grow with depth.
Adapters are `nnx.Param` (trainable). Base weights keep HF's [out, in] layout (`linear` contracts the
input axis), so loading a checkpoint is a straight copy with no transpose (model/hf.py). RoPE uses HF's
rotate-half layout, so HF q/k weights need no permutation.

One call gives causal attention (generation) or bidirectional attention (embedding); a KV-cache path
(`init_cache`, `prefill`, `decode_step`) gives the same logits as the full forward.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from recfound_jax import parallel
from recfound_jax.model import attention
from recfound_jax.model.tmole import TMoLE, TMoLEConfig, expert_delta

REMAT_POLICIES = ("none", "full", "dots_saveable", "save_attention_out")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


class BaseParam(nnx.Variable):
    """A frozen base-model weight: excluded from gradients, the optimizer and training checkpoints."""


@dataclasses.dataclass(frozen=True)
class MistralConfig:
    """Architecture of a Mistral decoder (the fields of HF's MistralConfig that matter)."""

    vocab_size: int = 32768
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    sliding_window: int | None = None
    max_position_embeddings: int = 32768
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each attention projection."""
        d = self.hidden_size
        return {"q": (d, self.q_dim), "k": (d, self.kv_dim), "v": (d, self.kv_dim), "o": (self.q_dim, d)}

    def num_params(self) -> int:
        """Number of base-model parameters."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d + 3 * d * f + 2 * d
        return self.num_layers * per_layer + 2 * v * d + d


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF Mistral's RMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim] (float32) for integer positions [B, T], rotate-half layout."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, heads, hd] by the tables [B, T, hd]."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def remat_wrap(fn: Callable, policy: str) -> Callable:
    """Wrap a layer function in jax.checkpoint according to a named remat policy."""
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
    }
    if policy not in policies:
        raise ValueError(f"remat policy {policy!r} is not one of {REMAT_POLICIES}")
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=False)


def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] times a weight in HF layout [out, in], computed in x's dtype."""
    return jnp.einsum("...i,oi->...o", x, w.astype(x.dtype))


class DecoderStack(nnx.Module):
    """The base weights of all decoder layers, stacked: [L, out, in] (HF layout)."""

    def __init__(self, cfg: MistralConfig, *, param_dtype: Any, rngs: nnx.Rngs):
        n, d, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size

        def normal(*shape):
            return BaseParam((0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(param_dtype))

        self.attn_norm = BaseParam(jnp.ones((n, d), param_dtype))
        self.q = normal(n, cfg.q_dim, d)
        self.k = normal(n, cfg.kv_dim, d)
        self.v = normal(n, cfg.kv_dim, d)
        self.o = normal(n, d, cfg.q_dim)
        self.mlp_norm = BaseParam(jnp.ones((n, d), param_dtype))
        self.gate = normal(n, f, d)
        self.up = normal(n, f, d)
        self.down = normal(n, d, f)

    def arrays(self) -> dict[str, jax.Array]:
        """The stacked weights as a dict of arrays, ready to scan over."""
        names = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
        return {name: getattr(self, name)[...] for name in names}


# attend(q, k, v, cache_slice) -> (attention output, updated cache slice)
AttendFn = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


class Mistral(nnx.Module):
    """Mistral decoder with optional TMoLE adapters on q, k, v, o."""

    def __init__(
        self,
        config: MistralConfig,
        *,
        tmole: TMoLEConfig | None = None,
        param_dtype: Any = jnp.float32,
        dtype: Any = jnp.float32,
        remat: str = "none",
        attention_impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r} is not one of {REMAT_POLICIES}")
        if attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_impl={attention_impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        self.config = config
        self.tmole_config = tmole
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.attention_impl = attention_impl
        d, v = config.hidden_size, config.vocab_size
        self.embed = BaseParam((0.02 * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(param_dtype))
        self.layers = DecoderStack(config, param_dtype=param_dtype, rngs=rngs)
        self.final_norm = BaseParam(jnp.ones((d,), param_dtype))
        self.lm_head = BaseParam((0.02 * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(param_dtype))
        self.adapters = (None if tmole is None
                         else TMoLE(tmole, config.num_layers, config.projection_dims(), rngs=rngs))

    # ----------------------------------------------------------------------------------- public calls
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        task_ids: jax.Array | None = None,
        causal: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, T, vocab] (float32)."""
        hidden = self.hidden_states(input_ids, attention_mask, task_ids=task_ids, causal=causal,
                                    dropout_key=dropout_key)
        return self.logits(hidden)

    def hidden_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        task_ids: jax.Array | None = None,
        causal: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states [B, T, D] in the compute dtype.

        ``causal=False`` gives bidirectional attention (the embedding branch). With attention_impl
        "cudnn" the batch must be right-padded (real tokens first), which every batch here is.
        """
        batch, length = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        cfg = self.config
        if self.attention_impl == "cudnn":
            lengths = (jnp.full((batch,), length, jnp.int32) if attention_mask is None
                       else attention_mask.sum(-1).astype(jnp.int32))

            def attend(q, k, v, _):
                return attention.attend_right_padded(
                    q, k, v, lengths, causal=causal, sliding_window=cfg.sliding_window, implementation="cudnn"), None
        else:
            mask = attention.full_sequence_mask(attention_mask, length, causal=causal,
                                                sliding_window=cfg.sliding_window)

            def attend(q, k, v, _):
                return attention.attend(q, k, v, mask), None

        h, _ = self._run(input_ids, positions, attend, None, task_ids, dropout_key)
        return h

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM-head logits (float32 accumulation) of hidden states [..., D]."""
        return jnp.einsum("...d,vd->...v", hidden, self.lm_head[...].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)

    def init_cache(self, batch: int, length: int) -> dict[str, jax.Array]:
        """An empty KV cache of ``length`` slots: {"k", "v"} [L, B, S, KV heads, head_dim]."""
        cfg = self.config
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}

    def prefill(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        cache: dict[str, jax.Array],
        *,
        task_ids: jax.Array | None = None,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Causal forward over right-padded prompts [B, T] that also fills cache slots [0, T).

        Returns (logits [B, T, V], cache), or with ``logits_at`` [B] only each row's logits at that
        position, [B, V] (a decoder needs just the last prompt position, and the LM head over every
        prompt position would dominate the prefill). Row b's next token goes at sum(attention_mask[b]).
        """
        batch, length = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        mask = attention.full_sequence_mask(attention_mask, length, causal=True,
                                            sliding_window=self.config.sliding_window)

        def attend(q, k, v, layer_cache):
            ck = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(self.dtype), (0, 0, 0, 0))
            cv = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(self.dtype), (0, 0, 0, 0))
            return attention.attend(q, k, v, mask), {"k": ck, "v": cv}

        h, cache = self._run(input_ids, positions, attend, cache, task_ids, None)
        if logits_at is not None:
            h = jnp.take_along_axis(h, logits_at[:, None, None], axis=1)[:, 0]
        return self.logits(h), cache

    def decode_step(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: dict[str, jax.Array],
        *,
        task_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One new token per row: tokens [B] at positions [B] (each row its own). Returns (logits [B, V], cache)."""
        slots = cache["k"].shape[2]
        mask = attention.decode_mask(positions, slots, sliding_window=self.config.sliding_window)

        def write(buf, new, pos):
            return jax.lax.dynamic_update_slice(buf, new, (pos, 0, 0))

        def attend(q, k, v, layer_cache):
            ck = jax.vmap(write)(layer_cache["k"], k.astype(self.dtype), positions)
            cv = jax.vmap(write)(layer_cache["v"], v.astype(self.dtype), positions)
            return attention.attend(q, ck, cv, mask), {"k": ck, "v": cv}

        h, cache = self._run(tokens[:, None], positions[:, None], attend, cache, task_ids, None)
        return self.logits(h[:, 0]), cache

    # ----------------------------------------------------------------------------------- the scan
    def _run(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        attend: AttendFn,
        cache: dict[str, jax.Array] | None,
        task_ids: jax.Array | None,
        dropout_key: jax.Array | None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        cfg = self.config
        h = self.embed[...][input_ids].astype(self.dtype)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        xs: dict[str, Any] = {"base": self.layers.arrays()}
        tmole_cfg = self.tmole_config
        if self.adapters is not None:
            gates = self.adapters.gates(task_ids)
            xs["adapters"] = {t: {"a": bank.a[...], "b": bank.b[...], "gate": gates[t]}
                              for t, bank in self.adapters.banks.items()}
            if dropout_key is not None and tmole_cfg.dropout > 0:
                xs["dropout"] = jax.random.split(dropout_key, cfg.num_layers)
        if cache is not None:
            xs["cache"] = cache

        def layer(h, x):
            # Under a mesh, keep the residual stream split by sample (FSDP): otherwise XLA may shard a
            # GradCache chunk's loop axis instead and have every device compute the whole chunk.
            h, new_cache = _decoder_layer(parallel.constrain(h, "residual"), x, cfg=cfg, tmole_cfg=tmole_cfg,
                                          cos=cos, sin=sin, attend=attend)
            return parallel.constrain(h, "residual"), new_cache

        h, new_cache = jax.lax.scan(remat_wrap(layer, self.remat), h, xs)
        return rms_norm(h, self.final_norm[...], cfg.rms_norm_eps), new_cache


def _decoder_layer(
    h: jax.Array,
    x: dict[str, Any],
    *,
    cfg: MistralConfig,
    tmole_cfg: TMoLEConfig | None,
    cos: jax.Array,
    sin: jax.Array,
    attend: AttendFn,
) -> tuple[jax.Array, Any]:
    """One decoder layer on the residual stream h [B, T, D]; x holds this layer's slices."""
    w = x["base"]
    adapters = x.get("adapters", {})
    dropout_keys = None
    if "dropout" in x:
        dropout_keys = dict(zip(adapters, jax.random.split(x["dropout"], len(adapters))))

    def project(inp: jax.Array, name: str) -> jax.Array:
        out = linear(inp, w[name])
        if name in adapters:
            bank = adapters[name]
            out = out + expert_delta(
                inp, bank["gate"], bank["a"], bank["b"], scale=tmole_cfg.scale, dropout_rate=tmole_cfg.dropout,
                dropout_key=None if dropout_keys is None else dropout_keys[name])
        return out

    batch, length, _ = h.shape
    normed = rms_norm(h, w["attn_norm"], cfg.rms_norm_eps)
    q = project(normed, "q").reshape(batch, length, cfg.num_heads, cfg.head_dim)
    k = project(normed, "k").reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    v = project(normed, "v").reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn, new_cache = attend(q, k, v, x.get("cache"))
    attn = checkpoint_name(attn, "attention_out")
    h = h + project(attn.reshape(batch, length, cfg.q_dim), "o")
    normed = rms_norm(h, w["mlp_norm"], cfg.rms_norm_eps)
    hidden = jax.nn.silu(linear(normed, w["gate"])) * linear(normed, w["up"])
    h = h + linear(hidden, w["down"])
    return h, new_cache
