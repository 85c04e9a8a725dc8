"""Streaming safetensors reading and writing in numpy, bfloat16 included (through ml_dtypes).

The reader parses the header and reads each tensor straight into a caller's buffer with `readinto`,
so a model loads one tensor at a time without mapping whole files into memory. The writer emits the
standard format (8-byte little-endian header size, JSON header, raw little-endian data) and shards
above a size with HF's `model.safetensors.index.json`.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from recfound_jax import jsonio

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range inside the file."""

    def __init__(self, file: Path, dtype: np.dtype, shape: tuple[int, ...], start: int, end: int):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Tensor infos of one .safetensors file; raises ValueError naming the file on a malformed header."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{file}: not a safetensors file (shorter than its header size)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{file}: unreadable safetensors header: {err}") from None
    base = 8 + size
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in DTYPES:
            raise ValueError(f"{file}: tensor {name}: unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        infos[name] = TensorInfo(file, DTYPES[meta["dtype"]], tuple(meta["shape"]), base + start, base + end)
    return infos


def index_checkpoint(directory: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor infos of a HF checkpoint directory: model.safetensors or a sharded index."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = jsonio.read_json(index)["weight_map"]
        infos = {}
        for file in sorted(set(weight_map.values())):
            if not file.endswith(".safetensors"):
                raise ValueError(f"{index}: weight file {file!r} is not a .safetensors file; recfound_jax loads "
                                 "safetensors only (pickle files can run arbitrary code)")
            infos.update(read_header(directory / file))
        return infos
    single = directory / SINGLE_FILE
    if single.is_file():
        return read_header(single)
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
    if pickles:
        raise ValueError(f"{directory}: only pickle weights ({', '.join(pickles)}); recfound_jax loads "
                         "safetensors only (pickle files can run arbitrary code)")
    raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


def empty_aligned(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    JAX's CPU backend adopts a 64-byte-aligned numpy buffer without copying it (device_put with
    may_alias=True), which keeps a loaded model from being held twice in host memory.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def read_into(info: TensorInfo, out: np.ndarray) -> None:
    """Read one tensor into ``out`` (same shape; same dtype or converted through a temporary)."""
    if out.shape != info.shape:
        raise ValueError(f"shape {info.shape} does not fit buffer {out.shape}")
    target = out if (out.dtype == info.dtype and out.flags.c_contiguous) else np.empty(info.shape, info.dtype)
    with open(info.file, "rb") as f:
        f.seek(info.start)
        view = memoryview(target.reshape(-1).view(np.uint8))
        if f.readinto(view) != info.end - info.start:
            raise ValueError(f"{info.file}: truncated tensor data at bytes {info.start}..{info.end}")
    if target is not out:
        out[...] = target


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a new numpy array in its stored dtype."""
    out = np.empty(info.shape, info.dtype)
    read_into(info, out)
    return out


def write_checkpoint(
    directory: str | os.PathLike,
    tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
    *,
    max_shard_bytes: int = 4 * 2**30,
    single_file: str = SINGLE_FILE,
) -> list[Path]:
    """Write tensors given lazily as (name, shape, dtype, produce) into shards of at most max_shard_bytes.

    One file is named ``single_file`` (model.safetensors); several are model-0000i-of-0000n.safetensors plus
    the index.
    Each tensor is produced only when it is written, so memory holds one tensor at a time.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[list] = [[]]
    size = 0
    for name, shape, dtype, produce in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tuple(shape), np.dtype(dtype), produce))
        size += nbytes
    names = ([single_file] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for file_name, shard in zip(names, shards):
        total += _write_file(directory / file_name, shard)
        weight_map.update({entry[0]: file_name for entry in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        jsonio.write_json(directory / INDEX_FILE, index)
    return [directory / n for n in names]


def _write_file(path: Path, shard: list) -> int:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype, _ in shard:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in shard:
            array = np.ascontiguousarray(produce(), dtype=dtype)
            if array.shape != shape:
                raise ValueError(f"{name}: produced shape {array.shape}, declared {shape}")
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
    os.replace(tmp, path)
    return offset
