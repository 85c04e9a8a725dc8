"""Pretraining of the demo base: packing, loss going down, the written HF directory, the cache."""
from __future__ import annotations

import filecmp
import itertools
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from recfound_jax import config as config_lib
from recfound_jax import load_hf, recipes
from recfound_jax.data import formatting
from recfound_jax.demo import pretrain as pt
from recfound_jax.demo import synthetic, synthetic_world
from recfound_jax.model.mistral import BaseParam, Mistral
from recfound_jax.tokenizer import Tokenizer, default_tokenizer_path
from recfound_jax.train import inputs


def demo_base_recipe():
    return recipes.load("demo_base")


def tiny_config():
    config = demo_base_recipe()
    config.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                        head_dim=8, max_position_embeddings=192)  # the instruction rows need 160 positions
    config.data.update(generative_rows_per_task=2, eval_rows_per_task=1)
    config.train.update(seq_len=32, batch_size=4, steps=5, warmup_steps=1, log_every=1)
    config.instruct.rows = {"AP": 3, "PRP": 2}
    config.instruct.update(steps=3, batch_size=4, warmup_steps=1, log_every=1)
    config.instruct.first.update(rows={"PRP": 4}, steps=2, batch_size=2)
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """ensure_base of the tiny config with RECFOUND_CACHE pointing at a fresh folder: (cache, base path)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFOUND_CACHE", str(cache))
        path = pt.ensure_base(tiny_config(), progress=False)
    return cache, path


def test_default_config_is_valid_and_has_a_demo_sized_vocabulary():
    config = demo_base_recipe()
    config_lib.validate_demo_base(config)
    assert config.model.tokenizer == "demo" and config.model.vocab_size < Tokenizer().vocab_size
    assert config.train.seq_len <= config.model.max_position_embeddings


def test_the_v3_tokenizer_takes_its_own_vocabulary_size(tmp_path):
    config = demo_base_recipe()
    config.model.tokenizer = "mistral_v3"
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.vocab_size: must equal .*32768"):
        config_lib.validate_demo_base(config)
    config.model.vocab_size = 32768
    config_lib.validate_demo_base(config)
    tokenizer = pt.write_tokenizer(config, tmp_path / "unused", tmp_path)
    assert filecmp.cmp(tmp_path / "tokenizer.model", default_tokenizer_path(), shallow=False)
    assert tokenizer.vocab_size == 32768


@pytest.mark.parametrize("key, value", [("train.seq_len", 1000), ("model.vocab_size", 100),
                                        ("model.tokenizer", "gpt2"),
                                        ("model.num_kv_heads", 3), ("train.decay", "step"),
                                        ("instruct.rows.U2I", 100), ("instruct.rows.XX", 100),
                                        ("instruct.rows.AP", 0), ("instruct.warmup_steps", 1000),
                                        ("instruct.decay", "step"), ("instruct.first.rows.XX", 100),
                                        ("instruct.first.steps", -1), ("instruct.first.steps", 5),
                                        ("instruct.first.batch_size", 100000)])
def test_validate_config_names_the_bad_key(key, value):
    config = demo_base_recipe()
    config.instruct.first.steps = 300  # the first phase on, so that its keys are checked too
    config_lib.validate_demo_base(config)
    *sections, name = key.split(".")
    parent = config
    for section in sections:
        parent = parent[section]
    parent[name] = value
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_lib.validate_demo_base(config)


def test_pack_windows_cut_one_shuffled_stream():
    docs = [np.arange(start, start + n, dtype=np.int32) for start, n in ((0, 7), (100, 12), (200, 5))]
    windows = pt.pack_windows(docs, seq_len=4, rng=np.random.default_rng(3))
    total = sum(len(d) for d in docs)
    assert windows.shape == ((total - 1) // 4, 5)
    np.testing.assert_array_equal(windows[1:, 0], windows[:-1, -1])  # each window starts on the last target
    stream = np.concatenate([windows[0]] + [w[1:] for w in windows[1:]])
    orders = [np.concatenate([docs[i] for i in order]) for order in itertools.permutations(range(len(docs)))]
    assert any(np.array_equal(stream, full[:len(stream)]) for full in orders)


def test_schedule_warms_up_then_decays_to_the_end_fraction():
    config = demo_base_recipe()
    t = config.train
    schedule = pt.learning_rate_schedule(config.train)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(t.warmup_steps)) == pytest.approx(t.learning_rate, rel=1e-5)
    assert float(schedule(t.steps)) == pytest.approx(t.learning_rate * t.end_lr_fraction, rel=1e-4)


def test_loss_starts_at_uniform_and_falls_on_a_fixed_batch(built):
    config = tiny_config()
    config.train.learning_rate = 1e-2
    data = config_lib.synthetic_dir(config.data.scale, config.data.seed, built[0])
    assert (data / synthetic.MARKER).is_file()
    docs = [np.asarray(ids, np.int32) for ids in
            Tokenizer(built[1]).encode_batch(pt.load_documents(config, data), add_bos=True, add_eos=True)]
    batch = jnp.asarray(next(pt.batch_stream(docs, 32, 4, seed=0)))
    model = Mistral(pt.model_config(config), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, BaseParam, ...)
    tx = pt.make_optimizer(config.train)
    opt_state = tx.init(params)
    step = pt.make_train_step(graphdef, rest, tx)
    losses = []
    for _ in range(6):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    # small random init: next-token distribution is close to uniform over the vocabulary
    assert losses[0] == pytest.approx(math.log(config.model.vocab_size), abs=0.05)
    assert losses[-1] < losses[0] - 0.5, losses


def test_pretrain_writes_a_base_that_jax_and_transformers_agree_on(built):
    _, path = built
    assert (path / pt.MARKER).is_file()
    tokenizer = Tokenizer(path)
    assert tokenizer.vocab_size == tiny_config().model.vocab_size == load_hf(path).config.vocab_size
    summary = json.loads((path / pt.LOG_FILE).read_text())
    losses = [entry["loss"] for entry in summary["log"]]
    assert len(losses) == 5 and np.all(np.isfinite(losses))
    assert summary["final_loss"] < summary["initial_loss"]
    assert np.isfinite(summary["valid_loss_after"]) and summary["valid_loss_after"] < summary["valid_loss_before"]
    stage = summary["instruct"]
    assert sum(stage["rows"].values()) + sum(stage["dropped_held_out_inputs"].values()) == 3 + 2
    assert [entry["step"] for entry in stage["log"]] == [1, 2, 3]
    assert set(stage["row_length"]) == {"AP", "PRP"} and max(stage["row_length"].values()) <= 192
    after_newline = formatting.Formatter(tokenizer).encode_after_newline  # answers follow "<|assistant|>\n"
    slots = {"AP": 1 + max(len(after_newline([a])[0]) for a in ("yes", "no")),  # the answer's pieces and EOS
             "PRP": 1 + max(len(after_newline([a])[0]) for a in "ABC")}
    assert stage["answer_slots"] == slots
    assert stage["batch_rows"] == {"AP": 2, "PRP": 2}
    assert stage["answer_slots_per_batch"] == 2 * slots["AP"] + 2 * slots["PRP"]
    for held_out in (stage["valid_before"], stage["valid_after"]):
        assert set(held_out) == {"AP", "PRP"}
        assert all(np.isfinite(v["loss"]) and 0.0 <= v["first_token_accuracy"] <= 1.0 for v in held_out.values())
    first = stage["first"]  # PRP alone, before the mix: the mix starts from the model the first phase left
    assert set(first["rows"]) == {"PRP"} and first["batch_rows"] == {"PRP": 2}
    assert [entry["step"] for entry in first["log"]] == [1, 2]
    assert first["valid_after"]["PRP"]["loss"] != first["valid_before"]["PRP"]["loss"]
    assert stage["valid_before"]["PRP"]["loss"] == pytest.approx(first["valid_after"]["PRP"]["loss"], rel=1e-5)

    ids = np.array([tokenizer.encode("Acme red steel kettle. Category: Kitchen.", add_bos=True)])
    ours = np.asarray(load_hf(path)(jnp.asarray(ids)))
    reference = transformers.MistralForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids)).logits.float().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_ensure_base_builds_once_and_reuses(built, monkeypatch):
    cache, path = built
    assert path == pt.base_dir(tiny_config(), cache)
    marker_mtime = (path / pt.MARKER).stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("ensure_base retrained a complete base")

    monkeypatch.setattr(pt, "pretrain", no_training)
    monkeypatch.setenv("RECFOUND_CACHE", str(cache))
    assert pt.ensure_base(tiny_config(), progress=False) == path
    assert (path / pt.MARKER).stat().st_mtime_ns == marker_mtime
    changed = tiny_config()
    changed.train.steps = 6
    assert pt.base_dir(changed, cache) != path
    changed = tiny_config()
    changed.instruct.steps = 4
    assert pt.base_dir(changed, cache) != path
    changed = tiny_config()
    changed.instruct.first.steps = 3
    assert pt.base_dir(changed, cache) != path
    off, without_first = tiny_config(), tiny_config()
    off.instruct.first.update(steps=0, rows={"SA": 9})  # an off first phase's other keys decide nothing
    del without_first.instruct["first"]
    assert pt.config_hash(off) == pt.config_hash(without_first)


def test_the_instruction_stage_trains_on_no_held_out_input(built, monkeypatch):
    cache, _ = built
    config = tiny_config()
    config.instruct.rows = {"PRP": 300, "AP": 20}
    config.instruct.update(steps=1, warmup_steps=0)
    config.instruct.first.steps = 0  # the mixed phase alone: seen[0] is its rows
    data_dir = config_lib.synthetic_dir(config.data.scale, config.data.seed, cache)
    seen = []
    real_train = pt.instruct_train
    monkeypatch.setattr(pt, "instruct_train", lambda model, t, rows, valid, **kw: seen.append(rows) or
                        real_train(model, t, rows, valid, **kw))
    tokenizer = Tokenizer(built[1])
    summary = pt.run_instruct_stage(Mistral(pt.model_config(config), rngs=nnx.Rngs(0)), config, data_dir,
                                    tokenizer, progress=False)
    held_out = {formatting.input_text(row["text"][0]) for split in ("valid", "test")
                for row in map(json.loads,
                               (data_dir / split / "Product_Relation_Prediction.jsonl").read_text().splitlines())}
    drawn = synthetic.extra_train_rows(synthetic_world.build_world(1, 0), "PRP", 300, config.instruct.seed)
    clashing = sum(formatting.input_text(row["text"][0]) in held_out for row in drawn)
    assert clashing > 0, "PRP's product pairs recur, so some drawn rows are held-out inputs"
    assert summary["first"] is None
    assert summary["dropped_held_out_inputs"]["PRP"] == clashing
    assert summary["rows"]["PRP"] == len(seen[0]["PRP"]) == 300 - clashing
    trained = {tokenizer.decode([int(t) for t, m in zip(ids, mask) if m]) for ids, mask in
               zip(seen[0]["PRP"].ids, seen[0]["PRP"].mask)}
    kept = {formatting.input_text(row["text"][0]) for row in drawn} - held_out
    assert all(any(text in prompt for prompt in trained) for text in kept), "the decoded rows hold their inputs"
    assert not any(text in prompt for prompt in trained for text in held_out)


def test_an_empty_task_list_turns_the_instruction_stage_off(built, tmp_path):
    config = tiny_config()
    config.instruct.rows = {}
    without_section = tiny_config()
    del without_section["instruct"]
    assert pt.config_hash(config) == pt.config_hash(without_section) != pt.config_hash(tiny_config())
    data = config_lib.synthetic_dir(config.data.scale, config.data.seed, built[0])
    path = pt.pretrain(config, tmp_path / "base", data_dir=data, progress=False)
    summary = json.loads((path / pt.LOG_FILE).read_text())
    assert summary["instruct"] is None
    # the same causal-LM stage, loss for loss; the instruction stage is what tells the two bases apart
    staged = json.loads((built[1] / pt.LOG_FILE).read_text())
    assert [e["loss"] for e in summary["log"]] == [e["loss"] for e in staged["log"]]
    assert not np.allclose(np.asarray(load_hf(path).embed[...]), np.asarray(load_hf(built[1]).embed[...]))


def test_a_crash_leaves_no_half_written_base(tmp_path, monkeypatch):
    def crash(config, target, data_dir, progress):
        (target / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pt, "_write_base", crash)
    out = tmp_path / "base"
    with pytest.raises(RuntimeError, match="killed"):
        pt.pretrain(tiny_config(), out, data_dir=tmp_path, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_demo_base_honours_the_progress_flag(monkeypatch):
    """`--noprogress` reaches the demo base's build: inputs.resolve_base hands its flag to ensure_base."""
    seen = []
    monkeypatch.setattr(pt, "ensure_base", lambda config, **kwargs: seen.append(kwargs) or "/base")
    c = recipes.load("demo")
    assert str(inputs.resolve_base(c, progress=False)) == "/base"
    assert str(inputs.resolve_base(c)) == "/base"
    assert seen == [{"progress": False}, {"progress": True}]


def test_the_demo_base_is_built_on_the_run_s_synthetic_world(monkeypatch):
    """A run on another synthetic seed or scale gets a base pretrained on that world, in a folder of its own."""
    c = recipes.load("demo")
    first = inputs.demo_base_recipe(c)
    assert (first.data.seed, first.data.scale) == (0, 1)
    c.data.synthetic_seed = 1
    second = inputs.demo_base_recipe(c)
    assert (second.data.seed, second.data.scale) == (1, 1)
    assert pt.base_dir(first) != pt.base_dir(second)
    assert inputs.resolve_base(c, build=False) == pt.base_dir(second)
