"""TIES merging of fine-tuned checkpoints, one leaf at a time (docs/method.md, "TIES").

Task vectors tau_k = theta_k - theta_init are merged leaf by leaf:

- order="ties" (published TIES, the default): trim each tau_k to its int(density * size) entries of
  largest magnitude, elect the sign of the sum of the trimmed vectors (a zero sum elects +), and
  average the trimmed entries that agree with it (zeros do not count). Same as peft's
  `merge_utils.ties` with all weights 1.
- order="released" (the released merge script): elect sign(sum of the untrimmed tau_k) (a zero sum
  elects 0), zero the entries that disagree, trim each model's remaining vector to the top
  int(density * size) magnitudes, sum, and divide by the number of models that agreed before trimming.
- method="linear": the plain mean of the tau_k.

Trimming is per tensor: a leaf's first `batch_dims` axes can index separate tensors (the released
adapters hold one tensor per layer and expert). The elected sign and the mean are elementwise.
The result is theta_init + lam * merged, in the dtype of theta_init. Only the k values of one leaf are
held at a time, never k whole models, and leaves may be loaded lazily so a caller can stream them from
checkpoints (`ties_merge_stream`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

Order = Literal["ties", "released"]
Method = Literal["ties", "linear"]
ORDERS: tuple[str, ...] = ("ties", "released")
METHODS: tuple[str, ...] = ("ties", "linear")

# A leaf given now (an array) or later (a zero-argument callable returning one).
LazyLeaf = Any


def keep_count(size: int, density: float) -> int:
    """Number of entries a tensor of `size` entries keeps at `density`: int(density * size), as peft."""
    if density >= 1.0:
        return size
    return int(density * size)


def top_magnitude_mask(x: jax.Array, keep: int) -> jax.Array:
    """Mask of exactly `keep` largest-magnitude entries in each row (last axis) of the float32 `x`.

    Entries tied at the threshold are taken in index order (lower index first, as lax.top_k).
    The threshold is the keep-th largest |x| of the row, found by a binary search over the float32
    bit patterns (31 counting passes), which on CPU is faster than a sort or lax.top_k (docs/benchmarks.md).
    """
    size = x.shape[-1]
    if keep >= size:
        return jnp.ones(x.shape, dtype=bool)
    if keep <= 0:
        return jnp.zeros(x.shape, dtype=bool)
    # Non-negative float32 values order the same way as their bit patterns read as unsigned ints.
    bits = lax.bitcast_convert_type(jnp.abs(x), jnp.uint32).reshape(-1, size)
    rows = bits.shape[0]

    def halve(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bounds  # invariant per row: count(bits >= low) >= keep > count(bits >= high)
        mid = low + (high - low) // 2
        enough = jnp.sum(bits >= mid[:, None], axis=1) >= keep
        return jnp.where(enough, mid, low), jnp.where(enough, high, mid)

    bounds = (jnp.zeros(rows, jnp.uint32), jnp.full(rows, 2**31, jnp.uint32))
    threshold, _ = lax.fori_loop(0, 31, halve, bounds)
    above = bits > threshold[:, None]
    at = bits == threshold[:, None]
    room = keep - jnp.sum(above, axis=1)

    def first_ties_only() -> jax.Array:
        return above | (at & (jnp.cumsum(at, axis=1) <= room[:, None]))

    # The cumsum costs as much as the search: skip it when every tied entry fits (the usual case).
    all_fit = jnp.all(jnp.sum(at, axis=1) == room)
    return lax.cond(all_fit, lambda: above | at, first_ties_only).reshape(x.shape)


def _trim(tau: jax.Array, keep: int) -> jax.Array:
    """Zero all but the `keep` largest-magnitude entries of each tensor (row) of tau [tensors, size]."""
    return jnp.where(top_magnitude_mask(tau, keep), tau, 0.0)


def _count(masks: Sequence[jax.Array]) -> jax.Array:
    return sum(mask.astype(jnp.float32) for mask in masks)


def _ties_delta(taus: Sequence[jax.Array], keep: int) -> jax.Array:
    """Published TIES: trim each tau, elect the sign of the sum, disjoint mean."""
    trimmed = [_trim(tau, keep) for tau in taus]
    elected = jnp.where(sum(trimmed) >= 0, 1.0, -1.0)
    agree = [jnp.sign(tau) == elected for tau in trimmed]
    total = sum(jnp.where(a, tau, 0.0) for a, tau in zip(agree, trimmed))
    return total / jnp.maximum(_count(agree), 1.0)


def _released_delta(taus: Sequence[jax.Array], keep: int) -> jax.Array:
    """The released order: elect on untrimmed taus, zero disagreeing, trim, mean over agreeing."""
    elected = jnp.sign(sum(taus))
    agree = [jnp.sign(tau) == elected for tau in taus]
    total = sum(_trim(jnp.where(a, tau, 0.0), keep) for a, tau in zip(agree, taus))
    return total / jnp.maximum(_count(agree), 1.0)


@functools.partial(jax.jit, static_argnames=("batch_dims", "keep", "order", "method"))
def _merge_leaf(
    init: jax.Array,
    finetuned: tuple[jax.Array, ...],
    lam: jax.Array,
    *,
    batch_dims: int,
    keep: int,
    order: str,
    method: str,
) -> jax.Array:
    """theta_init + lam * merge(tau) for one leaf; `finetuned` holds the k values of this leaf only.

    The leaf is viewed as [tensors, size]: its first `batch_dims` axes index separate tensors,
    each trimmed to its own `keep` entries.
    """
    tensors = math.prod(init.shape[:batch_dims])
    base = init.astype(jnp.float32).reshape(tensors, -1)
    # The k task vectors stay a list reduced with Python sums: on CPU, XLA's concatenate and reduction
    # over a stacked [k, ...] axis cost far more than elementwise sums (docs/benchmarks.md).
    taus = [leaf.astype(jnp.float32).reshape(tensors, -1) - base for leaf in finetuned]
    if method == "linear":
        delta = sum(taus) / len(taus)
    elif order == "ties":
        delta = _ties_delta(taus, keep)
    else:
        delta = _released_delta(taus, keep)
    return (base + lam * delta).reshape(init.shape).astype(init.dtype)


def _check_options(density: float, order: str, method: str) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _resolve(leaf: LazyLeaf) -> jax.Array:
    """An array leaf as is, a lazy leaf (a zero-argument callable) loaded now."""
    return jnp.asarray(leaf() if callable(leaf) else leaf)


def ties_merge_leaf(
    init_leaf: jax.Array,
    finetuned_leaves: Sequence[jax.Array],
    *,
    density: float = 0.8,
    lam: float = 1.0,
    order: Order = "ties",
    method: Method = "ties",
    batch_dims: int = 0,
    name: str = "leaf",
) -> jax.Array:
    """Merge one leaf: `init_leaf` and the k fine-tuned values of the same leaf.

    The first `batch_dims` axes index separate tensors that are trimmed separately (the released
    adapters save one tensor per expert: batch_dims=1 for A[experts, d_in, r], 2 when layers are
    stacked in front). Raises ValueError naming `name` when a fine-tuned value's shape differs from
    the init's, when a value is not floating point, or when there are no fine-tuned values.
    """
    _check_options(density, order, method)
    if len(finetuned_leaves) == 0:
        raise ValueError(f"{name}: no fine-tuned values to merge")
    init = jnp.asarray(init_leaf)
    finetuned = tuple(jnp.asarray(leaf) for leaf in finetuned_leaves)
    for k, leaf in enumerate(finetuned):
        if leaf.shape != init.shape:
            raise ValueError(f"{name}: finetuned[{k}] has shape {leaf.shape}, init has {init.shape}")
    for k, leaf in enumerate((init, *finetuned)):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            who = "init" if k == 0 else f"finetuned[{k - 1}]"
            raise ValueError(f"{name}: {who} has non-float dtype {leaf.dtype}")
    if not 0 <= batch_dims <= init.ndim:
        raise ValueError(f"{name}: batch_dims={batch_dims} is outside [0, {init.ndim}] for shape {init.shape}")
    keep = keep_count(math.prod(init.shape[batch_dims:]), density)
    lam_value = jnp.float32(lam)
    return _merge_leaf(init, finetuned, lam_value, batch_dims=batch_dims, keep=keep, order=order, method=method)


def ties_merge_stream(
    paths: Sequence[Hashable],
    init_leaf: Callable[[Hashable], jax.Array],
    load_leaf: Callable[[int, Hashable], jax.Array],
    num_models: int,
    *,
    density: float = 0.8,
    lam: float = 1.0,
    order: Order = "ties",
    method: Method = "ties",
    batch_dims: int | Callable[[Hashable], int] = 0,
) -> Iterator[tuple[Hashable, jax.Array]]:
    """Merge leaf by leaf, yielding (path, merged leaf) in the order of `paths`.

    `init_leaf(path)` loads the initial value of a leaf and `load_leaf(k, path)` the value in
    fine-tuned model k (0 <= k < num_models). Only one leaf of each model is loaded at a time, so
    a caller can read leaves from checkpoints and write the merged leaves out as they come.
    `batch_dims` (see `ties_merge_leaf`) is one number for all leaves or a function of the path.
    """
    _check_options(density, order, method)
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}")
    for path in paths:
        init = init_leaf(path)
        finetuned = [load_leaf(k, path) for k in range(num_models)]
        merged = ties_merge_leaf(
            init,
            finetuned,
            density=density,
            lam=lam,
            order=order,
            method=method,
            batch_dims=batch_dims(path) if callable(batch_dims) else batch_dims,
            name=_path_name(path),
        )
        yield path, merged


_KEY_TYPES = (
    jax.tree_util.DictKey,
    jax.tree_util.SequenceKey,
    jax.tree_util.GetAttrKey,
    jax.tree_util.FlattenedIndexKey,
)


def _path_name(path: Hashable) -> str:
    """A pytree key path as keystr writes it ("['layers'][0]"), any other path as str."""
    if isinstance(path, tuple) and path and all(isinstance(key, _KEY_TYPES) for key in path):
        return jax.tree_util.keystr(path)
    return str(path)


def _flat_leaves(tree: Any) -> tuple[dict[Any, LazyLeaf], Any]:
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return dict(with_paths), treedef


def _check_same_structure(init_leaves: dict, init_def: Any, other_leaves: dict, other_def: Any, k: int) -> None:
    """Raise ValueError naming the first leaf path where finetuned[k] differs from init."""
    if other_def == init_def:
        return
    missing = [path for path in init_leaves if path not in other_leaves]
    if missing:
        raise ValueError(f"finetuned[{k}] has no leaf at {jax.tree_util.keystr(missing[0])}")
    extra = [path for path in other_leaves if path not in init_leaves]
    if extra:
        raise ValueError(f"finetuned[{k}] has an extra leaf at {jax.tree_util.keystr(extra[0])}")
    raise ValueError(f"finetuned[{k}] has the same leaf paths as init but another structure: {other_def} vs {init_def}")


def ties_merge(
    init: Any,
    finetuned: Sequence[Any],
    *,
    density: float = 0.8,
    lam: float = 1.0,
    order: Order = "ties",
    method: Method = "ties",
    batch_dims: int | Callable[[Hashable], int] = 0,
) -> Any:
    """TIES-merge k fine-tuned pytrees that share the structure of `init`; returns init's structure.

    Leaves are arrays or zero-argument callables that load the array when the merge reaches it.
    `method="linear"` is theta_init + lam * mean(tau); `order="released"` the released elect-then-trim
    variant; `batch_dims` as in `ties_merge_stream`, a function receiving the leaf's key path.
    Raises ValueError naming the leaf path on a structure or shape mismatch.
    """
    _check_options(density, order, method)
    if len(finetuned) == 0:
        raise ValueError("finetuned must hold at least one pytree")
    init_leaves, init_def = _flat_leaves(init)
    model_leaves = []
    for k, tree in enumerate(finetuned):
        leaves, treedef = _flat_leaves(tree)
        _check_same_structure(init_leaves, init_def, leaves, treedef, k)
        model_leaves.append(leaves)
    merged = ties_merge_stream(
        list(init_leaves),
        lambda path: _resolve(init_leaves[path]),
        lambda k, path: _resolve(model_leaves[k][path]),
        len(finetuned),
        density=density,
        lam=lam,
        order=order,
        method=method,
        batch_dims=batch_dims,
    )
    return jax.tree_util.tree_unflatten(init_def, [leaf for _, leaf in merged])
