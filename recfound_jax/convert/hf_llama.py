"""Llama's config.json (LlamaForCausalLM): Mistral's common fields, no sliding window, no biases.

Llama 3.1+ checkpoints scale RoPE ("llama3", read with the common fields) and the small ones tie the LM
head to the embedding (``tie_word_embeddings``; their safetensors then have no ``lm_head.weight``).
"""
from __future__ import annotations

from typing import Any

from recfound_jax.convert import hf_mistral
from recfound_jax.model.mistral import MistralConfig


def config_from_hf(raw: dict[str, Any], source: str) -> MistralConfig:
    """A LlamaForCausalLM config.json as a MistralConfig; biased projections are refused."""
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field, False):
            raise ValueError(f"{source}: {field}=true is not supported (Llama projections without biases only)")
    return MistralConfig(**hf_mistral.common_fields(raw, source), family="llama")


def config_to_hf(cfg: MistralConfig, dtype: Any) -> dict[str, Any]:
    """The LlamaForCausalLM config.json of ``cfg``."""
    hf_mistral.check_family(cfg, FAMILY, window=False)
    return hf_mistral.common_to_hf(cfg, dtype, FAMILY) | {"attention_bias": False, "mlp_bias": False}


FAMILY = hf_mistral.Family("llama", "LlamaForCausalLM", config_from_hf, config_to_hf)
