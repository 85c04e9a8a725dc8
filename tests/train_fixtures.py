"""Shared fixtures for tests that train: a tiny random base with the real tokenizer, and the synthetic data."""
from __future__ import annotations

import shutil
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax.convert.hf import save_hf
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.tokenizer import default_tokenizer_path

TINY_BASE = MistralConfig(vocab_size=32768, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, rope_theta=1e4, max_position_embeddings=256)


def write_tiny_base(path: Path, seed: int = 0) -> Path:
    """A random tiny Mistral with the v3 vocabulary, saved as a HF checkpoint with its tokenizer."""
    save_hf(Mistral(TINY_BASE, param_dtype=jnp.float32, rngs=nnx.Rngs(seed)), path)
    shutil.copy(default_tokenizer_path(), path / "tokenizer.model")
    return path


def tiny_config(base: Path, **train):
    """A run config of a few small steps on the synthetic data, from the tiny base."""
    c = config_lib.base_config()
    c.name = "tiny"
    c.model.base = str(base)
    c.tmole.rank = 4
    c.tmole.alpha = 8.0
    c.tmole.task_embedding_dim = 16
    c.data.query_len, c.data.passage_len, c.data.generative_len = 72, 48, 176
    c.train.steps = 6
    c.train.embedding_batch = 6
    c.train.generative_batch = 10
    c.train.learning_rate = 5e-3
    c.train.checkpoint_every = 3
    c.s2sched.probe_size = 2
    c.s2sched.window = 4
    c.s2sched.warmup_ratio = 0.2
    c.mesh.shape = (1, 1, 1)
    for key, value in train.items():
        section, name = key.split("__")
        c[section][name] = value
    c.lock()
    return c
