"""scripts/instruct_stage.py on a tiny recipe: the causal-LM stage is built once, each draw and phase gets a
table row."""
from __future__ import annotations

import json

import pytest

from recfound_jax import cli
from recfound_jax import config as config_lib
from recfound_jax.demo import pretrain

TINY = ["--config", "demo_base", "--config.train.steps=3", "--config.train.warmup_steps=1",
        "--config.instruct.steps=2", "--config.instruct.warmup_steps=1", "--config.instruct.first.steps=2",
        "--config.model.num_layers=1", "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
        "--config.model.head_dim=8"]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("instruct_stage")


def _table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| first") or line.startswith("| mixed")]


def test_the_stage_runs_on_a_causal_lm_stage_built_once(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path))
    assert script.main(TINY + ["--config.instruct.first.rows.PRP=30"]) == 0
    first, mixed = _table_rows(capsys.readouterr().out)
    assert first[:3] == ["first", "0", "2 x 25"] and mixed[:3] == ["mixed", "0", "2 x 40"]
    header_tasks = ["AP", "AVE", "PRP", "SA"]
    assert [bool(cell) for cell in first[4:]] == [task == "PRP" for task in header_tasks]
    assert all(mixed[4:]), "the mixed phase reports every one of its tasks"
    built = [p for p in (tmp_path / "demo_base").iterdir()]
    assert len(built) == 1 and (built[0] / pretrain.MARKER).is_file()
    assert json.loads((built[0] / pretrain.LOG_FILE).read_text())["instruct"] is None, "a causal-LM stage only"

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the causal-LM stage was built again")

    monkeypatch.setattr(pretrain, "pretrain", no_pretraining)
    assert script.main(TINY + ["--config.instruct.steps=3"]) == 0
    assert _table_rows(capsys.readouterr().out)[1][2] == "3 x 40"


def test_draws_run_the_stage_once_per_instruct_seed(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path))
    seeds, run_stage = [], pretrain.run_instruct_stage

    def recording(model, config, *args, **kwargs):
        seeds.append(config.instruct.seed)
        return run_stage(model, config, *args, **kwargs)

    monkeypatch.setattr(pretrain, "run_instruct_stage", recording)
    assert script.main(TINY + ["--config.instruct.first.steps=0", "--draws", "3,5"]) == 0
    output = capsys.readouterr().out
    assert seeds == [3, 5]
    assert [row[:3] for row in _table_rows(output)] == [["mixed", "3", "2 x 40"], ["mixed", "5", "2 x 40"]]
    spread = [line for line in output.splitlines() if line.endswith("of 2 draws)")]
    assert [line.split(":")[0] for line in spread] == ["AP", "AVE", "PRP", "SA"]


def test_a_draw_that_is_not_a_number_is_a_usage_error(script, tmp_path, monkeypatch):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        script.main(TINY + ["--draws", "0,one"])
    assert exit_info.value.code == cli.USAGE_ERROR
    assert not (tmp_path / "demo_base").exists()


def test_a_recipe_without_an_instruction_stage_is_refused(script, tmp_path, monkeypatch):
    monkeypatch.setenv("RECFOUND_CACHE", str(tmp_path))
    recipe = tmp_path / "no_stage.py"
    recipe.write_text("from recfound_jax.config import demo_base_config\n\n\ndef get_config():\n"
                      "    c = demo_base_config()\n    c.instruct.rows = {}\n    return c\n")
    with pytest.raises(config_lib.ConfigError, match=r"config\.instruct\.rows: empty"):
        script.main(["--config", str(recipe)] + TINY[2:])
    assert not (tmp_path / "demo_base").exists(), "refused before any model work"
