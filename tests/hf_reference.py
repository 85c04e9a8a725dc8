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


def _randomise_and_save(model, path: Path, *, biases: bool = False):
    """Norms away from 1 (a wrong norm layout shows), random q/k/v biases if asked, then save (safetensors)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
            elif biases and name.endswith("_proj.bias"):
                param.copy_(0.5 * torch.randn_like(param))
    model.save_pretrained(path, safe_serialization=True)
    return model


def tiny_hf_llama(path: Path, *, heads=4, kv_heads=2, hidden=32, layers=2, vocab=97, tie=False,
                  rope_parameters=None, init_std=0.02, seed=0) -> transformers.LlamaForCausalLM:
    """Build, save and return a tiny random float32 LlamaForCausalLM (``rope_parameters``: e.g. llama3).

    A larger ``init_std`` makes greedy continuations depend on the context (at 0.02 they repeat one token).
    """
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=256, rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=tie, initializer_range=init_std, attn_implementation="eager")
    return _randomise_and_save(transformers.LlamaForCausalLM(config).eval(), path)


def tiny_hf_qwen2(path: Path, *, heads=4, kv_heads=2, hidden=32, layers=2, vocab=97, sliding_window=None,
                  max_window_layers=0, init_std=0.02, seed=0) -> transformers.Qwen2ForCausalLM:
    """Build, save and return a tiny random float32 Qwen2ForCausalLM with random nonzero q/k/v biases.

    ``sliding_window`` turns on use_sliding_window, for layers >= ``max_window_layers``; ``init_std`` as
    for `tiny_hf_llama`.
    """
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4}, use_sliding_window=sliding_window is not None,
        sliding_window=sliding_window, max_window_layers=max_window_layers, tie_word_embeddings=False,
        rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, initializer_range=init_std, attn_implementation="eager")
    return _randomise_and_save(transformers.Qwen2ForCausalLM(config).eval(), path, biases=True)
