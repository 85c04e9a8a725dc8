"""Two processes on loopback (CPU collectives) train like one: same losses, probes, schedule; resume across them."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from recfound_jax import distributed
from recfound_jax.train.trainer import train
from tests.train_fixtures import tiny_config, write_tiny_base

REPO = Path(__file__).resolve().parents[1]
PROCESSES, LOCAL_DEVICES = 2, 2
TIMEOUT_S = 150

# Phase 1 runs the trainer to step 2 (a checkpoint), phase 2 resumes through the CLI to step 3.
_WORKER = """
import sys
from recfound_jax import distributed
assert distributed.initialize_from_env()
from recfound_jax import recipes
from recfound_jax.train.trainer import Trainer
Trainer(recipes.load(sys.argv[1]), sys.argv[2], progress=False).run(until=int(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("RECFOUND_CACHE", str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, port: int, index: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECFOUND_", "SLURM_"))}
    env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
                "JAX_DEFAULT_MATMUL_PRECISION": "highest", "PYTHONUNBUFFERED": "1", "RECFOUND_CACHE": str(cache),
                "PYTHONPATH": str(REPO), distributed.COORDINATOR: f"127.0.0.1:{port}",
                # the resumed processes compile what the first ones did: JAX's compilation cache serves it
                "JAX_COMPILATION_CACHE_DIR": str(Path(tempfile.gettempdir()) / "recfound-tests-jax-cache"),
                distributed.NUM_PROCESSES: str(PROCESSES), distributed.PROCESS_ID: str(index)})
    return env


def _launch(args: list[str], cache: Path, logs: Path) -> None:
    """Start the same command in every process, wait for all; fail with their output if one fails."""
    port = _free_port()
    procs = []
    for index in range(PROCESSES):
        log = open(logs / f"process{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(cache, port, index),
                                       stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=TIMEOUT_S) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if any(codes):
        output = "\n".join(f"--- process {i} (exit {code}):\n" + (logs / f"process{i}.log").read_text()[-3000:]
                           for i, code in enumerate(codes))
        pytest.fail(f"a training process failed:\n{output}")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_and_resume_across_them(base, cache, tmp_path):
    # 4 devices in both runs: 4 of the test process's 8, or 2 processes with 2 each
    c = tiny_config(base, train__steps=3, train__embedding_batch=8, train__generative_batch=8,
                    train__checkpoint_every=2, mesh__shape=(1, 4, 1))
    train(c, tmp_path / "single", progress=False)  # also builds the synthetic data under the cache
    config_file = tmp_path / "config.py"
    config_file.write_text("import json\nfrom recfound_jax import config as config_lib\n\n\ndef get_config():\n"
                           f"    return config_lib.from_dict(json.loads({json.dumps(c.to_dict())!r}))\n")
    multi = tmp_path / "multi"
    multi.mkdir()
    shutil.copytree(tmp_path / "single" / "token_cache", multi / "token_cache")  # skip tokenizing again
    logs = tmp_path / "logs"
    logs.mkdir()

    _launch(["-c", _WORKER, str(config_file), str(multi), "2"], cache, logs)
    assert [r["step"] for r in _records(multi)] == [1, 2]  # one writer: no line twice
    _launch(["-m", "recfound_jax.train", "--config", str(config_file), "--workdir", str(multi), "--resume",
             "--progress=false"], cache, logs)

    single, split = _records(tmp_path / "single"), _records(multi)
    assert [r["step"] for r in split] == [1, 2, 3]
    for a, b in zip(single, split):
        for key, value in a.items():
            if key.startswith(("loss", "grad_norm", "probe/", "count/")):
                np.testing.assert_allclose(b[key], value, rtol=2e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
            elif key.startswith("ratio/"):  # slopes of 2-step windows magnify last-digit differences
                np.testing.assert_allclose(b[key], value, rtol=2e-3, err_msg=f"step {a['step']} {key}")
    run_info = json.loads((multi / "run.json").read_text())
    assert run_info["processes"] == PROCESSES and run_info["devices"] == PROCESSES * LOCAL_DEVICES
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["completed"] and summary["checkpoints"] == [2, 3]


def test_initialize_from_env_is_a_no_op_for_one_process():
    assert not distributed.initialize_from_env({})
    assert not distributed.initialize_from_env({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert not distributed.initialize_from_env({distributed.COORDINATOR: "h:1", distributed.NUM_PROCESSES: "1",
                                                distributed.PROCESS_ID: "0"})
    with pytest.raises(ValueError, match=distributed.NUM_PROCESSES):
        distributed.initialize_from_env({distributed.COORDINATOR: "h:1", distributed.PROCESS_ID: "0"})
    with pytest.raises(ValueError, match="must be in"):
        distributed.initialize_from_env({distributed.COORDINATOR: "h:1", distributed.NUM_PROCESSES: "2",
                                         distributed.PROCESS_ID: "2"})


def test_gpu_flags_only_on_gpu_and_never_over_the_users():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--a=1"}
    assert distributed.set_gpu_xla_flags(env) == [] and env["XLA_FLAGS"] == "--a=1"
    env = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    added = distributed.set_gpu_xla_flags(env)
    assert "--xla_gpu_enable_latency_hiding_scheduler=false" in env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in env["XLA_FLAGS"].split()
    assert set(added) == set(distributed.GPU_XLA_FLAGS) - {"--xla_gpu_enable_latency_hiding_scheduler=true"}
