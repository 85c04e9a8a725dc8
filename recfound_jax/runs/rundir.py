"""A run directory: its config, its inputs (base model, data, tokenizer) and its model at any step.

Training, evaluation, merging, export and the inference API all open runs through here.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax import jsonio
from recfound_jax import tokenizer as tokenizer_lib
from recfound_jax.convert.hf import load_hf
from recfound_jax.convert.hf import read_config as read_hf_config
from recfound_jax.model.mistral import Mistral
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.runs import checkpoint

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


def tokenizer_path(base: Path) -> Path | None:
    """The base's own tokenizer.model, else its tokenizer.json, or None for the default v3 file
    (`recfound_jax.tokenizer` says why tokenizer.model wins)."""
    for name in (tokenizer_lib.SENTENCEPIECE_FILE, tokenizer_lib.TOKENIZER_FILE):
        if (base / name).is_file():
            return base / name
    return None


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
    return config_lib.from_dict(jsonio.read_json(path))


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    return jsonio.read_json(Path(run_dir) / RUN_FILE)


def build_model(c: ml_collections.ConfigDict, base: Path, *, mesh=None, with_adapters: bool = True) -> Mistral:
    """The base model of a run config with fresh adapters (or none)."""
    return load_hf(base, dtype=jnp.dtype(c.model.param_dtype), mesh=mesh,
                   tmole=TMoLEConfig.for_run(c) if with_adapters else None,
                   compute_dtype=jnp.dtype(c.model.compute_dtype), remat=c.model.remat,
                   attention_impl=c.model.attention, seed=c.seed)


def checked_base(run_dir: str | os.PathLike) -> Path:
    """The run's base checkpoint directory; ValueError when it changed since the run was made."""
    info = read_run_info(run_dir)
    base = Path(info["base"])
    if base_fingerprint(base) != info["base_fingerprint"]:
        raise ValueError(f"{run_dir}: the base checkpoint {base} changed since the run was made "
                         f"(fingerprint {base_fingerprint(base)} != {info['base_fingerprint']})")
    return base


def load_model(run_dir: str | os.PathLike, step: int | None = None, *, mesh=None,
               with_adapters: bool = True) -> tuple[Mistral, ml_collections.ConfigDict, int | None]:
    """(model with the trained params of checkpoint ``step``, config, step).

    ``step`` defaults to the latest checkpoint; step 0 of a run without a checkpoint 0 is the params it
    started from (initial_params). ``with_adapters=False`` gives the base alone, the "w/o finetuning"
    model, and step None.
    """
    run_dir = Path(run_dir)
    c = read_config(run_dir)
    model = build_model(c, checked_base(run_dir), mesh=mesh, with_adapters=with_adapters)
    if not with_adapters:
        return model, c, None
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    with checkpoint.Checkpointer(run_dir) as checkpointer:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoints yet")
        if step == 0 and 0 not in checkpointer.steps():
            restored = checkpointer.restore_initial(params)
        else:
            restored, _, _ = checkpointer.restore(step, params)
    return nnx.merge(graphdef, restored, rest), c, step


def load_tokenizer(run_dir: str | os.PathLike) -> tokenizer_lib.TextTokenizer:
    """The tokenizer a run was trained with (run.json), else its base's own, else the default v3 file.

    A recorded tokenizer.json takes its BOS/EOS/pad ids from the files next to it (the base's
    tokenizer_config.json and so on, `recfound_jax.tokenizer_json`).
    """
    info = read_run_info(run_dir)
    path = info.get("tokenizer")
    if path and Path(path).is_file():
        return tokenizer_lib.load_tokenizer(path)
    return tokenizer_lib.load_tokenizer(tokenizer_path(Path(info["base"])))


def params_like(run_dir: str | os.PathLike) -> nnx.State:
    """Abstract trainable params of a run (shapes and dtypes, nothing loaded)."""
    c = read_config(run_dir)
    info = read_run_info(run_dir)
    hf_cfg = read_hf_config(info["base"])
    model = nnx.eval_shape(lambda: Mistral(hf_cfg, tmole=TMoLEConfig.for_run(c), rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)
