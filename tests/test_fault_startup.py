"""Faults at the start of a run on an empty cache, provoked for real through the CLI: a bad data row fails
before the demo base is built; SIGTERM during the base build stops the process at once, leaves no base a
later run would take for complete, and the next run builds it and trains; a finished run says what next."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recfound_jax import config as config_lib
from recfound_jax.demo import pretrain
from tests import fault_fixtures as ff

TINY_RUN = ("--config.train.steps=2", "--config.train.embedding_batch=6", "--config.train.generative_batch=10",
            "--config.tmole.rank=4", "--config.tmole.alpha=8.0", "--config.tmole.task_embedding_dim=16",
            "--config.s2sched.probe_size=2", "--config.s2sched.window=4", "--config.mesh.shape=(1,1,1)")
# The shipped demo base recipe at a tiny size, long enough (in steps) to be stopped while it builds.
TINY_BASE_RECIPE = '''"""The demo base recipe at a tiny size."""
from recfound_jax import recipes


def get_config():
    config = recipes.load("demo_base")
    config.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    config.data.update(generative_rows_per_task=2, eval_rows_per_task=0)
    config.train.update(seq_len=32, batch_size=4, steps=STEPS, warmup_steps=1, log_every=1)
    config.instruct.rows = {}
    return config
'''


def _demo_command(workdir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "recfound_jax.train", "--config", "demo", f"--workdir={workdir}", "--noprogress",
            *TINY_RUN, *flags]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The synthetic dataset (scale 1, seed 0), generated once for the fault tests."""
    return ff.synthetic_data(ff.shared_cache(tmp_path_factory))


def test_a_bad_row_fails_within_seconds_before_the_demo_base_is_built(dataset, tmp_path):
    data = ff.copy_dataset(dataset, tmp_path / "data")
    bad = data / "valid" / "Sentiment_Analysis.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = json.dumps({"text": ["a prompt"], "task": "Sentiment_Analysis"})  # no answer
    bad.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "empty-cache"
    began = time.monotonic()
    # The default base recipe: building it would take many minutes, so the run must fail before it.
    proc = subprocess.run(_demo_command(tmp_path / "run", f"--config.data.dir={data}"), env=ff.cli_env(cache),
                          cwd=ff.REPO, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - began
    assert proc.returncode != 0
    assert f"{bad}:3: text:" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert seconds < 60, f"the bad row took {seconds:.1f} s to be reported"
    assert not (cache / "demo_base").exists()


def test_sigterm_during_the_base_build_stops_at_once_and_the_next_run_builds_it(dataset, tmp_path):
    cache = tmp_path / "cache"
    synthetic = config_lib.synthetic_dir(1, 0, cache)
    shutil.copytree(dataset, synthetic)  # the dataset is there; the base is not
    recipe = tmp_path / "tiny_base.py"
    recipe.write_text(TINY_BASE_RECIPE.replace("STEPS", "300"))
    command = _demo_command(tmp_path / "run", f"--config.model.base_recipe={recipe}")
    env = ff.cli_env(cache)
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, cwd=ff.REPO, stdout=out, stderr=subprocess.STDOUT)
    building = cache / "demo_base"
    deadline = time.monotonic() + 240
    while not list(building.glob(".*.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(building.glob(".*.tmp-*")), f"the base build never started:\n{log.read_text()[-3000:]}"
    began = time.monotonic()
    rc = ff.kill(proc, signal.SIGTERM)
    seconds = time.monotonic() - began
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert seconds < 15, f"SIGTERM took {seconds:.1f} s to stop the base build"
    assert "stopped by SIGTERM" in log.read_text()
    assert list(building.iterdir()) == []  # no temporary folder left, no base taken for complete

    proc = subprocess.run(command + ["--resume"], env=env, cwd=ff.REPO, capture_output=True, text=True,
                          timeout=600)
    ff.finished(proc, "the run after the stopped build")
    (base,) = building.iterdir()
    assert (base / pretrain.MARKER).is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["completed"]
    assert f"next: python -m recfound_jax.evaluate --run {tmp_path / 'run'}" in proc.stdout
