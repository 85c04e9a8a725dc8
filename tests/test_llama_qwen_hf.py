"""Llama and Qwen2 backbones: logits, round trip, TMoLE folding, PEFT and greedy decoding against transformers."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

import recfound_jax
from recfound_jax import jsonio
from recfound_jax.convert import hf, peft_adapter
from recfound_jax.convert import safetensors_io as st
from recfound_jax.demo import synthetic
from recfound_jax.evaluate import __main__ as evaluate_cli
from recfound_jax.inference.decoding import GreedyGenerator
from recfound_jax.model.mistral import rope_frequencies
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.tasks import get_task
from tests.bpe_fixtures import LLAMA3_SPECIALS, QWEN_SPECIALS, byte_level_bpe, write_tokenizer
from tests.hf_reference import hf_logits, tiny_hf_llama, tiny_hf_qwen2

# original_max_position_embeddings=16 puts every wavelength above 4 tokens in the scaled or blended band.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
TMOLE = TMoLEConfig.default(rank=4, alpha=8.0, dropout=0.0, task_embedding_dim=16)
GENERATIVE, EMBEDDING = "Sequential_Recommendation", "Emb_query"
HF_CLASSES = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}


def _batch(vocab: int, seed: int = 0, length: int = 12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, length))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    return ids * mask, mask


def _assert_logits_match(model, reference, ids, mask, atol=1e-4):
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], reference[real], atol=atol, rtol=1e-4)


def _reload(family: str, path):
    return HF_CLASSES[family].from_pretrained(path, attn_implementation="eager").eval()


LLAMAS = {"untied-default": dict(tie=False), "tied-llama3": dict(tie=True, rope_parameters=LLAMA3, hidden=64),
          "mqa": dict(heads=8, kv_heads=1, hidden=64, layers=1)}
QWENS = {"no-window": dict(), "window-upper-layer": dict(sliding_window=4, max_window_layers=1),
         "window-every-layer": dict(sliding_window=3, max_window_layers=0, heads=8, kv_heads=2, hidden=64)}


def _hf_model(family: str, path, kwargs):
    return (tiny_hf_llama if family == "llama" else tiny_hf_qwen2)(path, **kwargs)


ALL_MODELS = [("llama", k) for k in LLAMAS.values()] + [("qwen2", k) for k in QWENS.values()]
ALL_IDS = [f"llama-{n}" for n in LLAMAS] + [f"qwen2-{n}" for n in QWENS]


@pytest.mark.parametrize("family,kwargs", ALL_MODELS, ids=ALL_IDS)
def test_logits_match_transformers(tmp_path, family, kwargs):
    reference = _hf_model(family, tmp_path, kwargs)
    model = recfound_jax.load_hf(tmp_path)
    assert model.config.family == family
    ids, mask = _batch(reference.config.vocab_size)
    _assert_logits_match(model, hf_logits(reference, ids, mask), ids, mask)


def test_config_fields_are_read(tmp_path):
    tiny_hf_llama(tmp_path / "llama", tie=True, rope_parameters=LLAMA3)
    llama = hf.read_config(tmp_path / "llama")
    assert (llama.tie_word_embeddings, llama.qkv_bias, llama.sliding_window) == (True, False, None)
    assert llama.rope_scaling.original_max_position_embeddings == 16 and llama.rope_scaling.factor == 8.0
    assert "lm_head.weight" not in st.index_checkpoint(tmp_path / "llama")
    assert recfound_jax.load_hf(tmp_path / "llama").lm_head is None
    raw = json.loads((tmp_path / "llama" / "config.json").read_text())
    legacy = {k: v for k, v in raw.items() if k != "rope_parameters"} | {"rope_theta": 1e4, "rope_scaling": {
        k: v for k, v in LLAMA3.items() if k != "rope_theta"}}
    assert hf.config_from_hf(legacy) == llama  # transformers 4's rope_scaling layout
    tiny_hf_qwen2(tmp_path / "qwen", sliding_window=4, max_window_layers=1)
    raw = json.loads((tmp_path / "qwen" / "config.json").read_text())
    qwen = hf.config_from_hf(raw)
    assert (qwen.qkv_bias, qwen.sliding_window, qwen.full_attention_layers, qwen.mixed_windows) == (True, 4, 1, True)
    assert hf.config_from_hf(raw | {"use_sliding_window": False}).sliding_window is None
    no_layer_types = {k: v for k, v in raw.items() if k != "layer_types"}
    assert hf.config_from_hf(no_layer_types) == qwen
    assert hf.config_from_hf(no_layer_types | {"max_window_layers": 2}).sliding_window is None  # covers no layer


def test_llama3_scaling_changes_the_frequencies_and_the_logits(tmp_path):
    reference = tiny_hf_llama(tmp_path, tie=True, rope_parameters=LLAMA3, hidden=64)
    model = recfound_jax.load_hf(tmp_path)
    cfg = model.config
    scaled = np.asarray(rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
    plain = np.asarray(rope_frequencies(cfg.head_dim, cfg.rope_theta))
    np.testing.assert_allclose(scaled, reference.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    assert (scaled < 0.9 * plain).all()  # the first wavelength (2 pi) is blended, the others divided
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw | {"rope_parameters": {"rope_type": "default",
                                                                                "rope_theta": 1e4}}))
    unscaled = recfound_jax.load_hf(tmp_path)
    ids, mask = _batch(cfg.vocab_size)
    real = mask.astype(bool)
    difference = np.abs(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[real]
                        - np.asarray(unscaled(jnp.asarray(ids), jnp.asarray(mask)))[real]).max()
    assert difference > 1e-3


@pytest.mark.parametrize("family,kwargs", [("llama", LLAMAS["tied-llama3"]), ("qwen2", QWENS["window-upper-layer"])],
                         ids=["llama", "qwen2"])
def test_save_hf_round_trip_in_the_family_class(tmp_path, family, kwargs):
    _hf_model(family, tmp_path / "src", kwargs)
    model = recfound_jax.load_hf(tmp_path / "src")
    recfound_jax.save_hf(model, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["architectures"] == [HF_CLASSES[family].__name__] and written["model_type"] == family
    assert set(st.index_checkpoint(tmp_path / "out")) == set(st.index_checkpoint(tmp_path / "src"))
    reloaded = _reload(family, tmp_path / "out")
    assert type(reloaded.config) is type(_reload(family, tmp_path / "src").config)
    ids, mask = _batch(model.config.vocab_size, seed=1)
    _assert_logits_match(model, hf_logits(reloaded, ids, mask), ids, mask)
    again = recfound_jax.load_hf(tmp_path / "out")
    assert again.config == model.config
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(again))


def _tmole_model(family: str, path, kwargs):
    """A TMoLE model on a tiny base whose B matrices and routers are random, so every expert matters."""
    _hf_model(family, path, kwargs)
    model = recfound_jax.load_hf(path, tmole=TMOLE)
    keys = iter(jax.random.split(jax.random.key(7), 16))
    for bank in model.adapters.banks.values():
        bank.b.set_value(0.3 * jax.random.normal(next(keys), bank.b.shape))
        bank.router_b[0].set_value(jax.random.normal(next(keys), bank.router_b[0].shape))
    return model


@pytest.mark.parametrize("family,kwargs", [("llama", LLAMAS["tied-llama3"]), ("qwen2", QWENS["window-upper-layer"])],
                         ids=["llama", "qwen2"])
def test_folded_export_loads_in_transformers_with_the_tmole_logits(tmp_path, family, kwargs):
    model = _tmole_model(family, tmp_path / "base", kwargs)
    ids, mask = _batch(model.config.vocab_size, seed=2)
    task_ids = jnp.full((ids.shape[0],), get_task(GENERATIVE).id)
    expected = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), task_ids=task_ids))
    recfound_jax.save_hf(model, tmp_path / "folded", task=GENERATIVE)
    folded = _reload(family, tmp_path / "folded")
    real = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(folded, ids, mask)[real], expected[real], atol=1e-4, rtol=1e-4)
    base = hf_logits(_reload(family, tmp_path / "base"), ids, mask)
    assert np.abs(base[real] - expected[real]).max() > 1e-3  # the adapters make the difference


@pytest.mark.parametrize("family,kwargs", [("llama", LLAMAS["tied-llama3"]), ("qwen2", QWENS["window-upper-layer"])],
                         ids=["llama", "qwen2"])
def test_tmole_trains_only_the_adapters(tmp_path, family, kwargs):
    model = _tmole_model(family, tmp_path, kwargs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert all(str(path[0]) == "adapters" for path, _ in nnx.to_flat_state(params))
    ids, mask = _batch(model.config.vocab_size)
    task_ids = jnp.full((ids.shape[0],), get_task(EMBEDDING).id)

    def loss(params):
        hidden = nnx.merge(graphdef, params, rest).hidden_states(jnp.asarray(ids), jnp.asarray(mask),
                                                                  task_ids=task_ids, causal=False)
        return jnp.mean(hidden ** 2)

    grads = jax.grad(loss)(params)
    for name, bank in grads["adapters"]["banks"].items():
        assert float(jnp.abs(bank["a"][...]).max()) > 0 and float(jnp.abs(bank["b"][...]).max()) > 0, name


def test_peft_adapter_on_qwen2_gives_the_tmole_logits(tmp_path):
    model = _tmole_model("qwen2", tmp_path / "base", QWENS["no-window"])
    task = get_task(GENERATIVE)
    peft_adapter.save_peft_adapter(model, task, tmp_path / "adapter", str(tmp_path / "base"))
    peft_model = peft.PeftModel.from_pretrained(_reload("qwen2", tmp_path / "base"), tmp_path / "adapter").eval()
    ids, mask = _batch(model.config.vocab_size, seed=3)
    expected = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), task_ids=jnp.full((ids.shape[0],), task.id)))
    real = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(peft_model, ids, mask)[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,kwargs", [("llama", LLAMAS["tied-llama3"]), ("qwen2", QWENS["window-upper-layer"])],
                         ids=["llama", "qwen2"])
def test_greedy_kv_cache_decoding_equals_transformers_generate(tmp_path, family, kwargs):
    reference = _hf_model(family, tmp_path, kwargs | {"init_std": 0.3})
    model = recfound_jax.load_hf(tmp_path)
    rng = np.random.default_rng(4)
    prompts = [list(rng.integers(3, model.config.vocab_size, size=n)) for n in (7, 3, 10)]  # longer than the window
    steps = 6
    eos = model.config.vocab_size - 1  # greedy continuations are compared whole, up to an EOS if one comes
    generator = GreedyGenerator(model, eos_id=eos, pad_id=0, max_prompt_len=16)
    ours = generator.generate(prompts, 0, max_new_tokens=steps)
    assert len(set(ours.ravel().tolist())) > steps  # the continuations depend on the context
    for prompt, row in zip(prompts, ours):
        with torch.no_grad():
            out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones_like(torch.tensor([prompt])),
                                     max_new_tokens=steps, do_sample=False, eos_token_id=eos, pad_token_id=0)
        theirs = out[0, len(prompt):].numpy()
        np.testing.assert_array_equal(row[:len(theirs)], theirs)


def test_unsupported_configs_are_named(tmp_path):
    tiny_hf_llama(tmp_path, rope_parameters=LLAMA3)
    raw = json.loads((tmp_path / "config.json").read_text())
    source = str(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"config\.json: model_type 'gemma' is not supported"):
        hf.config_from_hf(raw | {"model_type": "gemma"}, source)
    with pytest.raises(ValueError, match=r"config\.json: architectures \['LlamaForSequenceClassification'\]"):
        hf.config_from_hf(raw | {"architectures": ["LlamaForSequenceClassification"]}, source)
    yarn = raw | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}
    with pytest.raises(ValueError, match=r"config\.json: rope_parameters\.rope_type 'yarn' is not supported"):
        hf.config_from_hf(yarn, source)
    with pytest.raises(ValueError, match=r"config\.json: rope_scaling\.rope_type 'linear'"):
        hf.config_from_hf(raw | {"rope_scaling": {"type": "linear", "factor": 2.0}}, source)
    with pytest.raises(ValueError, match=r"config\.json: attention_bias=true is not supported"):
        hf.config_from_hf(raw | {"attention_bias": True}, source)
    (tmp_path / "config.json").write_text(json.dumps(yarn))
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        recfound_jax.load_hf(tmp_path)
    llama = hf.config_from_hf(raw)
    with pytest.raises(ValueError, match="LlamaForCausalLM has no sliding window"):
        hf.config_to_hf(dataclasses.replace(llama, sliding_window=8), jnp.float32)


@pytest.mark.parametrize("family,prompt_format", [("llama", "llama3"), ("qwen2", "qwen")])
def test_a_zero_shot_baseline_runs_through_evaluate_base(tmp_path, family, prompt_format, capsys):
    """`evaluate --base` on a tiny checkpoint of the family with its own byte-level BPE tokenizer.json and chat
    format scores a generative and an embedding task (the paper's "w/o finetuning" rows of other models)."""
    data = tmp_path / "data"
    synthetic.ensure_dataset(data)
    specials = LLAMA3_SPECIALS if family == "llama" else QWEN_SPECIALS
    base = tmp_path / family
    (tiny_hf_llama if family == "llama" else tiny_hf_qwen2)(base, vocab=512)
    write_tokenizer(base, byte_level_bpe(synthetic.pretraining_corpus(data), specials, 500),
                    bos_token=specials[0], eos_token=specials[-1])
    out = tmp_path / "eval"
    argv = ["--base", str(base), "--data", str(data), "--out", str(out), "--prompt_format", prompt_format,
            "--tasks", "SA,Q2I", "--limit", "3", "--max_new_tokens", "3", "--progress=false"]
    assert evaluate_cli.main(argv) == 0
    metrics = jsonio.read_json(out / "metrics.json")
    assert metrics["base"] == str(base) and metrics["prompt_format"] == prompt_format
    assert {t: r["n"] for t, r in metrics["tasks"].items()} == {"Sentiment_Analysis": 3, "Emb_query": 3}
    assert "w/o finetuning" in (out / "results.md").read_text()
    with pytest.raises(SystemExit) as exited:
        evaluate_cli.main(["--base", str(base), "--out", str(out)])
    assert exited.value.code == 2 and "--base needs --data DATA_DIR" in capsys.readouterr().err
