"""Helpers for the fault tests: run `python -m recfound_jax.train` in a subprocess on the tiny base and
synthetic data, watch its metrics.jsonl, kill it, and read what it left behind.

Every run shares one tiny base and one synthetic dataset under pytest's base temp folder, and one
JAX compilation cache in the system temp folder, so a run after the first of a kind skips compiling.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from recfound_jax import config as config_lib
from recfound_jax.demo import synthetic
from recfound_jax.offline import OFFLINE_VARIABLES
from tests.train_fixtures import write_tiny_base

REPO = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "recfound_jax.train")
# JAX's persistent compilation cache, kept between sessions (its keys hash the program, the compile
# options and the jax version, so a stale entry is never used): the tiny run compiles in about a minute.
JAX_CACHE = Path(tempfile.gettempdir()) / "recfound-fault-tests-jax-cache"


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder under pytest's base temp shared by every fault test of the session."""
    return tmp_path_factory.getbasetemp() / f"fault-{name}"


def shared_base(tmp_path_factory) -> Path:
    """The tiny random base (written once per session, atomically so parallel modules agree)."""
    base = shared_dir(tmp_path_factory, "base")
    if not (base / "config.json").is_file():
        tmp = base.with_name(f"{base.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_tiny_base(tmp)
        if not base.exists():
            os.rename(tmp, base)
    return base


def shared_cache(tmp_path_factory) -> Path:
    """The RECFOUND_CACHE of every fault run, with the synthetic dataset (scale 1, seed 0) generated."""
    cache = shared_dir(tmp_path_factory, "cache")
    synthetic.ensure_dataset(config_lib.synthetic_dir(1, 0, cache), scale=1, seed=0)
    return cache


def synthetic_data(cache: Path) -> Path:
    """The generated synthetic dataset folder inside ``cache``."""
    return config_lib.synthetic_dir(1, 0, cache)


def write_config(path: Path, base: Path, *, prelude: str = "", edits: str = "", **overrides: Any) -> Path:
    """A config file whose get_config() is tests.train_fixtures.tiny_config(base, **overrides).

    Keys are ``section__name`` as in `tiny_config`; values must round-trip through repr(). ``prelude`` is
    module code run when the file is loaded; ``edits`` are statements run on the unlocked config ``c``.
    """
    args = "".join(f", {key}={value!r}" for key, value in overrides.items())
    body = f"    c = tiny_config({str(base)!r}{args})\n"
    if edits:
        body += "    c.unlock()\n" + "".join(f"    {line}\n" for line in edits.splitlines()) + "    c.lock()\n"
    head = '"""A tiny fault-test run."""\nfrom tests.train_fixtures import tiny_config\n' + (
        prelude.strip() + "\n" if prelude else "")
    path.write_text(f"{head}\n\ndef get_config():\n{body}    return c\n")
    return path


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: repo importable, CPU, the shared cache and compilation cache.

    The hub offline variables that conftest sets are left out: the CLI has to set them itself.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *OFFLINE_VARIABLES)}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "RECFOUND_CACHE": str(cache),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "TOKENIZERS_PARALLELISM": "false",
    })
    env.update(extra)
    return env


def cli_args(config_file: Path, workdir: Path, *flags: str) -> list[str]:
    """The command line of a CLI run (no progress bar)."""
    return [*CLI, f"--config={config_file}", f"--workdir={workdir}", "--noprogress", *flags]


def run_cli(config_file: Path, workdir: Path, *flags: str, env: dict[str, str],
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI to its end: (completed process with text stdout/stderr, wall seconds)."""
    began = time.monotonic()
    proc = subprocess.run(cli_args(config_file, workdir, *flags), env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - began


def start_cli(config_file: Path, workdir: Path, *flags: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start the CLI in the background, its stdout and stderr going to ``log``."""
    out = open(log, "w")
    return subprocess.Popen(cli_args(config_file, workdir, *flags), env=env, cwd=REPO, stdout=out,
                            stderr=subprocess.STDOUT)


def metrics(workdir: Path) -> list[dict[str, Any]]:
    """The complete records of a run's metrics.jsonl (a line still being written is left out)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, log: Path, timeout: float = 240) -> None:
    """Block until metrics.jsonl logs ``step`` (fails if the run ends or the time runs out first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in metrics(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    kill(proc)
    raise AssertionError(f"no step {step} after {timeout} s:\n{log.read_text()[-3000:]}")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to the run and wait for it to end; its return code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=120)


def finished(proc: subprocess.CompletedProcess, what: str) -> None:
    """Fail with the run's output unless it exited 0."""
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def assert_same_steps(reference: list[dict], other: list[dict], keys: tuple[str, ...]) -> None:
    """Records of the same step agree (to 1e-6) on the metrics ``keys``; a key ending in "/" is a prefix."""
    prefixes = tuple(k for k in keys if k.endswith("/"))
    by_step = {r["step"]: r for r in reference}
    for record in other:
        expected = by_step[record["step"]]
        for key, value in expected.items():
            if key in keys or key.startswith(prefixes):
                if isinstance(value, str):
                    assert record[key] == value, f"step {record['step']} {key}"
                else:
                    np.testing.assert_allclose(record[key], value, rtol=1e-6, atol=1e-7,
                                               err_msg=f"step {record['step']} {key}")


def orbax_arrays(directory: Path) -> dict[str, np.ndarray]:
    """Every array of an Orbax pytree folder (a checkpoint item, initial_params), by path, read with no target."""
    with ocp.PyTreeCheckpointer() as checkpointer, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sharding info not provided")  # one device: nothing to lose
        tree = checkpointer.restore(Path(directory).absolute())
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if leaf is not None}


def copy_dataset(source: Path, destination: Path) -> Path:
    """A copy of a dataset's train and valid splits (one JSONL file per task), to be spoiled by a test."""
    for split in ("train", "valid"):
        shutil.copytree(source / split, destination / split)
    return destination
