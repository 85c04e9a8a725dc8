"""Shared fixtures for tests that train: a tiny random base with the real tokenizer, and the synthetic data."""
from __future__ import annotations

import shutil
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax.convert.hf import save_hf
from recfound_jax.merge.checkpoints import write_run
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.runs import rundir
from recfound_jax.tokenizer import default_tokenizer_path
from recfound_jax.train import step as step_lib

TINY_BASE = MistralConfig(vocab_size=32768, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, rope_theta=1e4, max_position_embeddings=256)


def write_tiny_base(path: Path, seed: int = 0) -> Path:
    """A random tiny Mistral with the v3 vocabulary, saved as a HF checkpoint with its tokenizer."""
    save_hf(Mistral(TINY_BASE, param_dtype=jnp.float32, rngs=nnx.Rngs(seed)), path)
    shutil.copy(default_tokenizer_path(), path / "tokenizer.model")
    return path


def write_model_run(out: Path, c, base: Path, model: Mistral, step: int) -> Path:
    """A run directory of config ``c`` on ``base`` whose checkpoint ``step`` (and initial params) hold
    ``model``'s trainable params, with no training."""
    _, params, _ = nnx.split(model, nnx.Param, ...)
    info = {"base": str(base), "base_fingerprint": rundir.base_fingerprint(base),
            "tokenizer": str(base / "tokenizer.model"), "data": None}
    return write_run(out, config_lib.to_dict(c), info, params, step, {"step": step}, initial=params)


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


def step_options(answer_budget: int = 0, **train) -> step_lib.StepOptions:
    """The step options of the schema's defaults with these ``train`` keys changed (``gradcache_chunk=2``)."""
    c = config_lib.base_config()
    c.train.update(train)
    return step_lib.StepOptions.from_config(c, answer_budget=answer_budget)
