"""The Mistral decoder in Flax NNX, with TMoLE adapters on the attention projections.

Base weights are `BaseParam` variables (frozen: never trained, never in the optimizer) stacked over
layers, [L, ...], and the layers run under `jax.lax.scan`, so compile time does not grow with depth.
Adapters are `nnx.Param` (trainable). Base weights keep HF's [out, in] layout (`linear` contracts the
input axis), so loading a checkpoint is a straight copy with no transpose (model/hf.py). RoPE uses HF's
rotate-half layout, so HF q/k weights need no permutation.

One call gives causal attention (generation) or bidirectional attention (embedding); a KV-cache path
(`init_cache`, `prefill`, `decode_step`) gives the same logits as the full forward. The prefill scans the
layers like training does; a decode step (one token a row, so all weight reads) runs them unrolled over
per-layer weight slices made once per decoding loop and per-layer caches updated in place, where a scan
would copy each layer's weights and cache slice every step (docs/benchmarks.md).

The same decoder runs the Llama and Qwen2 families: their differences are config fields read here
(q/k/v biases, a tied LM head, llama3 RoPE scaling, sliding-window attention on the upper layers only);
each family's config.json mapping lives in convert/hf_<family>.py.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from recfound_jax import parallel
from recfound_jax.config import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES
from recfound_jax.model import attention
from recfound_jax.model.tmole import TMoLE, TMoLEConfig, expert_deltas


class BaseParam(nnx.Variable):
    """A frozen base-model weight: excluded from gradients, the optimizer and training checkpoints."""


FAMILIES = ("mistral", "llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """HF's "llama3" RoPE scaling (Llama 3.1): low frequencies divided by ``factor``, a smooth blend between."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class MistralConfig:
    """Architecture of a Mistral-style decoder (the fields of HF's MistralConfig that matter).

    ``family`` names the HF architecture a checkpoint is written as (convert/hf.py); the other fields
    are what the families differ in. ``qkv_bias``: q, k and v projections carry a bias (Qwen2).
    ``tie_word_embeddings``: the LM head is the embedding matrix. ``rope_scaling``: None for plain RoPE.
    ``full_attention_layers``: with a ``sliding_window``, the first this many layers attend without it
    (Qwen2's max_window_layers); 0 windows every layer (Mistral).
    """

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
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    family: str = "mistral"
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    rope_scaling: Llama3RopeScaling | None = None
    full_attention_layers: int = 0

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not one of {FAMILIES}")
        if not 0 <= self.full_attention_layers < self.num_layers:
            raise ValueError(f"full_attention_layers={self.full_attention_layers} must be in [0, {self.num_layers})")
        if self.full_attention_layers and self.sliding_window is None:
            raise ValueError("full_attention_layers > 0 needs a sliding_window")

    @property
    def mixed_windows(self) -> bool:
        """Whether some layers use the sliding window and others do not (each layer then picks its mask)."""
        return self.sliding_window is not None and self.full_attention_layers > 0

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
        if self.qkv_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        return self.num_layers * per_layer + (1 if self.tie_word_embeddings else 2) * v * d + d


@jax.custom_vjp
def head_logits(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """Float32 logits [..., V] of hidden [..., D] against weight [V, D] (both in the model's dtype).

    Its gradient runs in the model's dtype: autodiff would contract the float32 cotangent with the bf16
    weight as a float32 GEMM over the whole vocabulary, the step's largest matmul after the layers.
    """
    return jnp.einsum("...d,vd->...v", hidden, weight, preferred_element_type=jnp.float32)


def _head_logits_fwd(hidden: jax.Array, weight: jax.Array):
    return head_logits(hidden, weight), (hidden, weight)


def _head_logits_bwd(residuals, cotangent: jax.Array):
    hidden, weight = residuals
    cotangent = cotangent.astype(hidden.dtype)
    d_hidden = jnp.einsum("...v,vd->...d", cotangent, weight, preferred_element_type=jnp.float32)
    d_weight = jnp.einsum("...v,...d->vd", cotangent, hidden, preferred_element_type=jnp.float32)
    return d_hidden.astype(hidden.dtype), d_weight.astype(weight.dtype)


head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF Mistral's RMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None) -> jax.Array:
    """The inverse frequencies [head_dim / 2] (float32) of RoPE, llama3-scaled when ``scaling`` is set."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    # transformers' _compute_llama3_parameters: wavelengths above original / low_freq_factor are divided
    # by factor, those below original / high_freq_factor kept, the ones between blended smoothly.
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim] (float32) for integer positions [B, T], rotate-half layout."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)
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


def layer_mask(windowed_mask: jax.Array, full_mask: jax.Array | None, windowed: jax.Array | None) -> jax.Array:
    """A layer's attention mask: ``windowed_mask`` unless the model mixes windowed and full layers
    (``full_mask`` set), where the layer's flag ``windowed`` picks one of the two."""
    if full_mask is None:
        return windowed_mask
    return jnp.where(windowed, windowed_mask, full_mask)


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
        self.bias_names = BIAS_NAMES if cfg.qkv_bias else ()
        for name in self.bias_names:  # random, so that a model built from scratch exercises them; loading replaces them
            setattr(self, name, normal(n, cfg.q_dim if name == "q_bias" else cfg.kv_dim))

    def arrays(self) -> dict[str, jax.Array]:
        """The stacked weights as a dict of arrays, ready to scan over."""
        names = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down", *self.bias_names)
        return {name: getattr(self, name)[...] for name in names}


# The q/k/v projection biases of the families that have them (Qwen2), base weights [L, out].
BIAS_NAMES = ("q_bias", "k_bias", "v_bias")
# attend(q, k, v, windowed) -> (attention output, anything the layer should return: new cache entries or
# None). ``windowed`` is the layer's sliding-window flag where the model mixes windowed and full layers,
# else None.
AttendFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, Any]]
# One {"k", "v"} [B, KV heads, slots, head_dim] per layer.
KVCache = tuple[dict[str, jax.Array], ...]


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
        scan_layers: bool = True,
        rngs: nnx.Rngs,
    ):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r} is not one of {REMAT_POLICIES}")
        if attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_impl={attention_impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if attention_impl == "cudnn" and config.mixed_windows:
            raise ValueError("attention_impl='cudnn' takes one sliding window for every layer; this config windows "
                             f"only layers >= full_attention_layers={config.full_attention_layers}: use 'xla'")
        self.config = config
        self.tmole_config = tmole
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.attention_impl = attention_impl
        self.scan_layers = scan_layers  # False: a Python loop over layers (one compiled copy per layer)
        d, v = config.hidden_size, config.vocab_size
        self.embed = BaseParam((0.02 * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(param_dtype))
        self.layers = DecoderStack(config, param_dtype=param_dtype, rngs=rngs)
        self.final_norm = BaseParam(jnp.ones((d,), param_dtype))
        self.lm_head = (None if config.tie_word_embeddings else
                        BaseParam((0.02 * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(param_dtype)))
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

            def attend(q, k, v, windowed):
                return attention.attend_right_padded(
                    q, k, v, lengths, causal=causal, sliding_window=cfg.sliding_window, implementation="cudnn"), None
        else:
            mask = attention.full_sequence_mask(attention_mask, length, causal=causal,
                                                sliding_window=cfg.sliding_window)
            full = (attention.full_sequence_mask(attention_mask, length, causal=causal, sliding_window=None)
                    if cfg.mixed_windows else None)

            def attend(q, k, v, windowed):
                return attention.attend(q, k, v, layer_mask(mask, full, windowed)), None

        h, _ = self._run(input_ids, positions, attend, task_ids, dropout_key,
                         path="generation" if causal else "encoding")
        return h

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM-head logits (float32 accumulation) of hidden states [..., D]."""
        head = self.embed if self.lm_head is None else self.lm_head  # None: tied to the embedding
        return head_logits(hidden, head[...].astype(hidden.dtype))

    def logits_at(self, hidden: jax.Array, positions: jax.Array) -> jax.Array:
        """LM-head logits [B, K, vocab] (float32) of hidden states [B, T, D] at positions [B, K] only.

        Losses on answer tokens need the full-vocabulary head at those positions alone. The gather runs
        along each row, so a batch-sharded ``hidden`` stays sharded.
        """
        return self.logits(jnp.take_along_axis(hidden, positions[..., None], axis=1))

    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty KV cache of ``length`` slots: one {"k", "v"} [B, KV heads, S, head_dim] per layer.

        One buffer per layer (not one stacked [L, ...] array) and heads before slots, so that a decode step
        updates each buffer in place and reads it straight into attention, with no per-layer slice or
        transpose copy of the cache.
        """
        cfg = self.config
        shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
        return tuple({"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
                     for _ in range(cfg.num_layers))

    def prefill(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        cache: KVCache,
        *,
        task_ids: jax.Array | None = None,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Causal forward over right-padded prompts [B, T] that also fills cache slots [0, T).

        Returns (logits [B, T, V], cache), or with ``logits_at`` [B] only each row's logits at that
        position, [B, V] (a decoder needs just the last prompt position, and the LM head over every
        prompt position would dominate the prefill). Row b's next token goes at sum(attention_mask[b]).
        """
        batch, length = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        cfg = self.config
        mask = attention.full_sequence_mask(attention_mask, length, causal=True, sliding_window=cfg.sliding_window)
        full = (attention.full_sequence_mask(attention_mask, length, causal=True, sliding_window=None)
                if cfg.mixed_windows else None)

        def attend(q, k, v, windowed):
            out = attention.attend(q, k, v, layer_mask(mask, full, windowed))
            return out, {"k": k.astype(self.dtype), "v": v.astype(self.dtype)}

        h, new_kv = self._run(input_ids, positions, attend, task_ids, None, path="generation")
        # new_kv: {"k", "v"} [L, B, T, KV, hd] from the layer scan, written into each layer's buffer.
        cache = tuple({name: jax.lax.dynamic_update_slice(layer[name], new_kv[name][i].transpose(0, 2, 1, 3),
                                                          (0, 0, 0, 0))
                       for name in ("k", "v")} for i, layer in enumerate(cache))
        if logits_at is not None:
            h = jnp.take_along_axis(h, logits_at[:, None, None], axis=1)[:, 0]
        return self.logits(h), cache

    def layer_slices(self, task_ids: jax.Array | None) -> tuple[dict[str, Any], ...]:
        """Each layer's base and adapter weights (with the router's gates for ``task_ids``) as separate arrays.

        `decode_step` runs the layers one by one on these. Computed once before a decoding loop, they are
        sliced from the stacked weights once, rather than once a step, and the gates are routed once.
        """
        xs = self._layer_inputs(task_ids, None, "generation")
        return tuple(jax.tree.map(lambda a, i=i: a[i], xs) for i in range(self.config.num_layers))

    def decode_step(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        *,
        task_ids: jax.Array | None = None,
        layers: tuple[dict[str, Any], ...] | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """One new token per row: tokens [B] at positions [B] (each row its own). Returns (logits [B, V], cache).

        ``layers`` is `layer_slices(task_ids)`, computed once per decoding loop; by default it is made here.
        The layers are unrolled (one token a row is all weight reads: a scan would slice every layer's
        weights out of the stacked arrays again at every step) and each layer's cache is updated in place.
        """
        cfg = self.config
        layers = self.layer_slices(task_ids) if layers is None else layers
        rows = jnp.arange(tokens.shape[0])
        slots = cache[0]["k"].shape[2]
        mask = attention.decode_mask(positions, slots, sliding_window=cfg.sliding_window)
        full = attention.decode_mask(positions, slots, sliding_window=None) if cfg.mixed_windows else None
        h = self.embed[...][tokens[:, None]].astype(self.dtype)
        cos, sin = rope_tables(positions[:, None], cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        new_cache = []
        for x, layer_cache in zip(layers, cache):
            def attend(q, k, v, windowed, layer_cache=layer_cache):
                ck = layer_cache["k"].at[rows, :, positions].set(k[:, 0].astype(self.dtype))
                cv = layer_cache["v"].at[rows, :, positions].set(v[:, 0].astype(self.dtype))
                return attention.attend_cache(q, ck, cv, layer_mask(mask, full, windowed)), {"k": ck, "v": cv}

            h, updated = _decoder_layer(h, x, cfg=cfg, tmole_cfg=self.tmole_config, cos=cos, sin=sin, attend=attend)
            new_cache.append(updated)
        h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
        return self.logits(h[:, 0]), tuple(new_cache)

    # ----------------------------------------------------------------------------------- the scan
    def _layer_inputs(self, task_ids: jax.Array | None, dropout_key: jax.Array | None, path: str) -> dict[str, Any]:
        """What each layer reads, stacked over layers: base weights, adapter banks and gates (routed for the
        call ``path``, see `tmole.PATHS`), dropout keys, and each layer's sliding-window flag where only some
        layers use the window."""
        cfg = self.config
        xs: dict[str, Any] = {"base": self.layers.arrays()}
        if cfg.mixed_windows:
            xs["windowed"] = jnp.arange(cfg.num_layers) >= cfg.full_attention_layers
        if self.adapters is not None:
            gates = self.adapters.gates(task_ids, path)
            xs["adapters"] = {t: {"a": bank.a[...], "b": bank.b[...], "gate": gates[t]}
                              for t, bank in self.adapters.banks.items()}
            if self.adapters.added_banks:
                added = self.adapters.added_gates(task_ids)
                xs["added"] = {t: {"a": bank.a[...], "b": bank.b[...], "gate": added[t]}
                               for t, bank in self.adapters.added_banks.items()}
            if dropout_key is not None and self.tmole_config.dropout > 0:
                xs["dropout"] = jax.random.split(dropout_key, cfg.num_layers)
        return xs

    def _run(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        attend: AttendFn,
        task_ids: jax.Array | None,
        dropout_key: jax.Array | None,
        *,
        path: str,
    ) -> tuple[jax.Array, Any]:
        """The layer scan: final-norm hidden states and whatever ``attend`` returned per layer, stacked."""
        cfg = self.config
        h = self.embed[...][input_ids].astype(self.dtype)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        tmole_cfg = self.tmole_config

        def layer(h, x):
            # Under a mesh, keep the residual stream split by sample (FSDP): otherwise XLA may shard a
            # GradCache chunk's loop axis instead and have every device compute the whole chunk.
            h, extra = _decoder_layer(parallel.constrain(h, "residual"), x, cfg=cfg, tmole_cfg=tmole_cfg,
                                      cos=cos, sin=sin, attend=attend)
            return parallel.constrain(h, "residual"), extra

        xs = self._layer_inputs(task_ids, dropout_key, path)
        step = remat_wrap(layer, self.remat)
        if self.scan_layers:
            h, extra = jax.lax.scan(step, h, xs)
        else:  # no stacked residuals and no per-iteration weight slices, at the price of a longer compile
            extras = []
            for i in range(cfg.num_layers):
                h, e = step(h, jax.tree.map(lambda a, i=i: a[i], xs))
                extras.append(e)
            extra = jax.tree.map(lambda *e: jnp.stack(e), *extras)
        return rms_norm(h, self.final_norm[...], cfg.rms_norm_eps), extra


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
    added = x.get("added", {})
    dropout_keys = added_keys = None
    if "dropout" in x:
        dropout_keys = dict(zip(adapters, jax.random.split(x["dropout"], len(adapters))))
        added_keys = {n: jax.random.fold_in(key, 1) for n, key in dropout_keys.items()}

    def bank_deltas(inp: jax.Array, names: list[str], banks: dict, keys: dict | None) -> dict[str, jax.Array]:
        """The outputs of these projections' ``banks`` on their common input ``inp``."""
        names = [n for n in names if n in banks]
        shared = keys is None or tmole_cfg.dropout_shared_qkv  # one mask (or none) for them all
        out = {}
        for group in [names] if shared else [[n] for n in names]:
            if group:
                out.update(zip(group, expert_deltas(
                    inp, [(banks[n]["gate"], banks[n]["a"], banks[n]["b"]) for n in group],
                    scale=tmole_cfg.scale, dropout_rate=tmole_cfg.dropout,
                    dropout_key=None if keys is None else keys[group[0]],
                    dropout_rng=tmole_cfg.dropout_rng, per_expert=tmole_cfg.dropout_per_expert)))
        return out

    def deltas(inp: jax.Array, names: list[str]) -> dict[str, jax.Array]:
        """The adapter outputs of these projections: the bank's, plus the added tasks' bank where there is
        one (computed apart, so a task that does not route to it keeps exactly its old output)."""
        out = bank_deltas(inp, names, adapters, dropout_keys)
        for name, extra in bank_deltas(inp, names, added, added_keys).items():
            out[name] = out[name] + extra
        return out

    def project(inp: jax.Array, name: str, delta: dict[str, jax.Array]) -> jax.Array:
        out = linear(inp, w[name])
        if f"{name}_bias" in w:  # the bias is part of the frozen base: x W0 + b, then the adapters' delta
            out = out + w[f"{name}_bias"].astype(out.dtype)
        return out + delta[name] if name in delta else out

    batch, length, _ = h.shape
    normed = rms_norm(h, w["attn_norm"], cfg.rms_norm_eps)
    qkv_deltas = deltas(normed, ["q", "k", "v"])
    q = project(normed, "q", qkv_deltas).reshape(batch, length, cfg.num_heads, cfg.head_dim)
    k = project(normed, "k", qkv_deltas).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    v = project(normed, "v", qkv_deltas).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn, extra = attend(q, k, v, x.get("windowed"))
    attn = checkpoint_name(attn, "attention_out").reshape(batch, length, cfg.q_dim)
    h = h + project(attn, "o", deltas(attn, ["o"]))
    normed = rms_norm(h, w["mlp_norm"], cfg.rms_norm_eps)
    hidden = jax.nn.silu(linear(normed, w["gate"])) * linear(normed, w["up"])
    h = h + linear(hidden, w["down"])
    return h, extra
