"""Faults of a running job, provoked for real on `python -m recfound_jax.train` subprocesses: SIGKILL at a
random step then --resume, SIGKILL during checkpoint writes, SIGTERM (preemption), and what Orbax leaves
behind mid-write planted by hand.

Every run here has the same config (only checkpoint_every differs, which changes no computation), so
all of them must log the same per-step losses, S2Sched ratios, counts and batch digests as the
uninterrupted reference run.
"""
from __future__ import annotations

import random
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from recfound_jax import jsonio
from recfound_jax.runs import checkpoint, rundir
from tests import fault_fixtures as ff

STEPS = 8
SEED = 20261126
SAME = ("loss", "loss_emb", "loss_gen", "grad_norm", "finite", "tokens", "batch_digest", "probe/", "ratio/", "count/")
ORBAX_TMP = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = ff.shared_base(tmp_path_factory)
    cache = ff.shared_cache(tmp_path_factory)
    return base, ff.cli_env(cache)


def _config(setup, path, **overrides):
    base, _ = setup
    return ff.write_config(path, base, **{"train__steps": STEPS, "train__checkpoint_every": 2, **overrides})


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The uninterrupted run: (run directory, its metrics records)."""
    folder = tmp_path_factory.mktemp("reference")
    proc, _ = ff.run_cli(_config(setup, folder / "config.py"), folder / "run", env=setup[1])
    ff.finished(proc, "the reference run")
    records = ff.metrics(folder / "run")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert len({r["batch_digest"] for r in records}) == STEPS  # every step draws a different batch
    return folder / "run", records


def _steps_once(records):
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), [r["step"] for r in records]


def _latest_restorable(workdir) -> int:
    """The latest completed checkpoint, restored through the project's Checkpointer (params and meta)."""
    with checkpoint.Checkpointer(workdir) as checkpointer:
        latest = checkpointer.latest_step()
        assert latest is not None, f"no checkpoint in {workdir}"
        params, _, meta = checkpointer.restore(latest, rundir.params_like(workdir))
    assert meta["step"] == latest
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    assert leaves and all(np.all(np.isfinite(x)) for x in leaves)
    return latest


def test_sigkill_at_random_step_then_resume_matches_uninterrupted_run(setup, reference, tmp_path):
    _, env = setup
    _, expected = reference
    kill_at = random.Random(SEED).randint(3, STEPS - 2)
    config, workdir, log = _config(setup, tmp_path / "config.py"), tmp_path / "run", tmp_path / "log.txt"
    proc = ff.start_cli(config, workdir, env=env, log=log)
    ff.wait_for_step(proc, workdir, kill_at, log)
    assert ff.kill(proc) == -signal.SIGKILL
    before = ff.metrics(workdir)
    latest = _latest_restorable(workdir)
    assert kill_at - 2 <= latest <= kill_at + 1 and latest % 2 == 0, (kill_at, latest)

    proc, _ = ff.run_cli(config, workdir, "--resume", env=env)
    ff.finished(proc, "the resumed run")
    after = ff.metrics(workdir)
    _steps_once(after)
    assert after[:latest] == before[:latest]  # the steps up to the checkpoint were kept, not redone
    ff.assert_same_steps(expected, after, SAME)
    summary = jsonio.read_json(workdir / "summary.json")
    assert summary["completed"] and summary["steps"] == STEPS


def test_sigterm_checkpoints_the_step_reached_and_exits_zero(setup, reference, tmp_path):
    _, env = setup
    _, expected = reference
    term_at = random.Random(SEED + 1).randint(1, STEPS - 3)
    config, workdir, log = _config(setup, tmp_path / "config.py"), tmp_path / "run", tmp_path / "log.txt"
    proc = ff.start_cli(config, workdir, env=env, log=log)
    ff.wait_for_step(proc, workdir, term_at, log)
    began = time.monotonic()
    rc = ff.kill(proc, signal.SIGTERM)
    seconds = time.monotonic() - began
    assert rc == 0, log.read_text()[-3000:]
    assert seconds < 60, f"SIGTERM took {seconds:.1f} s to stop the run"
    reached = ff.metrics(workdir)[-1]["step"]
    assert term_at <= reached < STEPS
    summary = jsonio.read_json(workdir / "summary.json")
    assert summary["stopped_by_signal"] and not summary["completed"] and summary["steps"] == reached
    assert _latest_restorable(workdir) == reached

    proc, _ = ff.run_cli(config, workdir, "--resume", env=env)
    ff.finished(proc, "the resumed run")
    after = ff.metrics(workdir)
    _steps_once(after)
    ff.assert_same_steps(expected, after, SAME)
    assert jsonio.read_json(workdir / "summary.json")["completed"]


def _writes(folder, first_step: int) -> list[str]:
    """The Orbax tmp folders of steps >= first_step: checkpoint writes in progress (or cut off)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if ORBAX_TMP in p.name and int(p.name.split(".")[0]) >= first_step)


def _kill_while_writing(proc, workdir, after_step: int, delay: float, log) -> list[str]:
    """SIGKILL ``delay`` s after the write of checkpoint ``after_step`` (or a later one) shows up; the tmp
    folders it left."""
    ff.wait_for_step(proc, workdir, after_step, log)
    folder = workdir / checkpoint.CHECKPOINTS
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not _writes(folder, after_step):
        time.sleep(0.0005)
    time.sleep(delay)
    ff.kill(proc)
    return _writes(folder, after_step)


def test_sigkill_during_checkpoint_writes_never_exposes_a_partial_checkpoint(setup, reference, tmp_path):
    """checkpoint_every=1 and SIGKILL at random moments of a write, three times; then --resume to the end."""
    _, env = setup
    _, expected = reference
    rng = random.Random(SEED + 2)
    config = _config(setup, tmp_path / "config.py", train__checkpoint_every=1)
    workdir, log = tmp_path / "run", tmp_path / "log.txt"
    left_behind = []
    for trial in range(3):
        logged = max([r["step"] for r in ff.metrics(workdir)], default=0)  # a resumed run logs past these
        after_step = min(logged + rng.randint(1, 2), STEPS - 1) if trial else 2
        proc = ff.start_cli(config, workdir, *(["--resume"] if trial else []), env=env, log=log)
        left = _kill_while_writing(proc, workdir, after_step, delay=0.0 if trial == 0 else rng.uniform(0, 0.05),
                                   log=log)
        left_behind.append(left)
        with checkpoint.Checkpointer(workdir) as checkpointer:
            listed = checkpointer.steps()
        assert not {int(name.split(".")[0]) for name in left} & set(listed), (listed, left)
        latest = _latest_restorable(workdir)
        assert latest >= after_step - 1, (trial, after_step, latest)
    assert any(left_behind), f"no kill landed inside a checkpoint write: {left_behind}"

    proc, _ = ff.run_cli(config, workdir, "--resume", env=env)
    ff.finished(proc, "the run resumed after the kills")
    after = ff.metrics(workdir)
    _steps_once(after)
    ff.assert_same_steps(expected, after, SAME)
    assert not [p.name for p in (workdir / checkpoint.CHECKPOINTS).iterdir() if ORBAX_TMP in p.name]


def test_planted_half_written_checkpoints_are_never_latest(reference, tmp_path):
    """What an Orbax save leaves when killed (a ``<step>.orbax-checkpoint-tmp[-<timestamp>]`` folder with
    part of the items) is not listed, not restored and not taken as the latest."""
    source, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    folder = workdir / checkpoint.CHECKPOINTS
    # A newer step cut off mid-write: the real items of the last step, one of them truncated.
    half = folder / f"{STEPS + 1}{ORBAX_TMP}"
    shutil.copytree(folder / str(STEPS), half)
    shutil.rmtree(half / "opt_state")
    manifest = half / "params" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:7])
    (half / "commit_success.txt").unlink(missing_ok=True)
    # The naming of older Orbax versions (a timestamp suffix), with only the metadata written.
    older = folder / f"{STEPS + 2}{ORBAX_TMP}-1764151200123456"
    older.mkdir()
    (older / "_CHECKPOINT_METADATA").write_text("{}")
    with checkpoint.Checkpointer(workdir) as checkpointer, checkpoint.Checkpointer(source) as original:
        assert checkpointer.steps() == original.steps()
        assert checkpointer.latest_step() == STEPS
        with pytest.raises(FileNotFoundError, match="no checkpoint for step"):
            checkpointer.restore(STEPS + 1, rundir.params_like(workdir))
    assert _latest_restorable(workdir) == STEPS
