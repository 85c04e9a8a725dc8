"""Import the released RecFound-7B adapters as a run directory.

    python -m recfound_jax.convert.released --adapter DIR --base HF_DIR --out RUN_DIR \\
        [--task_embedding FILE] [--dtype bfloat16|float32] [--data DATA_DIR]

The released checkpoint (JunkFood436/RecFound) holds, in DIR:
- adapter_model.safetensors: for every layer i and projection p in q, k, v, o,
  ``base_model.model.model.layers.{i}.self_attn.{p}_proj.`` + ``lora_A.{j}.weight`` [r, d_in],
  ``lora_B.{j}.weight`` [d_out, r] (j = 0..5), ``lora_route.weight`` [6, 512], ``lora_route.bias`` [6];
- embedding_weights.pth: the task embedding, a torch state dict {"weight": [14, 512]}. It is a pickle,
  read only with ``torch.load(..., weights_only=True)`` (which refuses anything but tensors and plain
  containers); a .safetensors file with one tensor "weight" is accepted too.

The released layout is 3 embedding + 3 generative experts (no shared ones), rank 16, alpha 64, one
linear router (512 -> 6) per projection and layer. Every key and shape is checked against that
layout on the given base before anything is written; a missing, unexpected or misshapen key is an
error naming it. Mapping (torch nn.Linear weights are [out, in]):
A[L, N, d_in, r] = lora_A.{j}.weight^T, B[L, N, r, d_out] = lora_B.{j}.weight^T,
router_w[0][L, 512, N] = lora_route.weight^T, router_b[0][L, N] = lora_route.bias.
Expert order: the released mask gives experts 0-2 to embedding tasks and 3-5 to generative ones,
which is this package's bank order (embedding, shared, generative) with 0 shared experts.

The run directory gets config.json (`config.base_config()` with the released layout and
model.base = HF_DIR), run.json (base path and fingerprint, tokenizer, the imported files),
checkpoints/0 with the imported params and the same params as initial_params (the released
untrained adapters are not published, so the import is this run's starting point).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from recfound_jax import cli, jsonio
from recfound_jax import config as config_lib
from recfound_jax.convert import safetensors_io as st
from recfound_jax.convert.hf import read_config as read_hf_config
from recfound_jax.merge.checkpoints import key_name, write_run
from recfound_jax.model.mistral import Mistral
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.runs import rundir
from recfound_jax.tasks import TASK_TABLE_SIZE
from recfound_jax.tokenizer import default_tokenizer_path

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
EMBEDDING_FILE = "embedding_weights.pth"
PREFIX = "base_model.model.model.layers.{i}.self_attn.{p}_proj."
TARGETS = ("q", "k", "v", "o")
# The released layout (training/run.py LoraConfig; the is_shared flag never reaches the layers).
NUM_EMBEDDING, NUM_SHARED, NUM_GENERATIVE = 3, 0, 3
NUM_EXPERTS = NUM_EMBEDDING + NUM_SHARED + NUM_GENERATIVE
RANK, ALPHA, DROPOUT, TASK_DIM = 16, 64.0, 0.1, 512
FLOAT_CODES = ("F64", "F32", "F16", "BF16")


class ReleasedLayoutError(ValueError):
    """The released files do not match the released layout on this base; the message names the key."""


def released_config(base: str | os.PathLike, *, dtype: str = "bfloat16",
                    data: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """`config.base_config()` with the released TMoLE layout, on ``base``, validated and locked."""
    c = config_lib.base_config()
    c.name = "recfound_released"
    c.model.base = str(Path(base).absolute())
    c.model.param_dtype = c.model.compute_dtype = dtype
    c.tmole.num_embedding, c.tmole.num_shared, c.tmole.num_generative = NUM_EMBEDDING, NUM_SHARED, NUM_GENERATIVE
    c.tmole.rank, c.tmole.alpha, c.tmole.dropout = RANK, ALPHA, DROPOUT
    c.tmole.task_embedding_dim = TASK_DIM
    c.tmole.router_hidden = ()
    if data is not None:
        c.data.dir = str(Path(data).absolute())
    config_lib.validate(c)
    c.lock()
    return c


def expected_keys(num_layers: int, dims: dict[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    """Released safetensors key -> shape for a base with ``num_layers`` and projection dims {p: (in, out)}."""
    shapes = {}
    for i in range(num_layers):
        for p in TARGETS:
            d_in, d_out = dims[p]
            prefix = PREFIX.format(i=i, p=p)
            for j in range(NUM_EXPERTS):
                shapes[f"{prefix}lora_A.{j}.weight"] = (RANK, d_in)
                shapes[f"{prefix}lora_B.{j}.weight"] = (d_out, RANK)
            shapes[f"{prefix}lora_route.weight"] = (NUM_EXPERTS, TASK_DIM)
            shapes[f"{prefix}lora_route.bias"] = (NUM_EXPERTS,)
    return shapes


def check_keys(infos: dict[str, st.TensorInfo], expected: dict[str, tuple[int, ...]], source: Path) -> None:
    """Raise ReleasedLayoutError naming the first missing, unexpected, misshapen or non-float tensor."""
    missing = [name for name in expected if name not in infos]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ReleasedLayoutError(f"{source}: missing tensor {missing[0]}{more}")
    unexpected = sorted(set(infos) - set(expected))
    if unexpected:
        raise ReleasedLayoutError(f"{source}: unexpected tensor {unexpected[0]} for the released layout "
                           f"({NUM_EXPERTS} experts of rank {RANK}, router {TASK_DIM} -> {NUM_EXPERTS})")
    for name, shape in expected.items():
        if infos[name].shape != shape:
            raise ReleasedLayoutError(f"{source}: tensor {name} has shape {infos[name].shape}, expected {shape}")
        if st.CODES[infos[name].dtype] not in FLOAT_CODES:
            raise ReleasedLayoutError(f"{source}: tensor {name} has dtype {infos[name].dtype}, expected a float")


def check_adapter_config(path: Path) -> None:
    """Raise ReleasedLayoutError when adapter_config.json (if present) differs from the released layout."""
    if not path.is_file():
        return
    raw = jsonio.read_json(path)
    wanted = {"r": RANK, "lora_alpha": ALPHA, "lora_nums": NUM_EXPERTS}
    for key, value in wanted.items():
        if key in raw and raw[key] != value:
            raise ReleasedLayoutError(f"{path}: {key} = {raw[key]!r}, the released layout has {value!r}")
    targets = raw.get("target_modules")
    if targets is not None and sorted(targets) != sorted(f"{p}_proj" for p in TARGETS):
        raise ReleasedLayoutError(f"{path}: target_modules = {targets!r}, expected q_proj, k_proj, v_proj, o_proj")


def _float32(info: st.TensorInfo) -> np.ndarray:
    out = np.empty(info.shape, np.float32)
    st.read_into(info, out)
    return out


def map_adapter(infos: dict[str, st.TensorInfo], num_layers: int,
                dims: dict[str, tuple[int, int]]) -> dict[str, dict[str, np.ndarray]]:
    """{p: {"a", "b", "router_w", "router_b"}} in this package's stacked layout (float32), from checked infos."""
    banks = {}
    for p in TARGETS:
        d_in, d_out = dims[p]
        a = np.empty((num_layers, NUM_EXPERTS, d_in, RANK), np.float32)
        b = np.empty((num_layers, NUM_EXPERTS, RANK, d_out), np.float32)
        router_w = np.empty((num_layers, TASK_DIM, NUM_EXPERTS), np.float32)
        router_b = np.empty((num_layers, NUM_EXPERTS), np.float32)
        for i in range(num_layers):
            prefix = PREFIX.format(i=i, p=p)
            for j in range(NUM_EXPERTS):
                a[i, j] = _float32(infos[f"{prefix}lora_A.{j}.weight"]).T
                b[i, j] = _float32(infos[f"{prefix}lora_B.{j}.weight"]).T
            router_w[i] = _float32(infos[f"{prefix}lora_route.weight"]).T
            router_b[i] = _float32(infos[f"{prefix}lora_route.bias"])
        banks[p] = {"a": a, "b": b, "router_w": router_w, "router_b": router_b}
    return banks


def _load_pth(path: Path) -> Any:
    """torch.load with weights_only=True only; anything it refuses is refused here too."""
    try:
        import torch  # noqa: PLC0415 (only a .pth file needs torch)
    except ImportError:
        raise ReleasedLayoutError(f"{path}: reading a .pth file needs torch; or convert it to .safetensors "
                           "(one tensor named 'weight')") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReleasedLayoutError(f"{path}: refused: not a plain tensor state dict (torch.load weights_only=True "
                           f"rejected it: {first})") from None


def read_task_embedding(path: str | os.PathLike) -> np.ndarray:
    """The released task embedding [14, 512] as float32, from a .pth state dict or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task-embedding file not found")
    if path.suffix == ".safetensors":
        infos = st.read_header(path)
        extra = sorted(set(infos) - {"weight"})
        if "weight" not in infos or extra:
            raise ReleasedLayoutError(f"{path}: expected one tensor 'weight', found {sorted(infos)}")
        info = infos["weight"]
        shape, value = info.shape, None
    else:
        payload = _load_pth(path)
        if not isinstance(payload, dict) or "weight" not in payload:
            raise ReleasedLayoutError(f"{path}: expected a state dict with key 'weight', got {type(payload).__name__}"
                               + (f" with keys {sorted(payload)}" if isinstance(payload, dict) else ""))
        extra = sorted(set(payload) - {"weight"})
        if extra:
            raise ReleasedLayoutError(f"{path}: unexpected key {extra[0]!r} (the task embedding has only 'weight')")
        value = payload["weight"]
        if not hasattr(value, "is_floating_point") or not value.is_floating_point():
            raise ReleasedLayoutError(f"{path}: 'weight' is a {type(value).__name__}, not a float tensor")
        shape = tuple(value.shape)
    if shape != (TASK_TABLE_SIZE, TASK_DIM):
        raise ReleasedLayoutError(f"{path}: 'weight' has shape {shape}, expected {(TASK_TABLE_SIZE, TASK_DIM)}")
    return _float32(info) if value is None else value.float().numpy()


def _params(config: ml_collections.ConfigDict, base: Path, banks: dict[str, dict[str, np.ndarray]],
            task_embedding: np.ndarray) -> Any:
    """The run's trainable-param State (nnx.Param values) filled with the imported arrays."""
    tmole = TMoLEConfig.from_config(config.tmole)
    kinds = tmole.expert_kinds().tolist()
    if kinds != [0] * NUM_EMBEDDING + [2] * NUM_GENERATIVE:  # embedding experts first, then generative
        raise AssertionError(f"bank order {kinds} is not the released expert order")
    model = nnx.eval_shape(lambda: Mistral(read_hf_config(base), tmole=tmole, rngs=nnx.Rngs(0)))
    like = nnx.state(model, nnx.Param)
    arrays = {("adapters", "task_embedding", "value"): task_embedding}
    for p, bank in banks.items():
        for kind in ("a", "b"):
            arrays[("adapters", "banks", p, kind, "value")] = bank[kind]
        arrays[("adapters", "banks", p, "router_w", "0", "value")] = bank["router_w"]
        arrays[("adapters", "banks", p, "router_b", "0", "value")] = bank["router_b"]

    def fill(path, leaf):
        names = tuple(key_name(k) for k in path)
        value = arrays.pop(names)
        if value.shape != leaf.shape:  # the layout above and the model's banks disagree: a bug here
            raise AssertionError(f"{'.'.join(names)}: mapped shape {value.shape}, model has {leaf.shape}")
        return value

    params = jax.tree_util.tree_map_with_path(fill, like)
    if arrays:
        raise AssertionError(f"mapped arrays the model has no place for: {sorted(arrays)}")
    return params


def import_released(adapter: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
                    task_embedding: str | os.PathLike | None = None, dtype: str = "bfloat16",
                    data: str | os.PathLike | None = None) -> Path:
    """Check and convert the released adapters in ``adapter`` for the HF Mistral ``base``; write run ``out``.

    ``task_embedding`` defaults to adapter/embedding_weights.pth. ``dtype`` is the run's base and
    compute dtype (adapters stay float32). Returns the run directory, which `rundir.load_model`,
    `RecFound.from_run`, evaluation and export open.
    """
    adapter, base = Path(adapter).absolute(), Path(base).absolute()
    adapter_file = adapter / ADAPTER_FILE
    if not adapter_file.is_file():
        raise FileNotFoundError(f"{adapter}: no {ADAPTER_FILE} (pickle .bin adapters are not read: save them "
                                "as safetensors)")
    embedding_file = Path(task_embedding).absolute() if task_embedding is not None else adapter / EMBEDDING_FILE
    config = released_config(base, dtype=dtype, data=data)
    base_cfg = read_hf_config(base)
    dims = base_cfg.projection_dims()
    check_adapter_config(adapter / ADAPTER_CONFIG)
    infos = st.read_header(adapter_file)
    check_keys(infos, expected_keys(base_cfg.num_layers, dims), adapter_file)
    table = read_task_embedding(embedding_file)
    params = _params(config, base, map_adapter(infos, base_cfg.num_layers, dims), table)
    adapter_dtypes = sorted({st.CODES[info.dtype] for info in infos.values()})
    source = {"adapter": str(adapter_file), "task_embedding": str(embedding_file), "adapter_dtypes": adapter_dtypes}
    info = {"base": str(base), "base_fingerprint": rundir.base_fingerprint(base),
            "tokenizer": str(rundir.tokenizer_path(base) or default_tokenizer_path()),
            "data": None if data is None else str(Path(data).absolute()),
            "jax": jax.__version__, "imported_from": source}
    return write_run(out, config_lib.to_dict(config), info, params, 0, {"step": 0, "imported_from": source},
                     initial=params)


FLAGS = flags.FlagValues()
_ADAPTER = flags.DEFINE_string("adapter", None, f"released checkpoint folder holding {ADAPTER_FILE}", required=True,
                               flag_values=FLAGS)
_BASE = flags.DEFINE_string("base", None, "HF Mistral-7B-Instruct-v0.3 folder (safetensors)", required=True,
                            flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "the run directory to write (must not exist or be empty)", required=True,
                           flag_values=FLAGS)
_TASK_EMBEDDING = flags.DEFINE_string("task_embedding", None, "task-embedding file, .pth or .safetensors "
                                      f"(default: ADAPTER/{EMBEDDING_FILE})", flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ("bfloat16", "float32"),
                           "the run's base weight and compute dtype (bfloat16 as released)", flag_values=FLAGS)
_DATA = flags.DEFINE_string("data", None, "dataset folder recorded in the run (for evaluation)", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Import and print where the run is."""
    cli.parse(FLAGS, argv, __doc__)

    def convert() -> str:
        out = import_released(_ADAPTER.value, _BASE.value, _OUT.value, task_embedding=_TASK_EMBEDDING.value,
                              dtype=_DTYPE.value, data=_DATA.value)
        return f"imported {_ADAPTER.value} onto {_BASE.value} as run {out} (checkpoint 0)"

    # ValueError: a ReleasedLayoutError or ConfigError
    return cli.attempt(convert, ValueError, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    cli.run(main)
