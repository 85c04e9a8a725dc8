"""Qwen2's config.json (Qwen2ForCausalLM): Mistral's common fields, q/k/v biases, windows on upper layers.

Qwen2 always has q, k and v biases (``self_attn.{q,k,v}_proj.bias``; o has none). Its sliding window is
on only with ``use_sliding_window``, and then, as transformers' Qwen2Config builds ``layer_types``, only
on layers i >= ``max_window_layers``; the lower ones attend fully.
"""
from __future__ import annotations

from typing import Any

from recfound_jax.convert import hf_mistral
from recfound_jax.model.mistral import MistralConfig

BIAS_KEYS = {
    "q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "v_bias": "model.layers.{i}.self_attn.v_proj.bias",
}
QWEN2_DEFAULT_WINDOW, QWEN2_DEFAULT_WINDOW_LAYERS = 4096, 28  # transformers' Qwen2Config defaults


def window_from_hf(raw: dict[str, Any], num_layers: int, source: str) -> tuple[int | None, int]:
    """(sliding_window, full_attention_layers) as transformers' Qwen2 applies them.

    An explicit ``layer_types`` list is honoured when it is full layers then windowed ones (the only
    shape Qwen2Config makes); a window that covers no layer is no window.
    """
    window = raw.get("sliding_window", QWEN2_DEFAULT_WINDOW) if raw.get("use_sliding_window", False) else None
    if window is None:
        return None, 0
    layer_types = raw.get("layer_types")
    if layer_types is None:
        full = min(raw.get("max_window_layers", QWEN2_DEFAULT_WINDOW_LAYERS), num_layers)
    else:
        full = next((i for i, t in enumerate(layer_types) if t != "full_attention"), len(layer_types))
        if len(layer_types) != num_layers or any(t != "sliding_attention" for t in layer_types[full:]):
            raise ValueError(f"{source}: layer_types must be {num_layers} entries, 'full_attention' ones then "
                             f"'sliding_attention' ones; got {layer_types}")
    return (None, 0) if full >= num_layers else (window, full)


def config_from_hf(raw: dict[str, Any], source: str) -> MistralConfig:
    """A Qwen2ForCausalLM config.json as a MistralConfig."""
    fields = hf_mistral.common_fields(raw, source)
    window, full = window_from_hf(raw, fields["num_layers"], source)
    return MistralConfig(**fields, sliding_window=window, full_attention_layers=full, qkv_bias=True, family="qwen2")


def config_to_hf(cfg: MistralConfig, dtype: Any) -> dict[str, Any]:
    """The Qwen2ForCausalLM config.json of ``cfg``."""
    hf_mistral.check_family(cfg, FAMILY, qkv_bias=True)
    windowed = cfg.sliding_window is not None
    return hf_mistral.common_to_hf(cfg, dtype, FAMILY) | {
        "use_sliding_window": windowed, "sliding_window": cfg.sliding_window,
        "max_window_layers": cfg.full_attention_layers if windowed else cfg.num_layers}


FAMILY = hf_mistral.Family("qwen2", "Qwen2ForCausalLM", config_from_hf, config_to_hf, extra_layer_keys=BIAS_KEYS)
