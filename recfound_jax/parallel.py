"""The device mesh and the partition rules for every parameter and batch, in one place.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with parameters sharded), ``tensor``
(heads / MLP width). Base weights are sharded over fsdp on their model dimension and over tensor on
their head or MLP dimension; expert banks follow the base dimension they attach to; routers and the
task embedding are small and replicated. A dimension that a mesh axis does not divide is left
unsharded on that axis, so tiny test models run on any mesh.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex over the "/"-joined parameter path, partition spec). First match wins. Base weights are in
# HF layout [L, out, in]; banks are a [L, N, in, r] and b [L, N, r, out].
PARAM_RULES: tuple[tuple[str, tuple], ...] = (
    (r"^(embed|lm_head)$", ("tensor", "fsdp")),
    (r"^final_norm$", (None,)),
    (r"^layers/(attn_norm|mlp_norm)$", (None, None)),
    (r"^layers/(q|k|v|gate|up)$", (None, "tensor", "fsdp")),
    (r"^layers/(o|down)$", (None, "fsdp", "tensor")),
    (r"^adapters/banks/(q|k|v)/a$", (None, None, "fsdp", None)),
    (r"^adapters/banks/(q|k|v)/b$", (None, None, None, "tensor")),
    (r"^adapters/banks/o/a$", (None, None, "tensor", None)),
    (r"^adapters/banks/o/b$", (None, None, None, "fsdp")),
    (r"^adapters/", ()),  # routers and the task embedding: replicated
)


def resolve_mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes for ``device_count`` devices; one entry may be -1 (the rest)."""
    shape = [int(s) for s in shape]
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape} must have 3 entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if known <= 0 or device_count % known:
            raise ValueError(f"mesh shape {shape} does not divide {device_count} devices")
        shape[shape.index(-1)] = device_count // known
    if int(np.prod(shape)) > device_count:
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, {device_count} available")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one entry may be -1 and takes the rest of the devices.

    A fully specified shape may use fewer devices than there are (the first ones).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices[:int(np.prod(sizes))]).reshape(sizes), MESH_AXES)


def _fit(spec: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The spec with every axis dropped that does not divide its dimension."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axis in zip(shape, spec):
        fitted.append(axis if axis is None or dim % mesh.shape[axis] == 0 else None)
    return P(*fitted)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The partition spec of the parameter at ``path`` ("layers/q", "adapters/banks/o/b", ...)."""
    for pattern, spec in PARAM_RULES:
        if re.search(pattern, path):
            return _fit(spec, shape, mesh)
    raise KeyError(f"no partition rule for parameter {path!r}; add one to recfound_jax/parallel.py PARAM_RULES")


def path_str(path: tuple[Any, ...]) -> str:
    """A pytree/NNX key path as "a/b/c" (an NNX Variable's trailing ``.value`` is left out)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue
        key = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
        parts.append(str(key))
    return "/".join(parts)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of an NNX state (or any pytree keyed like the model)."""
    def one(path, leaf):
        return NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape), mesh))

    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays: the leading (sample) axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on the mesh."""
    return NamedSharding(mesh, P())
