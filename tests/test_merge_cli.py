"""TIES over a trained run's checkpoints: `python -m recfound_jax.merge` and `merge_run`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recfound_jax.merge import ties_merge
from recfound_jax.merge.__main__ import main as merge_main
from recfound_jax.merge.checkpoints import MergeError, merge_run
from recfound_jax.runs import checkpoint, rundir
from recfound_jax.train.trainer import train
from tests.train_fixtures import tiny_config, write_tiny_base

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained 6 steps with checkpoints at 2, 4 and 6."""
    base = write_tiny_base(tmp_path_factory.mktemp("base"))
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECFOUND_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        summary = train(tiny_config(base, train__steps=6, train__checkpoint_every=2), out, progress=False)
    assert summary["checkpoints"] == [2, 4, 6]
    return out


def _restore(run: Path, step: int):
    """A step's trainable params as a pytree (step 0: the initial params)."""
    like = rundir.params_like(run)
    with checkpoint.Checkpointer(run) as checkpointer:
        return checkpointer.restore_initial(like) if step == 0 else checkpointer.restore(step, like)[0]


def _per_tensor(path) -> int:
    """Released tensors: one per layer and expert for A and B, one per layer for routers, the table whole."""
    name = jax.tree_util.keystr(path)
    if "['a']" in name or "['b']" in name:
        return 2
    return 1 if "router" in name else 0


def _assert_trees_equal(got, expected) -> None:
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    expected_leaves = jax.tree_util.tree_leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for (path, a), b in zip(got_leaves, expected_leaves):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_merge_run_equals_ties_merge_of_the_restored_pytrees(run_dir, tmp_path):
    out = merge_run(run_dir, [2, 4, 6], tmp_path / "merged", density=0.8, progress=False)
    expected = ties_merge(_restore(run_dir, 0), [_restore(run_dir, s) for s in (2, 4, 6)], density=0.8,
                          batch_dims=_per_tensor)
    _assert_trees_equal(_restore(out, 6), expected)
    differs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
               zip(jax.tree.leaves(expected), jax.tree.leaves(_restore(run_dir, 6)))]
    assert max(differs) > 0  # the merge is not just the last checkpoint

    model, config, step = rundir.load_model(out)
    assert step == 6 and config.name == rundir.read_config(run_dir).name
    logits = model(jnp.ones((1, 5), jnp.int32), task_ids=jnp.array([4]))
    assert bool(jnp.all(jnp.isfinite(logits)))
    merged_from = rundir.read_run_info(out)["merged_from"]
    assert merged_from["steps"] == [2, 4, 6] and merged_from["run"] == str(run_dir)
    _assert_trees_equal(_restore(out, 0), _restore(run_dir, 0))  # the initial params are kept


def test_cli_merges_against_a_checkpoint_with_the_released_order(run_dir, tmp_path):
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "recfound_jax.merge", "--run", str(run_dir), "--steps", "4,6",
               "--init_step", "2", "--density", "0.5", "--lam", "0.7", "--order", "released", "--out", str(out),
               "--noprogress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = ties_merge(_restore(run_dir, 2), [_restore(run_dir, 4), _restore(run_dir, 6)], density=0.5,
                          lam=0.7, order="released", batch_dims=_per_tensor)
    _assert_trees_equal(_restore(out, 6), expected)
    assert rundir.read_run_info(out)["merged_from"]["init_step"] == 2


def test_a_missing_step_lists_the_available_ones(run_dir, tmp_path, capsys):
    with pytest.raises(MergeError, match=r"no checkpoint for step 5; available steps: \[0, 2, 4, 6\]"):
        merge_run(run_dir, [2, 5], tmp_path / "a", progress=False)
    with pytest.raises(MergeError, match=r"--init_step 3"):
        merge_run(run_dir, [4, 6], tmp_path / "b", init_step=3, progress=False)
    with pytest.raises(MergeError, match="also among the merged steps"):
        merge_run(run_dir, [2, 4], tmp_path / "c", init_step=2, progress=False)
    assert merge_main(["--run", str(run_dir), "--steps", "2,7", "--out", str(tmp_path / "d")]) == 2
    assert "available steps: [0, 2, 4, 6]" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_a_checkpoint_of_another_shape_is_named(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    tree = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros((14, 8), np.float32) if "task_embedding" in jax.tree_util.keystr(path) else x,
        _restore(run_dir, 6))
    with checkpoint.Checkpointer(run, keep=10) as checkpointer:
        checkpointer.save(8, tree, None, {"step": 8})
    with pytest.raises(MergeError, match=r"step 8: leaf adapters\.task_embedding\.value has shape \(14, 8\)"):
        merge_run(run, [4, 8], tmp_path / "merged", progress=False)
