"""End-to-end training runs on the synthetic data with a tiny base: losses fall, resume is exact."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest

from recfound_jax import config as config_lib
from recfound_jax.data import hf_tokenize, records
from recfound_jax.demo import synthetic
from recfound_jax.runs import checkpoint
from recfound_jax.tasks import TASKS
from recfound_jax.tokenizer import Tokenizer
from recfound_jax.train.inputs import total_steps
from recfound_jax.train.trainer import RunExistsError, Trainer, probe_batches, train
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


def test_existing_run_is_not_overwritten_and_epochs_set_the_step_count(base, tmp_path):
    """train.steps 0: the steps of train.epochs passes over the larger branch's rows, 6 a step (the tiny
    embedding batch); the epochs here make 6.5 rows, so one step."""
    data = config_lib.synthetic_dir(1, 0)
    synthetic.ensure_dataset(data, scale=1, seed=0)
    rows, _ = records.load_split(data, "train")
    embedding = sum(isinstance(r, records.EmbeddingRecord) for r in rows)
    c = tiny_config(base, train__steps=0, train__epochs=6.5 / max(embedding, len(rows) - embedding))
    summary = train(c, tmp_path / "run", progress=False)
    assert summary["total_steps"] == summary["steps"] == 1 and summary["completed"]
    with pytest.raises(RunExistsError, match="--resume"):
        Trainer(c, tmp_path / "run", progress=False)


def test_fresh_probes_are_drawn_anew_each_step_and_again_the_same_on_resume(base):
    """s2sched.probe_sampling="fresh": a step's probe is a function of the seed and the step (what a resumed run
    needs), other steps draw other rows, and every draw has one shape (one compile of the probe)."""
    data = config_lib.synthetic_dir(1, 0)
    synthetic.ensure_dataset(data, scale=1, seed=0)
    c = tiny_config(base, s2sched__probe_sampling="fresh", s2sched__probe_size=3)
    valid = hf_tokenize.tokenize_split(data, "valid", Tokenizer(base / "tokenizer.model"), query_max_len=72,
                                       passage_max_len=48, generative_max_len=176)
    first, again, other = (probe_batches(c, valid, step) for step in (5, 5, 6))
    for a, b, c_ in zip(first, again, other):
        assert a.keys() == c_.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].shape == c_[key].shape, key
    assert not np.array_equal(first[1]["input_ids"], other[1]["input_ids"])
    for emb, gen in (first, other):
        assert np.bincount(emb["task_index"]).tolist() == [3] * 3
        assert np.bincount(gen["task_index"]).tolist() == [3] * 10
    fixed = tiny_config(base, s2sched__probe_size=3)
    np.testing.assert_array_equal(probe_batches(fixed, valid, 5)[1]["input_ids"],
                                  probe_batches(fixed, valid, 6)[1]["input_ids"])


@pytest.mark.parametrize("steps, epochs, embedding_batch, generative_batch, expected", [
    (7, 3.0, 6, 10, 7),  # train.steps wins
    (0, 3.0, 6, 10, 3 * 50 // 6),  # the generative rows are the more
    (0, 1.0, 6, 0, 40 // 6),  # embedding only
    (0, 2.0, 0, 10, 2 * 50 // 10),  # generative only: its own batch
    (0, 0.01, 6, 10, 1),  # at least one step
])
def test_total_steps_count_epochs_as_the_released_trainer(base, steps, epochs, embedding_batch, generative_batch,
                                                           expected):
    split = types.SimpleNamespace(embedding=[None] * 40, generative=[None] * 50)
    c = tiny_config(base, train__steps=steps, train__epochs=epochs, train__embedding_batch=embedding_batch,
                    train__generative_batch=generative_batch)
    assert total_steps(c, split) == expected


def test_evaluation_during_training_is_logged(base, tmp_path):
    c = tiny_config(base, train__steps=2, eval__every=2, eval__subset=1)
    train(c, tmp_path / "run", progress=False)
    last = _records(tmp_path / "run")[-1]
    scores = {k: v for k, v in last.items() if k.startswith("eval/")}
    assert len(scores) >= 10, last.keys()
    assert all(0.0 <= v <= 1.0 for v in scores.values())
