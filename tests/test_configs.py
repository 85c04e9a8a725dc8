"""Every shipped config loads; the demo ones validate; the 7B ones fail only on their placeholder paths."""
from pathlib import Path

import pytest

from recfound_jax import config as config_lib

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("demo") and p.name != "demo_base.py"],
                         ids=lambda p: p.stem)
def test_demo_configs_validate(path):
    c = config_lib.load_config_file(path)
    config_lib.validate(c, device_count=1)
    assert c.model.base == "demo" and c.data.dir == "synthetic"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("recfound_mistral7b")], ids=lambda p: p.stem)
def test_paper_recipe_configs_name_their_missing_paths(path):
    c = config_lib.load_config_file(path)
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.base"):
        config_lib.validate(c, device_count=8)
    c.model.base = "demo"  # with a real base and data directory the rest of the recipe is valid
    c.data.dir = "synthetic"
    c.data.query_len = c.data.passage_len = c.data.generative_len = 176  # the demo base's positions
    config_lib.validate(c, device_count=8)
    assert (c.train.embedding_batch, c.train.generative_batch) == (2048, 1024)


def test_ablations_switch_off_what_their_names_say():
    by_name = {p.stem: config_lib.load_config_file(p) for p in CONFIGS if p.name != "demo_base.py"}
    for name, c in by_name.items():
        assert c.s2sched.enabled == ("no_s2sched" not in name), name
        assert c.tmole.enabled == ("no_tmole" not in name), name


def test_unknown_dropout_rng_is_named():
    c = config_lib.load_config_file(next(p for p in CONFIGS if p.name == "demo.py"))
    c.tmole.dropout_rng = "philox"
    with pytest.raises(config_lib.ConfigError, match=r"config\.tmole\.dropout_rng: 'philox' not in"):
        config_lib.validate(c, device_count=1)
    for rng in ("rbg", "threefry16"):
        c.tmole.dropout_rng = rng
        config_lib.validate(c, device_count=1)
