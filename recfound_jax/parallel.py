"""The device mesh and the partition rules for every parameter, activation and batch, in one place.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with parameters sharded), ``tensor``
(heads / MLP width). Base weights are sharded over fsdp on their model dimension and over tensor on
their head or MLP dimension; expert banks follow the base dimension they attach to; routers and the
task embedding are small and replicated. Batches and activations are split on their sample axis
over data x fsdp. A dimension that a mesh axis does not divide is left unsharded on that axis, so
tiny test models run on any mesh.

A train step is a global program (jax.jit with these shardings): losses see the global batch, so
InfoNCE takes every device's passages as negatives for every query. With many processes, each loads
only its block of the global batch (`batch_share`).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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
    (r"^layers/(q|k|v)_bias$", (None, "tensor")),
    (r"^adapters/(added_)?banks/(q|k|v)/a$", (None, None, "fsdp", None)),
    (r"^adapters/(added_)?banks/(q|k|v)/b$", (None, None, None, "tensor")),
    (r"^adapters/(added_)?banks/o/a$", (None, None, "tensor", None)),
    (r"^adapters/(added_)?banks/o/b$", (None, None, None, "fsdp")),
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


def axis_size(mesh: Mesh | AbstractMesh, axis: str | tuple[str, ...] | None) -> int:
    """The number of devices along a mesh axis, or along several axes together (a tuple)."""
    if axis is None:
        return 1
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    return int(np.prod([mesh.shape[name] for name in names]))


def _fit(spec: tuple, shape: tuple[int, ...], mesh: Mesh | AbstractMesh) -> P:
    """The spec with every axis dropped that does not divide its dimension."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axis in zip(shape, spec):
        fitted.append(axis if axis is None or dim % axis_size(mesh, axis) == 0 else None)
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


# Activations, by name: the sample axis over data x fsdp, everything else whole on each device. With
# these, XLA gathers the fsdp-sharded weights for each layer (FSDP) instead of splitting the matmuls'
# contraction over fsdp and all-reducing activations, which it does when nothing pins the batch.
ACTIVATION_RULES: dict[str, tuple] = {
    "residual": (BATCH_AXES, None, None),  # [B, T, D], the residual stream between layers
}


def constrain(x: jax.Array, rule: str) -> jax.Array:
    """``x`` with the sharding of activation rule ``rule`` when traced under a mesh, else unchanged.

    The mesh is the one `under_mesh` (or ``jax.set_mesh``) makes current; with none (single-device
    code, tests, notebooks) this is the identity. Axes that do not divide a dimension are dropped.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, _fit(ACTIVATION_RULES[rule], tuple(x.shape), mesh))


def under_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` traced with ``mesh`` current, so `constrain` inside it applies; jit the result."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


def batch_share(mesh: Mesh) -> tuple[int, int]:
    """(index, count): this process loads block ``index`` of ``count`` equal blocks of the global batch.

    A process's devices must hold one contiguous run of the batch shards (data x fsdp, row-major),
    which `make_mesh` gives when each process's devices are consecutive in ``jax.devices()``.
    Processes that differ only along ``tensor`` share a block (count < process_count).
    """
    processes = np.vectorize(lambda device: device.process_index, otypes=[int])(mesh.devices)
    return batch_block(processes, jax.process_index())


def batch_block(processes: np.ndarray, process: int) -> tuple[int, int]:
    """`batch_share` for a [data, fsdp, tensor] array of the process index of each mesh device."""
    data, fsdp, _ = processes.shape
    shard_of = np.arange(data * fsdp).reshape(data, fsdp)
    mine = {int(shard_of[d, f]) for d, f, _ in zip(*np.nonzero(processes == process))}
    if not mine:
        raise ValueError(f"process {process} has no device in the mesh")
    low, size = min(mine), len(mine)
    if mine != set(range(low, low + size)) or low % size or (data * fsdp) % size:
        raise ValueError(f"process {process} holds batch shards {sorted(mine)} of {data * fsdp}: not one "
                         "aligned contiguous block; order the mesh's devices by process")
    return low // size, data * fsdp // size
