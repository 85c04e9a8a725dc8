"""The run configuration: every key with its default, and the checks made before anything compiles.

Config files under configs/ define ``get_config()`` that starts from `base_config()` and changes
values; the dict is locked, so a misspelt key fails at once with its name, in the file or on the
command line (``--config.train.steps=10``).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from recfound_jax.model.mistral import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES
from recfound_jax.model.tmole import DROPOUT_RNGS

DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run with its default (the demo's sizes; configs/ override them)."""
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.base = "demo"  # a HF Mistral directory, or "demo": the tiny base built by recfound_jax.demo.pretrain
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.remat = "none"
    c.model.attention = "xla"

    c.tmole = ml_collections.ConfigDict()
    c.tmole.enabled = True
    c.tmole.num_embedding = 2
    c.tmole.num_shared = 2
    c.tmole.num_generative = 2
    c.tmole.rank = 16
    c.tmole.alpha = 64.0
    c.tmole.dropout = 0.1
    c.tmole.dropout_rng = "threefry"  # or "threefry16" (a quarter of the hashing) or "rbg" (tmole.dropout_keep_mask)
    c.tmole.dropout_shared_qkv = False  # True: one dropout mask for the q, k and v adapters (one A contraction)
    c.tmole.task_embedding_dim = 512
    c.tmole.router_hidden = ()

    c.data = ml_collections.ConfigDict()
    c.data.dir = "synthetic"  # a folder in the released layout, or "synthetic": generated on first use
    c.data.synthetic_scale = 1
    c.data.synthetic_seed = 0
    c.data.on_error = "raise"  # or "skip": bad rows are skipped and counted per reason
    c.data.query_len = 72
    c.data.passage_len = 48
    c.data.generative_len = 176

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.embedding_batch = 24
    c.train.generative_batch = 20
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.03
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.temperature = 0.02
    c.train.gradcache_chunk = 0  # queries per GradCache chunk; 0 = plain backward
    c.train.generative_micro_batch = 0  # 0 = the whole generative batch at once
    c.train.log_every = 1
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 3
    c.train.max_nonfinite = 5  # stop after this many non-finite steps in a row

    c.s2sched = ml_collections.ConfigDict()
    c.s2sched.enabled = True
    c.s2sched.window = 64
    c.s2sched.tau = 10.0
    c.s2sched.warmup_ratio = 0.1
    c.s2sched.warmup_steps = -1  # >= 0 overrides warmup_ratio (the released code: 32)
    c.s2sched.probe_size = 10
    c.s2sched.update_every = 1
    c.s2sched.floor = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # evaluate on a fixed subset every N steps; 0 = only at the end
    c.eval.subset = 20  # rows per task in that subset
    return c


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def validate(c: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first key that cannot work; run before any compile."""
    known = base_config()
    _check_keys(c, known, "")
    _check(c.model.param_dtype in DTYPES, "model.param_dtype", f"{c.model.param_dtype!r} not in {DTYPES}")
    _check(c.model.compute_dtype in DTYPES, "model.compute_dtype", f"{c.model.compute_dtype!r} not in {DTYPES}")
    _check(c.model.remat in REMAT_POLICIES, "model.remat", f"{c.model.remat!r} not in {REMAT_POLICIES}")
    _check(c.model.attention in ATTENTION_IMPLEMENTATIONS, "model.attention",
           f"{c.model.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
    if c.model.base != "demo":
        _check(Path(c.model.base, "config.json").is_file(), "model.base",
               f"{c.model.base!r} is not a HF checkpoint directory (no config.json)")
    if c.data.dir != "synthetic":
        _check(Path(c.data.dir).is_dir(), "data.dir", f"{c.data.dir!r} is not a directory")
    _check(c.data.on_error in ("raise", "skip"), "data.on_error", f"{c.data.on_error!r} not in ('raise', 'skip')")
    t = c.tmole
    for key in ("num_embedding", "num_shared", "num_generative"):
        _check(t[key] >= 0, f"tmole.{key}", f"must be >= 0, got {t[key]}")
    if t.enabled:
        _check(t.num_embedding + t.num_shared > 0, "tmole.num_embedding",
               "embedding tasks need at least one embedding or shared expert")
        _check(t.num_generative + t.num_shared > 0, "tmole.num_generative",
               "generative tasks need at least one generative or shared expert")
    _check(t.rank > 0, "tmole.rank", f"must be > 0, got {t.rank}")
    _check(0.0 <= t.dropout < 1.0, "tmole.dropout", f"must be in [0, 1), got {t.dropout}")
    _check(t.dropout_rng in DROPOUT_RNGS, "tmole.dropout_rng", f"{t.dropout_rng!r} not in {DROPOUT_RNGS}")
    _check(isinstance(t.dropout_shared_qkv, bool), "tmole.dropout_shared_qkv",
           f"must be True or False, got {t.dropout_shared_qkv!r}")
    for key in ("query_len", "passage_len", "generative_len"):
        _check(c.data[key] >= 8, f"data.{key}", f"must be >= 8, got {c.data[key]}")
    max_positions = base_max_positions(c.model.base)
    if max_positions is not None:
        for key in ("query_len", "passage_len", "generative_len"):
            _check(c.data[key] <= max_positions, f"data.{key}",
                   f"{c.data[key]} exceeds the base's max_position_embeddings={max_positions}")
    tr = c.train
    _check(tr.steps > 0, "train.steps", f"must be > 0, got {tr.steps}")
    _check(tr.embedding_batch >= 0 and tr.generative_batch >= 0, "train.embedding_batch", "batch sizes must be >= 0")
    _check(tr.embedding_batch + tr.generative_batch > 0, "train.generative_batch", "both batches are empty")
    _check(tr.learning_rate > 0 and math.isfinite(tr.learning_rate), "train.learning_rate", "must be finite and > 0")
    if tr.gradcache_chunk > 0:
        _check(tr.embedding_batch % tr.gradcache_chunk == 0, "train.gradcache_chunk",
               f"{tr.gradcache_chunk} does not divide train.embedding_batch={tr.embedding_batch}")
    if tr.generative_micro_batch > 0:
        _check(tr.generative_batch % tr.generative_micro_batch == 0, "train.generative_micro_batch",
               f"{tr.generative_micro_batch} does not divide train.generative_batch={tr.generative_batch}")
    _check(len(tuple(c.mesh.shape)) == 3, "mesh.shape", f"{tuple(c.mesh.shape)} needs 3 entries (data, fsdp, tensor)")
    if device_count is not None:
        from recfound_jax import parallel  # noqa: PLC0415 (jax import only when devices are known)
        try:
            mesh_shape = parallel.resolve_mesh_shape(c.mesh.shape, device_count)
        except ValueError as err:
            raise ConfigError(f"config.mesh.shape: {err}") from None
        data_ways = mesh_shape[0] * mesh_shape[1]
        for key in ("embedding_batch", "generative_batch"):
            _check(tr[key] % data_ways == 0, f"train.{key}",
                   f"{tr[key]} is not divisible by the {data_ways} data-parallel devices of mesh {mesh_shape}")


def base_max_positions(base: str) -> int | None:
    """The longest sequence the base model takes (config.json's max_position_embeddings), if known.

    ``"demo"`` reads configs/demo_base.py when the source tree is there (the base may not be built yet).
    """
    if base == "demo":
        demo = Path(__file__).resolve().parents[1] / "configs" / "demo_base.py"
        return int(load_config_file(demo).model.max_position_embeddings) if demo.is_file() else None
    raw = json.loads(Path(base, "config.json").read_text())
    return int(raw.get("max_position_embeddings", 32768))  # HF's default when the field is absent


def _check_keys(c: ml_collections.ConfigDict, known: ml_collections.ConfigDict, prefix: str) -> None:
    for key in c.keys():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"config.{name}: unknown key; known keys here: {sorted(known.keys())}")
        if isinstance(c[key], ml_collections.ConfigDict):
            _check_keys(c[key], known[key], name + ".")


def cache_dir() -> Path:
    """$RECFOUND_CACHE, or ~/.cache/recfound_jax: where the demo base and synthetic data are built."""
    return Path(os.environ.get("RECFOUND_CACHE") or Path.home() / ".cache" / "recfound_jax")


def synthetic_dir(scale: int, seed: int, cache: str | os.PathLike | None = None) -> Path:
    """Where the synthetic dataset of a scale and seed is generated, under ``cache`` or `cache_dir()`."""
    return Path(cache or cache_dir()) / "synthetic" / f"scale{scale}-seed{seed}"


def to_dict(c: ml_collections.ConfigDict) -> dict:
    """A JSON-able dict of the config."""
    return c.to_dict()


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """A locked ConfigDict from a saved dict (a run's config.json)."""
    c = config_dict.ConfigDict(d)
    c.lock()
    return c


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of a config file given by path (how ablation configs extend their recipe)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"recfound_config_{path.stem}", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
