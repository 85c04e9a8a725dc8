"""A run directory: its config, its inputs (base model, data, tokenizer) and its model at any step.

Training, evaluation, merging, export and the inference API all open runs through here.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax.runs import checkpoint
from recfound_jax.convert.hf import load_hf, read_config as read_hf_config
from recfound_jax.model.mistral import Mistral
from recfound_jax.model.tmole import TMoLEConfig

CONFIG_FILE = "config.json"
DEMO_BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_base.py"
RUN_FILE = "run.json"


def tmole_config(c: ml_collections.ConfigDict) -> TMoLEConfig:
    """The TMoLEConfig of a run config."""
    t = c.tmole
    return TMoLEConfig(enabled=t.enabled, num_embedding=t.num_embedding, num_shared=t.num_shared,
                       num_generative=t.num_generative, rank=t.rank, alpha=t.alpha, dropout=t.dropout,
                       dropout_rng=t.get("dropout_rng", "threefry"),  # runs written before the options
                       dropout_shared_qkv=t.get("dropout_shared_qkv", False),
                       task_embedding_dim=t.task_embedding_dim, router_hidden=tuple(t.router_hidden))


def tokenizer_path(base: Path) -> Path | None:
    """The base's own tokenizer.model, or None for the default v3 file."""
    return base / "tokenizer.model" if (base / "tokenizer.model").is_file() else None


def base_fingerprint(base: Path) -> str:
    """A cheap fingerprint of a HF checkpoint: config.json and the names and sizes of its weight files."""
    digest = hashlib.sha256((base / "config.json").read_bytes())
    for file in sorted(base.glob("*.safetensors")):
        digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def read_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run was made with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return config_lib.from_dict(json.loads(path.read_text()))


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    return checkpoint.read_json(Path(run_dir) / RUN_FILE)


def build_model(c: ml_collections.ConfigDict, base: Path, *, mesh=None, with_adapters: bool = True) -> Mistral:
    """The base model of a run config with fresh adapters (or none)."""
    return load_hf(base, dtype=jnp.dtype(c.model.param_dtype), mesh=mesh,
                   tmole=tmole_config(c) if with_adapters else None,
                   compute_dtype=jnp.dtype(c.model.compute_dtype), remat=c.model.remat,
                   attention_impl=c.model.attention, seed=c.seed)


def load_model(run_dir: str | os.PathLike, step: int | None = None, *, mesh=None,
               with_adapters: bool = True) -> tuple[Mistral, ml_collections.ConfigDict, int | None]:
    """(model with the trained params of ``step`` (default: the latest), config, step).

    ``with_adapters=False`` gives the base alone, the "w/o finetuning" model.
    """
    run_dir = Path(run_dir)
    c = read_config(run_dir)
    info = read_run_info(run_dir)
    base = Path(info["base"])
    if base_fingerprint(base) != info["base_fingerprint"]:
        raise ValueError(f"{run_dir}: the base checkpoint {base} changed since the run was made "
                         f"(fingerprint {base_fingerprint(base)} != {info['base_fingerprint']})")
    model = build_model(c, base, mesh=mesh, with_adapters=with_adapters)
    if not with_adapters:
        return model, c, None
    checkpointer = checkpoint.Checkpointer(run_dir)
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoints yet")
    _, params, base_state = nnx.split(model, nnx.Param, ...)
    restored, _, _ = checkpointer.restore(step, params)
    checkpointer.close()
    graphdef = nnx.graphdef(model)
    return nnx.merge(graphdef, restored, base_state), c, step


def params_like(run_dir: str | os.PathLike) -> nnx.State:
    """Abstract trainable params of a run (shapes and dtypes, nothing loaded)."""
    c = read_config(run_dir)
    info = read_run_info(run_dir)
    hf_cfg = read_hf_config(info["base"])
    model = nnx.eval_shape(lambda: Mistral(hf_cfg, tmole=tmole_config(c), rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)
