"""Many processes (many hosts): start `jax.distributed` from the environment, and the GPU launcher's XLA flags.

One process runs per host (or per GPU); every process runs the same program on its share of the
global batch. Which processes form the job comes from, in order:

- ``RECFOUND_COORDINATOR=host:port``, ``RECFOUND_NUM_PROCESSES=N``, ``RECFOUND_PROCESS_ID=i`` (and
  optionally ``RECFOUND_LOCAL_DEVICES=0,1``: the local devices this process drives), set by hand or
  by any launcher;
- ``RECFOUND_COORDINATOR=auto``: jax's own cluster detection (Cloud TPU pod slices, GKE, Open MPI);
- SLURM (``SLURM_JOB_ID`` with more than one task): jax's SLURM detection, one process per task;
- otherwise one process, and nothing is started.

Both functions must run before jax touches a device (the train CLI calls them first); importing jax is
fine, since it reads XLA_FLAGS when its backend starts, at the first device use.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, MutableMapping

import jax

COORDINATOR = "RECFOUND_COORDINATOR"
NUM_PROCESSES = "RECFOUND_NUM_PROCESSES"
PROCESS_ID = "RECFOUND_PROCESS_ID"
LOCAL_DEVICES = "RECFOUND_LOCAL_DEVICES"

# Overlap the FSDP all-gathers of layer weights with compute: the latency-hiding scheduler, and
# collectives of a scanned layer issued one iteration ahead (pipelined, double-buffered loops).
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)


def _slurm_tasks(env: Mapping[str, str]) -> int:
    return int(env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or 1) if "SLURM_JOB_ID" in env else 1


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Start jax.distributed as the environment says (see the module docstring); True if it started.

    A single process is a no-op. Raises ValueError naming the variable that is missing or out of range.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    coordinator = env.get(COORDINATOR, "").strip()
    if coordinator == "auto":
        _use_cpu_collectives(env)
        jax.distributed.initialize()
        return True
    if coordinator:
        count, index = _int_var(env, NUM_PROCESSES), _int_var(env, PROCESS_ID)
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"{PROCESS_ID}={index} must be in [0, {NUM_PROCESSES}={count})")
        if count == 1:
            return False
        local = env.get(LOCAL_DEVICES, "").strip()
        _use_cpu_collectives(env)
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=count, process_id=index,
                                   local_device_ids=[int(d) for d in local.split(",")] if local else None)
        return True
    if _slurm_tasks(env) > 1:
        _use_cpu_collectives(env)
        jax.distributed.initialize()  # jax reads the SLURM_* variables itself
        return True
    return False


def _int_var(env: Mapping[str, str], name: str) -> int:
    if name not in env:
        raise ValueError(f"{COORDINATOR} is set, so {name} must be set too")
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None


def _use_cpu_collectives(env: Mapping[str, str]) -> None:
    """Cross-process collectives on CPU devices go through gloo (also jax's default today)."""
    if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def targets_gpu(env: Mapping[str, str] | None = None) -> bool:
    """Whether jax will run on NVIDIA GPUs: JAX_PLATFORMS says so, or is unset and a CUDA plugin is installed."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] in ("cuda", "gpu")
    return any(_installed(name) for name in ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13",
                                             "jax_plugins.xla_cuda12"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def set_gpu_xla_flags(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Add `GPU_XLA_FLAGS` to XLA_FLAGS when running on GPU; a flag the user already set is kept as set.

    Call before jax initialises its backend. Returns the flags added.
    """
    env = os.environ if env is None else env
    if not targets_gpu(env):
        return []
    current = env.get("XLA_FLAGS", "")
    set_names = {flag.split("=")[0] for flag in current.split()}
    added = [flag for flag in GPU_XLA_FLAGS if flag.split("=")[0] not in set_names]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
