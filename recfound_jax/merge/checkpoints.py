"""TIES over a run's Orbax checkpoints, one leaf at a time, written out as a new run directory.

Reading: each checkpoint's trainable params (adapters, routers, task embedding) are an Orbax PyTree
item (run_dir/checkpoints/<step>/params, and run_dir/initial_params for the state before training).
A leaf is read on its own with Orbax's partial restore, so at any moment the merge holds the k + 1
values of one leaf (init and k checkpoints) plus the merged leaves done so far. Peak host memory is
one merged trainable state, plus the k + 1 values of the largest leaf and the merge's temporaries
for it (host and device copies, task vectors, masks), plus the process (measured: docs/benchmarks.md).
The merged state is kept whole before it is saved because Orbax writes a checkpoint in one call.
The base weights are never read.

Trimming is per released tensor (one per layer and expert for A and B, one per layer for a router
weight or bias, the task embedding whole), as the released merge script and peft's per-parameter
TIES do (`released_batch_dims`).

Writing: `write_run` makes a run directory that `rundir.load_model` opens: config.json, run.json,
checkpoints/<step> (params and a meta record) and initial_params. The import of the released
adapters (recfound_jax.convert.released) writes its run through it too.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from tqdm.auto import tqdm

from recfound_jax import jsonio
from recfound_jax.merge.ties import Method, Order, ties_merge_stream
from recfound_jax.runs import checkpoint, rundir

# A leaf's address as Orbax stores it: the names of its keys from the root, e.g.
# ("adapters", "banks", "q", "router_w", "0", "value").
Names = tuple[str, ...]
INITIAL_STEP = 0


class MergeError(ValueError):
    """The checkpoints cannot be merged: a step is missing or a leaf differs between them."""


def key_name(key: Any) -> str:
    """The name Orbax gives one pytree key: a dict key, an attribute name or a sequence index."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    raise TypeError(f"unsupported pytree key {key!r}")


def leaf_names(tree: Any) -> dict[Names, Any]:
    """{names of a leaf: leaf} for every leaf of a pytree (an nnx.State or nested dicts)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(key_name(k) for k in path): leaf for path, leaf in flat}


def dotted(names: Names) -> str:
    """A leaf's names joined with dots, as errors and logs show it."""
    return ".".join(names)


def released_batch_dims(names: Names) -> int:
    """Leading axes of a leaf that index separate released tensors (each trimmed on its own).

    A, B [L, N, ...]: one tensor per layer and expert (2); router weights and biases [L, ...]: one per
    layer (1); the task embedding and anything else: the whole leaf (0).
    """
    bank = next((i for i, name in enumerate(names) if name in ("banks", "added_banks")), None)
    if bank is None:
        return 0
    kind = names[bank + 2]  # banks / <target> / <kind>
    return 2 if kind in ("a", "b") else 1


def item_directory(run_dir: str | os.PathLike, step: int) -> Path:
    """The Orbax params item of a step: checkpoints/<step>/params, or initial_params for step 0."""
    run_dir = Path(run_dir).absolute()
    if step == INITIAL_STEP:
        return run_dir / checkpoint.INITIAL
    return run_dir / checkpoint.CHECKPOINTS / str(step) / "params"


def stored_leaves(item_dir: Path) -> dict[Names, Any]:
    """{names: Orbax ArrayMetadata (shape, dtype)} of every leaf stored in a params item."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return leaf_names(handler.metadata(epath.Path(item_dir)).tree)
    finally:
        handler.close()


def restore_leaf(item_dir: Path, names: Names, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """One leaf of a params item, read alone (Orbax partial restore) into host memory."""
    item: Any = jax.ShapeDtypeStruct(shape, dtype)
    args: Any = ocp.RestoreArgs(restore_type=np.ndarray)
    for name in reversed(names):
        item, args = {name: item}, {name: args}
    handler = ocp.PyTreeCheckpointHandler()
    try:
        restored = handler.restore(epath.Path(item_dir),
                                   args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    finally:
        handler.close()
    for name in names:
        restored = restored[name]
    return restored


def available_steps(run_dir: str | os.PathLike) -> list[int]:
    """Completed checkpoint steps of a run, with 0 first when the run kept its initial params."""
    with checkpoint.Checkpointer(run_dir) as checkpointer:
        steps = checkpointer.steps()
    has_initial = (Path(run_dir) / checkpoint.INITIAL).is_dir()
    return ([INITIAL_STEP] if has_initial and INITIAL_STEP not in steps else []) + steps


def check_steps(run_dir: str | os.PathLike, steps: Sequence[int], init_step: int) -> None:
    """Raise MergeError unless every step (and the init) exists once and the init is not merged."""
    available = available_steps(run_dir)
    for step in (init_step, *steps):
        if step not in available:
            what = "--init_step" if step == init_step else "step"
            raise MergeError(f"{run_dir}: no checkpoint for {what} {step}; available steps: {available}"
                             + (" (0 = the initial params)" if INITIAL_STEP in available else ""))
    if len(set(steps)) != len(steps):
        raise MergeError(f"steps {list(steps)} repeat a step")
    if init_step in steps:
        raise MergeError(f"the init step {init_step} is also among the merged steps {list(steps)}")


def check_leaves(expected: dict[Names, Any], stored: dict[Names, Any], where: str) -> None:
    """Raise MergeError naming the first leaf that is missing, extra or of another shape or dtype."""
    for names, like in expected.items():
        if names not in stored:
            raise MergeError(f"{where}: no leaf {dotted(names)}")
        got = stored[names]
        if tuple(got.shape) != tuple(like.shape):
            raise MergeError(f"{where}: leaf {dotted(names)} has shape {tuple(got.shape)}, "
                             f"the run's config gives {tuple(like.shape)}")
        if np.dtype(got.dtype) != np.dtype(like.dtype):
            raise MergeError(f"{where}: leaf {dotted(names)} has dtype {got.dtype}, expected {like.dtype}")
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise MergeError(f"{where}: unexpected leaf {dotted(extra[0])}")


def merge_params(
    run_dir: str | os.PathLike,
    steps: Sequence[int],
    *,
    init_step: int = INITIAL_STEP,
    density: float = 0.8,
    lam: float = 1.0,
    order: Order = "ties",
    method: Method = "ties",
    progress: bool = True,
) -> Any:
    """The merged trainable params of a run's checkpoints ``steps`` (an nnx.State like the run's params).

    Task vectors are taken against ``init_step`` (0: the initial params). Every checkpoint's leaves
    are checked against the run's config before anything is merged; a leaf is read only when the
    merge reaches it (see the module docstring for the memory this takes).
    """
    like = rundir.params_like(run_dir)  # raises first when run_dir is not a run
    check_steps(run_dir, steps, init_step)
    expected = leaf_names(like)
    sources = [item_directory(run_dir, step) for step in (init_step, *steps)]
    for step, source in zip((init_step, *steps), sources):
        check_leaves(expected, stored_leaves(source), f"{run_dir} step {step}")

    def load(source: Path, names: Names) -> np.ndarray:
        return restore_leaf(source, names, expected[names].shape, expected[names].dtype)

    stream = ties_merge_stream(
        list(expected), lambda names: load(sources[0], names), lambda k, names: load(sources[k + 1], names),
        len(steps), density=density, lam=lam, order=order, method=method, batch_dims=released_batch_dims)
    merged = {names: np.asarray(leaf) for names, leaf in
              tqdm(stream, total=len(expected), desc="merge", unit="leaf", disable=not progress)}
    return jax.tree_util.tree_map_with_path(
        lambda path, _: merged[tuple(key_name(k) for k in path)], like)


def write_run(
    out: str | os.PathLike,
    config: dict[str, Any],
    info: dict[str, Any],
    params: Any,
    step: int,
    meta: dict[str, Any],
    *,
    initial: Any | None = None,
    initial_from: str | os.PathLike | None = None,
) -> Path:
    """Write a run directory: config.json, run.json, checkpoints/<step> and initial_params.

    The initial params are ``initial`` (a pytree) or a copy of another run's initial_params folder
    (``initial_from``), or absent when neither is given. Refuses a directory that holds anything.
    """
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    jsonio.write_json(out / rundir.CONFIG_FILE, config)
    jsonio.write_json(out / rundir.RUN_FILE, info)
    with checkpoint.Checkpointer(out) as checkpointer:
        checkpointer.save(step, params, None, meta)
        if initial is not None:
            checkpointer.save_initial(initial)
    if initial is None and initial_from is not None:
        shutil.copytree(Path(initial_from), out / checkpoint.INITIAL)
    return out


def merge_run(
    run_dir: str | os.PathLike,
    steps: Sequence[int],
    out: str | os.PathLike,
    *,
    init_step: int = INITIAL_STEP,
    density: float = 0.8,
    lam: float = 1.0,
    order: Order = "ties",
    method: Method = "ties",
    progress: bool = True,
) -> Path:
    """Merge checkpoints ``steps`` of a run into a new run directory ``out`` that `rundir.load_model` opens.

    ``out`` gets the run's config.json, its run.json with a "merged_from" record, one checkpoint at
    the largest merged step holding the merged params (its meta names the merge), and a copy of the
    run's initial params when it kept them.
    """
    run_dir = Path(run_dir).absolute()
    settings = {"run": str(run_dir), "steps": [int(s) for s in steps], "init_step": int(init_step),
                "density": float(density), "lam": float(lam), "order": order, "method": method,
                "trim": "per released tensor"}
    merged = merge_params(run_dir, steps, init_step=init_step, density=density, lam=lam, order=order,
                          method=method, progress=progress)
    config = jsonio.read_json(run_dir / rundir.CONFIG_FILE)
    info = dict(rundir.read_run_info(run_dir), merged_from=settings)
    step = max(steps)
    initial = run_dir / checkpoint.INITIAL
    return write_run(out, config, info, merged, step, {"step": step, "merge": settings},
                     initial_from=initial if initial.is_dir() else None)
