"""Every shipped config loads by name; the demo ones validate; the 7B ones fail only on their placeholder paths."""
from pathlib import Path

import pytest

from recfound_jax import config as config_lib
from recfound_jax import recipes
from recfound_jax.tasks import BY_SHORT

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = recipes.names()


def test_every_module_of_configs_is_a_recipe_by_name_or_by_path(monkeypatch):
    assert CONFIGS == sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))
    assert {"demo", "demo_base", "recfound_mistral7b", "demo_no_tmole"} <= set(CONFIGS)
    monkeypatch.chdir(ROOT)
    assert recipes.load("demo").to_dict() == recipes.load("configs/demo.py").to_dict()
    assert recipes.load("demo_no_tmole").to_dict() == recipes.load(ROOT / "configs" / "demo_no_tmole.py").to_dict()


def test_an_unknown_recipe_lists_the_shipped_names(tmp_path):
    with pytest.raises(recipes.RecipeError, match=r"unknown recipe 'demoo'; the shipped recipes are demo, demo_base, "):
        recipes.load("demoo")
    with pytest.raises(recipes.RecipeError, match=r"nope\.py: no such recipe file; the shipped recipes are demo, "):
        recipes.load(tmp_path / "nope.py")


def test_an_unknown_base_recipe_is_named():
    c = recipes.load("demo")
    c.model.base_recipe = "no_such_recipe"
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.base_recipe: 'no_such_recipe' is neither"):
        config_lib.validate(c, device_count=1)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("demo") and n != "demo_base"])
def test_demo_configs_validate(name):
    c = recipes.load(name)
    config_lib.validate(c, device_count=1)
    assert c.model.base == "demo" and c.data.dir == "synthetic"


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("recfound_mistral7b")])
def test_paper_recipe_configs_name_their_missing_paths(name):
    c = recipes.load(name)
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.base"):
        config_lib.validate(c, device_count=8)
    c.model.base = "demo"  # with a real base and data directory the rest of the recipe is valid
    c.data.dir = "synthetic"
    c.data.query_len = c.data.passage_len = c.data.generative_len = 176  # the demo base's positions
    config_lib.validate(c, device_count=8)
    assert c.train.embedding_batch == (0 if "generative_only" in name else 2048)
    assert c.train.generative_batch == (0 if "embedding_only" in name else 1024)


def test_ablations_switch_off_what_their_names_say():
    by_name = {name: recipes.load(name) for name in CONFIGS if name != "demo_base"}
    for name, c in by_name.items():
        assert c.s2sched.enabled == ("no_s2sched" not in name), name
        assert c.tmole.enabled == ("no_tmole" not in name), name
        assert (c.train.generative_batch == 0) == ("embedding_only" in name), name
        assert (c.train.embedding_batch == 0) == ("generative_only" in name), name


def test_unknown_dropout_rng_is_named():
    c = recipes.load("demo")
    c.tmole.dropout_rng = "philox"
    with pytest.raises(config_lib.ConfigError, match=r"config\.tmole\.dropout_rng: 'philox' not in"):
        config_lib.validate(c, device_count=1)
    c.tmole.dropout_rng = "threefry16"
    config_lib.validate(c, device_count=1)


def test_data_num_proc_below_one_is_named():
    c = recipes.load("demo")
    c.data.num_proc = 0
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.num_proc: must be >= 1, got 0"):
        config_lib.validate(c, device_count=1)
    c.data.num_proc = 2
    config_lib.validate(c, device_count=1)


def test_a_probe_that_the_step_chunks_cannot_divide_is_named():
    c = recipes.load("recfound_mistral7b")  # chunks of 8: 128 rows a task divide, 100 do not
    c.model.base, c.data.dir = "demo", "synthetic"
    c.data.query_len = c.data.passage_len = c.data.generative_len = 176  # the demo base's positions
    config_lib.validate(c, device_count=8)
    c.s2sched.probe_size = 100
    with pytest.raises(config_lib.ConfigError,
                       match=r"config\.s2sched\.probe_size: 100 x 3 tasks = 300 probe rows, not a multiple of "
                             r"train\.gradcache_chunk=8"):
        config_lib.validate(c, device_count=8)
    c.s2sched.probe_size, c.train.gradcache_chunk = 5, 0
    with pytest.raises(config_lib.ConfigError, match=r"50 probe rows, not a multiple of train\.generative_micro_batch"):
        config_lib.validate(c, device_count=8)
    c.s2sched.enabled = False  # no probe: nothing to chunk
    config_lib.validate(c, device_count=8)


def test_a_run_config_saved_before_a_key_existed_loads_with_its_default():
    saved = config_lib.to_dict(recipes.load("demo"))
    del saved["tmole"]["dropout_per_expert"]
    del saved["eval"]["max_new_tokens"]
    c = config_lib.from_dict(saved)
    assert c.tmole.dropout_per_expert is False
    assert c.eval.max_new_tokens.to_dict() == config_lib.base_config().eval.max_new_tokens.to_dict()
    assert c.train.steps == 300  # the saved values stay
    with pytest.raises(AttributeError):
        c.tmole.no_such_key = 1  # locked


def test_data_tasks_names_a_bad_task_and_an_empty_branch():
    c = recipes.load("demo")
    c.data.tasks = "U2I,XYZ"
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.tasks: unknown task 'XYZ'"):
        config_lib.validate(c, device_count=1)
    c.data.tasks = "SR,UP"
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.tasks: 'SR,UP' has no embedding task, so "
                                                     r"train\.embedding_batch must be 0"):
        config_lib.validate(c, device_count=1)
    c.train.embedding_batch = 0
    config_lib.validate(c, device_count=1)
    assert config_lib.run_tasks(c) == ((), (BY_SHORT["SR"], BY_SHORT["UP"]))
    c.data.tasks = ""
    assert [len(kind) for kind in config_lib.run_tasks(c)] == [3, 10]
