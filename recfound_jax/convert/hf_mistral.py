"""Mistral's config.json, and what every supported HF family shares with it (`Family`, the common fields).

A family (Mistral, Llama, Qwen2) is the one decoder of model/mistral.py with a few config fields set; its
module here maps config.json to a `MistralConfig` and back and names its extra tensors. The fields read
here are common to all three: sizes, RMSNorm epsilon, RoPE (plain or "llama3"-scaled, from
``rope_parameters`` as transformers 5 writes it or the older ``rope_scaling``), a tied LM head, BOS/EOS.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from recfound_jax.model.mistral import Llama3RopeScaling, MistralConfig

LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")


@dataclasses.dataclass(frozen=True)
class Family:
    """One HF architecture: its model_type and class name, its config.json mapping, its extra tensors."""

    model_type: str
    architecture: str
    config_from_hf: Callable[[dict[str, Any], str], MistralConfig]
    config_to_hf: Callable[[MistralConfig, Any], dict[str, Any]]
    # weight kind of the decoder stack -> HF tensor name template, beyond the ones every family has
    extra_layer_keys: dict[str, str] = dataclasses.field(default_factory=dict)


def need(raw: dict[str, Any], key: str, source: str) -> Any:
    """raw[key], or a KeyError naming the file and the field."""
    if key not in raw:
        raise KeyError(f"{source}: missing field {key!r}")
    return raw[key]


def rope_from_hf(raw: dict[str, Any], source: str) -> tuple[float, Llama3RopeScaling | None]:
    """(rope_theta, scaling) of a config.json, read as transformers 5 reads it.

    ``rope_scaling`` (older files) wins over ``rope_parameters``; theta falls back to the top-level
    ``rope_theta`` and then 10000. Only plain ("default") and "llama3" RoPE are supported.
    """
    field = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    rope = raw.get(field) or {}
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"{source}: {field}.rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
    missing = [key for key in LLAMA3_KEYS if key not in rope]
    if missing:
        raise KeyError(f"{source}: {field} of rope_type 'llama3' misses {missing[0]!r}")
    original = rope.get("original_max_position_embeddings",
                        raw.get("original_max_position_embeddings", need(raw, "max_position_embeddings", source)))
    return theta, Llama3RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                                    high_freq_factor=float(rope["high_freq_factor"]),
                                    original_max_position_embeddings=int(original))


def common_fields(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The MistralConfig fields every family reads the same way, as keyword arguments."""
    heads = need(raw, "num_attention_heads", source)
    theta, scaling = rope_from_hf(raw, source)
    eos = raw.get("eos_token_id", 2)
    return dict(
        vocab_size=need(raw, "vocab_size", source), hidden_size=need(raw, "hidden_size", source),
        intermediate_size=need(raw, "intermediate_size", source), num_layers=need(raw, "num_hidden_layers", source),
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or need(raw, "hidden_size", source) // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=raw.get("max_position_embeddings", 32768),
        bos_token_id=raw.get("bos_token_id", 1), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)))


def common_to_hf(cfg: MistralConfig, dtype: Any, family: Family) -> dict[str, Any]:
    """The config.json fields every family writes the same way (transformers 4.x and 5.x read them)."""
    dtype_name = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[jnp.dtype(dtype).name]
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    scaling = {}
    if cfg.rope_scaling is not None:
        scaled = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
        rope = {**scaled, "rope_theta": cfg.rope_theta}
        scaling = {"rope_scaling": scaled}  # where transformers 4.x looks; 5.x reads it too
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    return {
        "architectures": [family.architecture], "model_type": family.model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_parameters": rope, **scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings, "attention_dropout": 0.0,
        "initializer_range": 0.02, "bos_token_id": cfg.bos_token_id, "eos_token_id": eos,
        "torch_dtype": dtype_name, "use_cache": True,
    }


def check_family(cfg: MistralConfig, family: Family, *, qkv_bias: bool = False, window: bool = True) -> None:
    """Raise ValueError when ``cfg`` has a feature ``family``'s HF class cannot hold."""
    if cfg.qkv_bias != qkv_bias:
        raise ValueError(f"{family.architecture} {'always has' if qkv_bias else 'has no'} q/k/v biases, "
                         f"the config has qkv_bias={cfg.qkv_bias}")
    if not window and cfg.sliding_window is not None:
        raise ValueError(f"{family.architecture} has no sliding window, the config has {cfg.sliding_window}")


def config_from_hf(raw: dict[str, Any], source: str) -> MistralConfig:
    """A MistralForCausalLM config.json as a MistralConfig: the common fields and a window on every layer."""
    return MistralConfig(**common_fields(raw, source), sliding_window=raw.get("sliding_window"), family="mistral")


def config_to_hf(cfg: MistralConfig, dtype: Any) -> dict[str, Any]:
    """The MistralForCausalLM config.json of ``cfg``."""
    check_family(cfg, FAMILY)
    if cfg.full_attention_layers:
        raise ValueError("MistralForCausalLM windows every layer or none; the config has "
                         f"full_attention_layers={cfg.full_attention_layers}")
    return common_to_hf(cfg, dtype, FAMILY) | {"sliding_window": cfg.sliding_window}


FAMILY = Family("mistral", "MistralForCausalLM", config_from_hf, config_to_hf)
