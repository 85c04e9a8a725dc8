"""Orbax checkpoints of a run: trainable params, optimizer state and a JSON meta record.

Layout of a run directory:
  config.json          the run's config
  run.json             base checkpoint path and fingerprint, tokenizer, how the run was made
  checkpoints/<step>/  params, opt_state, meta (S2Sched states, data position, RNG key, step)
  initial_params/      the trainable state before the first update (TIES task vectors start here)
  metrics.jsonl        one JSON object a step
The base weights are never copied into checkpoints: run.json names them and a fingerprint checks
them. The initial params live apart from the rotating checkpoints, so they are never rotated out.
Orbax writes each step into a temporary folder and renames it when
complete, so a half-written checkpoint is never listed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
INITIAL = "initial_params"


class Checkpointer:
    """Saves and restores the checkpoints of one run directory; a context manager that closes itself."""

    def __init__(self, run_dir: str | os.PathLike, *, keep: int = 3):
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        self.initial_directory = Path(run_dir).absolute() / INITIAL
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

    def save(self, step: int, params: Any, opt_state: Any | None, meta: dict[str, Any]) -> None:
        """Write step ``step`` (replacing nothing: a step is written once)."""
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def save_initial(self, params: Any) -> None:
        """Keep the trainable state before any update (written once per run)."""
        if not self.initial_directory.exists():
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(self.initial_directory, params)

    def restore_initial(self, params_like: Any) -> Any:
        """The trainable state before any update."""
        if not self.initial_directory.exists():
            raise FileNotFoundError(f"{self.initial_directory}: this run kept no initial params")
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(self.initial_directory, _abstract(params_like))

    def steps(self) -> list[int]:
        """Completed steps, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, step: int, params_like: Any, opt_state_like: Any | None = None) -> tuple[Any, Any, dict]:
        """(params, opt_state or None, meta) of ``step``, laid out and sharded like the given abstract trees."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint for step {step}; have {self.steps()}")
        items = {"params": ocp.args.StandardRestore(_abstract(params_like)), "meta": ocp.args.JsonRestore()}
        if opt_state_like is not None:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state_like))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["params"], restored.get("opt_state") if opt_state_like is not None else None, restored["meta"]

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

