"""Tiny random HF transformers Mistral models, the reference the JAX model is checked against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers


def tiny_hf_mistral(path: Path, *, heads=4, kv_heads=2, hidden=32, layers=2, vocab=97,
                    sliding_window=None, rope_theta=1e4, seed=0) -> transformers.MistralForCausalLM:
    """Build, save (safetensors) and return a tiny random float32 MistralForCausalLM."""
    torch.manual_seed(seed)
    config = transformers.MistralConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=256, sliding_window=sliding_window, rope_theta=rope_theta,
        tie_word_embeddings=False, attn_implementation="eager")
    model = transformers.MistralForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm layout shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(path, safe_serialization=True)
    return model


def hf_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Float32 logits of the torch model."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(input_ids), dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.tensor(np.asarray(attention_mask)))
    return out.logits.float().numpy()
