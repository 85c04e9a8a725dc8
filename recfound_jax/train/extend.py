"""Adding tasks to a trained run: ``python -m recfound_jax.train --config CFG --extend RUN_DIR``.

The new run starts from RUN_DIR's trained params. Its new tasks are those CFG trains that RUN_DIR did not:
tasks CFG's ``added_tasks`` adds to the table (ids 14, ...; the table grows by their rows), or released
tasks RUN_DIR's ``data.tasks`` left out. Two modes (``extend.mode``):

- ``frozen``: only the new tasks' rows of the task-embedding table train, and the added experts
  (``extend.new_experts``, which only the tasks of ``extend.expert_tasks`` route to, new tasks only).
  Nothing an old task reads changes, so its outputs are bit-identical to RUN_DIR's. The step masks the
  gradient and the update of everything else.
- ``replay``: every adapter trains on the new tasks and ``extend.replay_fraction`` of each old task's train
  rows, all scheduled by S2Sched, so shared experts may move for the new tasks.

A new task's row starts as the mean of the trained rows of its kind (``extend.init = "mean"``) or fresh.
The new run's initial params are these grown params, so TIES task vectors of its checkpoints are what the
extension learned; run.json records the run and step it extends (`lineage`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax import parallel
from recfound_jax.runs import rundir
from recfound_jax.tasks import Task

TASK_EMBEDDING = "adapters/task_embedding"
SAME_KEYS = ("model", "tmole")  # sections an extension must share with the run it extends


class ExtendError(config_lib.ConfigError):
    """A config that cannot extend the given run; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Extension:
    """What an extension trains: the run and checkpoint it starts from, its mode and new tasks, and the
    (embedding, generative) tasks its batches draw (the new ones when frozen, all when replaying)."""

    parent: Path
    step: int
    mode: str
    init: str
    new_tasks: tuple[Task, ...]
    old_tasks: tuple[Task, ...]
    trained: tuple[tuple[Task, ...], tuple[Task, ...]]
    replay_fraction: float

    def record(self) -> dict[str, Any]:
        """The run.json entry of the extension."""
        return {"run": str(self.parent), "step": self.step, "mode": self.mode, "init": self.init,
                "new_tasks": [t.name for t in self.new_tasks], "old_tasks": [t.name for t in self.old_tasks],
                "replay_fraction": self.replay_fraction if self.mode == "replay" else None}


def plan(c: ml_collections.ConfigDict, parent: str | os.PathLike, step: int | None = None) -> Extension:
    """The extension of run ``parent`` (its checkpoint ``step``, default the latest) by config ``c``;
    ExtendError naming the key when ``c`` cannot extend it."""
    parent = Path(parent).absolute()
    old = rundir.read_config(parent)
    for section in SAME_KEYS:
        was, now = (json.loads(json.dumps(config_lib.to_dict(x[section]))) for x in (old, c))  # tuples as lists
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if changed:
            raise ExtendError(f"config.{section}.{changed[0]}: {now.get(changed[0])!r} differs from the "
                              f"extended run's {was.get(changed[0])!r} ({parent / rundir.CONFIG_FILE})")
    old_table, table = config_lib.task_table(old), config_lib.task_table(c)
    if table.tasks[:len(old_table.tasks)] != old_table.tasks:
        raise ExtendError(f"config.added_tasks: must start with the extended run's added tasks "
                          f"{[t.short for t in old_table.added]} ({parent / rundir.CONFIG_FILE})")
    old_experts = config_lib.expert_tasks(old) if old.extend.new_experts else ()
    if old_experts and c.extend.new_experts != old.extend.new_experts:
        raise ExtendError(f"config.extend.new_experts: the extended run has {old.extend.new_experts} added "
                          f"experts; an extension keeps them ({c.extend.new_experts} given)")
    old_tasks = tuple(t for kind in config_lib.run_tasks(old) for t in kind)
    tasks = tuple(t for kind in config_lib.run_tasks(c) for t in kind)
    missing = [t.short for t in old_tasks if t not in tasks]
    if missing:
        raise ExtendError(f"config.data.tasks: leaves out {missing}, which the extended run trains; an "
                          "extension keeps every old task")
    new = tuple(t for t in tasks if t not in old_tasks)
    if not new:
        raise ExtendError(f"config.added_tasks: no new task; the extended run already trains "
                          f"{[t.short for t in old_tasks]} (add tasks, or name more in config.data.tasks)")
    experts = config_lib.expert_tasks(c) if c.extend.new_experts else ()
    moved = [t.short for t in set(old_experts) ^ set(experts) if t not in new]
    if moved:
        raise ExtendError(f"config.extend.expert_tasks: {sorted(moved)} are old tasks whose routing to the added "
                          f"experts would change; only new tasks can be routed to new experts")
    with rundir.checkpoint.Checkpointer(parent) as checkpointer:
        latest = checkpointer.latest_step()
        if latest is None or (step is not None and step not in checkpointer.steps()):
            raise ExtendError(f"--extend {parent}: no checkpoint {'yet' if step is None else step} "
                              f"(have {checkpointer.steps()})")
    frozen = c.extend.mode == "frozen"
    pick = lambda kind: tuple(t for t in kind if t in new or not frozen)  # noqa: E731
    trained = tuple(pick(kind) for kind in config_lib.run_tasks(c))
    return Extension(parent, latest if step is None else step, c.extend.mode, c.extend.init, new, old_tasks,
                     trained, c.extend.replay_fraction)


def check_base(ext: Extension, base: Path) -> None:
    """ExtendError unless ``base`` (the new run's) is the base the extended run was trained on."""
    info = rundir.read_run_info(ext.parent)
    if rundir.base_fingerprint(base) != info["base_fingerprint"]:
        raise ExtendError(f"config.model.base: {base} is not the base {info['base']} that {ext.parent} was "
                          f"trained on (fingerprints {rundir.base_fingerprint(base)} and {info['base_fingerprint']})")


def from_record(record: dict[str, Any], c: ml_collections.ConfigDict) -> Extension:
    """The Extension a run.json entry (`Extension.record`) describes, for resuming an extension."""
    return plan(c, record["run"], record["step"])


def grow_params(ext: Extension, params: nnx.State) -> nnx.State:
    """``params`` (the new run's fresh trainable params) with every leaf the extended run has taken from
    its checkpoint: the task-embedding table's old rows, the banks, routers and, if any, added banks. The
    new tasks' rows are then set by ``extend.init``. Each leaf keeps ``params``' sharding."""
    with rundir.checkpoint.Checkpointer(ext.parent) as checkpointer:  # the trained params only, not the base
        restored, _, _ = checkpointer.restore(ext.step, rundir.params_like(ext.parent))
    old = {parallel.path_str(p): np.asarray(jax.device_get(x))
           for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
    def take(path, leaf):
        name = parallel.path_str(path)
        if name not in old:
            return leaf
        value = old[name]
        if name == TASK_EMBEDDING:
            rows = np.array(jax.device_get(leaf))
            rows[:value.shape[0]] = value
            if ext.init == "mean":
                for task in ext.new_tasks:
                    same_kind = [t.id for t in ext.old_tasks if t.kind == task.kind]
                    if same_kind:
                        rows[task.id] = value[same_kind].mean(axis=0)
            value = rows
        elif value.shape != leaf.shape:
            raise ExtendError(f"{name}: the extended run's {value.shape} does not fit the new run's {leaf.shape}")
        return jax.device_put(jnp.asarray(value, leaf.dtype), leaf.sharding)

    return jax.tree_util.tree_map_with_path(take, params)


def trainable_mask(ext: Extension, params: nnx.State, c: ml_collections.ConfigDict) -> Any | None:
    """None (every param trains) when replaying; when frozen, a tree like ``params`` of 0/1 factors on
    gradients and updates: 1 on the new tasks' task-embedding rows and on added banks the extended run did
    not have, 0 everywhere else."""
    if ext.mode != "frozen":
        return None
    old_model_has = {parallel.path_str(p) for p, _ in
                     jax.tree_util.tree_flatten_with_path(rundir.params_like(ext.parent))[0]}
    rows = config_lib.task_table(c).rows
    new_rows = np.zeros((rows, 1), np.float32)
    new_rows[[t.id for t in ext.new_tasks]] = 1.0

    def factor(path, leaf):
        name = parallel.path_str(path)
        if name == TASK_EMBEDDING:
            return jnp.asarray(new_rows)
        return jnp.ones((), leaf.dtype) if name not in old_model_has else jnp.zeros((), leaf.dtype)

    return jax.tree_util.tree_map_with_path(factor, params)


def lineage(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The chain of runs ``run_dir`` extends, nearest first: each run.json's "extends" entry."""
    chain, run = [], Path(run_dir)
    while (entry := rundir.read_run_info(run).get("extends")) is not None:
        chain.append(entry)
        run = Path(entry["run"])
    return chain


def keep_replay_rows(ext: Extension, pools: dict[int, Any], seed: int) -> dict[str, int]:
    """Replay: shrink each old task's pool (`batching.TaskPool`) to ``replay_fraction`` of its rows, drawn
    by ``seed`` (at least one row); returns the rows kept per task name. Call before the first draw."""
    if ext.mode != "replay":
        return {}
    kept = {}
    for task in ext.old_tasks:
        pool = pools.get(task.id)
        if pool is None or not len(pool):
            continue
        n = max(1, int(np.ceil(ext.replay_fraction * len(pool))))
        order = np.random.default_rng([seed, 7, task.id]).permutation(len(pool))
        pool.rows = np.sort(pool.rows[order[:n]])
        kept[task.name] = n
    return kept
