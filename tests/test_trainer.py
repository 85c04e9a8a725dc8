"""End-to-end training runs on the synthetic data with a tiny base: losses fall, resume is exact."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recfound_jax.runs import checkpoint
from recfound_jax.tasks import TASKS
from recfound_jax.train.trainer import RunExistsError, Trainer, train
from tests.train_fixtures import tiny_config, write_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_twenty_steps_losses_fall_and_everything_is_logged(base, tmp_path):
    c = tiny_config(base, train__steps=20, train__checkpoint_every=10, train__gradcache_chunk=3)
    summary = train(c, tmp_path / "run", progress=False)
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("loss", "loss_emb", "loss_gen", "lr", "tokens_per_s", *(f"probe/{t.name}" for t in TASKS),
                *(f"ratio/{t.name}" for t in TASKS), *(f"count/{t.name}" for t in TASKS)):
        assert key in records[-1], key
    assert sum(records[-1][f"count/{t.name}"] for t in TASKS if t.is_embedding) == 6
    assert sum(records[-1][f"count/{t.name}"] for t in TASKS if not t.is_embedding) == 10
    first, last = np.mean([r["loss"] for r in records[:4]]), np.mean([r["loss"] for r in records[-4:]])
    assert last < first
    assert summary["completed"] and summary["steps"] == 20
    assert summary["checkpoints"] == [10, 20]
    final, initial = summary["probe_loss_final"], summary["probe_loss_initial"]
    falling = [t for t in final if final[t] < initial[t]]
    assert len(falling) >= 10, summary
    assert (tmp_path / "run" / checkpoint.INITIAL).is_dir()


def test_resume_continues_with_identical_losses_ratios_and_data(base, tmp_path):
    c = tiny_config(base)
    train(c, tmp_path / "straight", progress=False)
    Trainer(c, tmp_path / "split", progress=False).run(until=3)
    assert len(_records(tmp_path / "split")) == 3
    Trainer(c, tmp_path / "split", resume=True, progress=False).run()
    straight, split = _records(tmp_path / "straight"), _records(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 7))
    for a, b in zip(straight, split):
        for key, value in a.items():
            if key.startswith(("loss", "probe/", "ratio/", "count/")):
                np.testing.assert_allclose(b[key], value, rtol=1e-6, atol=1e-7, err_msg=f"step {a['step']} {key}")


def test_existing_run_is_not_overwritten(base, tmp_path):
    c = tiny_config(base, train__steps=1)
    train(c, tmp_path / "run", progress=False)
    with pytest.raises(RunExistsError, match="--resume"):
        Trainer(c, tmp_path / "run", progress=False)


def test_evaluation_during_training_is_logged(base, tmp_path):
    c = tiny_config(base, train__steps=2, eval__every=2, eval__subset=1)
    train(c, tmp_path / "run", progress=False)
    last = _records(tmp_path / "run")[-1]
    scores = {k: v for k, v in last.items() if k.startswith("eval/")}
    assert len(scores) >= 10, last.keys()
    assert all(0.0 <= v <= 1.0 for v in scores.values())
