"""Adding tasks to a trained run (`recfound_jax.train.extend`): frozen keeps the old tasks' outputs
bit-identical, replay moves the shared adapters, and the extended run merges and exports."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax import parallel
from recfound_jax.convert.export import export_tasks
from recfound_jax.demo import synthetic
from recfound_jax.evaluate import runner
from recfound_jax.inference.recfound import RecFound
from recfound_jax.merge.checkpoints import merge_run
from recfound_jax.runs import rundir
from recfound_jax.tasks import get_task
from recfound_jax.train import extend as extend_lib
from recfound_jax.train.trainer import Trainer, train
from tests.train_fixtures import tiny_config, write_tiny_base

OLD = "U2I,I2I,SR,PRP,SA,QR"  # the tasks of the run that is extended; Q2I and AP are the new ones
NEW = OLD + ",Q2I,AP"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(base, tasks: str, **overrides):
    c = tiny_config(base, train__steps=3, train__checkpoint_every=3)
    c.unlock()
    c.data.tasks = tasks
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    c.lock()
    return c


@pytest.fixture(scope="module")
def parent(base, tmp_path_factory):
    """A run trained 3 steps on OLD."""
    os.environ["RECFOUND_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    run = tmp_path_factory.mktemp("parent") / "run"
    train(_config(base, OLD), run, progress=False)
    return run


def _params(run, step=None):
    model, _, _ = rundir.load_model(run, step)
    return {parallel.path_str(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}, model


def _old_task_outputs(model, tasks):
    """Generation logits and encodings of a fixed input under each of ``tasks``."""
    ids = jnp.asarray(np.arange(3, 40).reshape(1, -1) % 500 + 3)
    out = {}
    for short in tasks.split(","):
        task = get_task(short)
        task_ids = jnp.asarray([task.id])
        causal = not task.is_embedding
        hidden = model.hidden_states(ids, jnp.ones_like(ids), task_ids=task_ids, causal=causal)
        out[short] = np.asarray(model.logits(hidden) if causal else hidden)
    return out


@pytest.fixture(scope="module")
def frozen_child(base, parent, tmp_path_factory):
    """``parent`` extended with Q2I and AP, frozen, 3 steps."""
    child = tmp_path_factory.mktemp("frozen") / "run"
    summary = train(_config(base, NEW, extend__mode="frozen"), child, progress=False, extend=parent)
    assert summary["completed"]
    return child


def test_frozen_extension_keeps_old_task_outputs_bit_identical(parent, frozen_child):
    before, old_model = _params(parent)
    after, new_model = _params(frozen_child)
    table = "adapters/task_embedding"
    for name, value in before.items():
        if name != table:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    new_ids = [get_task("Q2I").id, get_task("AP").id]
    old_ids = [i for i in range(before[table].shape[0]) if i not in new_ids]
    np.testing.assert_array_equal(after[table][old_ids], before[table][old_ids])
    assert not np.allclose(after[table][new_ids], before[table][new_ids])
    for short, value in _old_task_outputs(old_model, OLD).items():
        np.testing.assert_array_equal(_old_task_outputs(new_model, OLD)[short], value, err_msg=short)
    info = rundir.read_run_info(frozen_child)["extends"]
    assert info["mode"] == "frozen" and info["new_tasks"] == ["Emb_query", "Answerability_Prediction"]
    assert extend_lib.lineage(frozen_child)[0]["run"] == str(parent.absolute())
    record = json.loads((frozen_child / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k for k in record if k.startswith("count/")} == {"count/Emb_query", "count/Answerability_Prediction"}


def test_the_extended_run_merges_and_exports(parent, frozen_child, tmp_path):
    merged = merge_run(frozen_child, [3], tmp_path / "merged", progress=False)
    _, old_model = _params(parent)
    _, merged_model = _params(merged)
    for short, value in _old_task_outputs(old_model, OLD).items():  # zero task vectors merge to zero
        np.testing.assert_array_equal(_old_task_outputs(merged_model, OLD)[short], value, err_msg=short)
    out = export_tasks(merged, ["AP"], tmp_path / "export")[0]
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))


def test_mean_init_starts_a_new_row_at_its_kinds_mean(base, parent, tmp_path):
    c = _config(base, NEW, extend__mode="frozen")
    ext = extend_lib.plan(c, parent)
    model = rundir.build_model(c, rundir.checked_base(parent))
    grown = extend_lib.grow_params(ext, nnx.state(model, nnx.Param))
    rows = np.asarray(grown["adapters"]["task_embedding"][...])
    old = _params(parent)[0]["adapters/task_embedding"]
    emb = [get_task(s).id for s in ("U2I", "I2I")]
    gen = [get_task(s).id for s in ("SR", "PRP", "SA", "QR")]
    np.testing.assert_allclose(rows[get_task("Q2I").id], old[emb].mean(0), rtol=1e-6)
    np.testing.assert_allclose(rows[get_task("AP").id], old[gen].mean(0), rtol=1e-6)


def test_replay_trains_everything_on_a_share_of_old_rows(base, parent, tmp_path):
    child = tmp_path / "replay"
    train(_config(base, NEW, extend__mode="replay", extend__replay_fraction=0.5), child, progress=False, extend=parent)
    before, _ = _params(parent)
    after, _ = _params(child)
    moved = [name for name in before
             if name != "adapters/task_embedding" and not np.array_equal(before[name], after[name])]
    assert moved, "replay trained no shared adapter"
    info = rundir.read_run_info(child)["extends"]
    assert info["mode"] == "replay" and set(info["replay_rows"]) == {get_task(s).name for s in OLD.split(",")}
    last = json.loads((child / "metrics.jsonl").read_text().splitlines()[-1])
    counts = {k for k in last if k.startswith("count/")}
    assert counts == {f"count/{get_task(s).name}" for s in NEW.split(",")}


@pytest.mark.parametrize("change, key", [
    ({"tmole__rank": 8}, "config.tmole.rank"),
    ({"data__tasks": "U2I,I2I"}, "config.data.tasks"),
    ({"data__tasks": OLD}, "config.added_tasks: no new task"),
    ({"extend__new_experts": 1, "extend__expert_tasks": "U2I,Q2I"}, "config.extend.expert_tasks"),
])
def test_a_config_that_cannot_extend_the_run_is_refused_naming_the_key(base, parent, change, key):
    overrides = dict(change)
    tasks = overrides.pop("data__tasks", NEW)
    with pytest.raises(extend_lib.ExtendError, match=key.replace(".", r"\.")):
        extend_lib.plan(_config(base, tasks, **overrides), parent)


def test_the_extended_run_needs_a_directory_of_its_own(base, parent):
    with pytest.raises(extend_lib.ExtendError, match="--workdir of its own"):
        train(_config(base, NEW), parent, progress=False, extend=parent)
    assert config_lib.run_tasks(rundir.read_config(parent))[0] == (get_task("U2I"), get_task("I2I"))


def test_a_frozen_extension_of_one_kind_draws_no_batch_of_the_other(base, parent, tmp_path):
    child = tmp_path / "q2i"
    summary = train(_config(base, OLD + ",Q2I", extend__mode="frozen"), child, progress=False, extend=parent)
    last = json.loads((child / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k for k in last if k.startswith("count/")} == {"count/Emb_query"}
    assert last["loss_gen"] == 0.0 and last["loss_emb"] > 0.0
    assert list(summary["probe_loss_final"]) == ["Emb_query"]


COLOR_MATCH = dict(name="Color_Match", short="CM", kind="generative", metric="macro_f1", max_new_tokens=2,
                   classes="ABCD")


def _color_match_rows(n: int, offset: int) -> list[dict]:
    colours = ("red", "blue", "green", "black")
    rows = []
    for i in range(offset, offset + n):
        prompt = (f"Which colour is the item 'Harbor {colours[i % 4]} cotton collar {i}'?\n### Options:\n"
                  + "\n".join(f"{letter}: {c}" for letter, c in zip("ABCD", colours)))
        rows.append({"text": [prompt, "ABCD"[i % 4]], "task": "Color_Match"})
    return rows


@pytest.fixture(scope="module")
def data_with_an_added_task(parent, tmp_path_factory):
    """The synthetic data of the parent run, plus rows of the added task Color_Match."""
    source = config_lib.synthetic_dir(1, 0)
    synthetic.ensure_dataset(source, scale=1, seed=0)
    out = tmp_path_factory.mktemp("with_cm") / "data"
    shutil.copytree(source, out)
    for split, n, offset in (("train", 40, 0), ("valid", 8, 1000), ("test", 12, 2000)):
        (out / split / "Color_Match.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _color_match_rows(n, offset)), encoding="utf-8")
    return out


def test_an_added_task_grows_the_table_and_its_experts_leave_old_tasks_bit_identical(
        base, parent, data_with_an_added_task, tmp_path):
    c = _config(base, OLD + ",CM", extend__mode="frozen", extend__new_experts=1,
                data__dir=str(data_with_an_added_task))
    c.unlock()
    c.added_tasks = (COLOR_MATCH,)
    c.lock()
    child = tmp_path / "cm"
    train(c, child, progress=False, extend=parent)
    before, old_model = _params(parent)
    after, new_model = _params(child)
    table = "adapters/task_embedding"
    assert before[table].shape[0] == 14 and after[table].shape[0] == 15
    np.testing.assert_array_equal(after[table][:14], before[table])
    added = [name for name in after if name.startswith("adapters/added_banks/")]
    assert added and all(name not in before for name in added)
    assert any(not np.all(after[name] == 0) for name in added if name.endswith("/b"))  # B starts at 0: trained
    for name, value in before.items():
        if name != table:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    for short, value in _old_task_outputs(old_model, OLD).items():
        np.testing.assert_array_equal(_old_task_outputs(new_model, OLD)[short], value, err_msg=short)
    rf = RecFound.from_run(child)
    assert rf.table.get("CM").id == 14
    result = runner.evaluate(rf, str(data_with_an_added_task), tasks=["CM"], limit_per_task=4, progress=False)
    assert result["tasks"]["Color_Match"]["n"] == 4 and result["tasks"]["Color_Match"]["metric"] == "macro_f1"


def test_new_experts_for_a_released_new_task_train_and_leave_old_tasks_bit_identical(base, parent, tmp_path):
    child = tmp_path / "experts"
    c = _config(base, OLD + ",Q2I", extend__mode="frozen", extend__new_experts=1, extend__expert_tasks="Q2I")
    train(c, child, progress=False, extend=parent)
    before, old_model = _params(parent)
    after, new_model = _params(child)
    added = [name for name in after if name.startswith("adapters/added_banks/") and name.endswith("/b")]
    assert added and any(np.any(after[name] != 0) for name in added)
    for short, value in _old_task_outputs(old_model, OLD).items():
        np.testing.assert_array_equal(_old_task_outputs(new_model, OLD)[short], value, err_msg=short)


def test_an_interrupted_extension_resumes_to_the_same_params(base, parent, frozen_child, tmp_path):
    c = _config(base, NEW, extend__mode="frozen")
    split = tmp_path / "split"
    Trainer(c, split, progress=False, extend=parent).run(until=2)
    Trainer(c, split, resume=True, progress=False).run()  # the extension is read back from run.json
    straight, _ = _params(frozen_child)
    resumed, _ = _params(split)
    for name, value in straight.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    assert rundir.read_run_info(split)["extends"]["run"] == str(parent.absolute())


def test_an_extension_on_another_base_is_refused(base, parent, tmp_path):
    other = Path(shutil.copytree(rundir.checked_base(parent), tmp_path / "other_base"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))  # another checkpoint
    ext = extend_lib.plan(_config(base, NEW), parent)
    with pytest.raises(extend_lib.ExtendError, match="config.model.base: .* is not the base"):
        extend_lib.check_base(ext, other)
    extend_lib.check_base(ext, rundir.checked_base(parent))
