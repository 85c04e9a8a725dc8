"""The Flax Mistral against HF transformers' torch MistralForCausalLM, and the HF round trip."""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import recfound_jax
from recfound_jax.convert import safetensors_io
from tests.hf_reference import hf_logits, tiny_hf_mistral

CONFIGS = [
    dict(heads=4, kv_heads=4, rope_theta=1e4),
    dict(heads=4, kv_heads=2, rope_theta=1e6),
    dict(heads=8, kv_heads=1, hidden=64, rope_theta=1e6, layers=3),
    dict(heads=4, kv_heads=2, sliding_window=4, rope_theta=1e4),
]


def _batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(3, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    return ids * mask, mask


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_logits_match_transformers(tmp_path, kwargs):
    hf = tiny_hf_mistral(tmp_path, **kwargs)
    model = recfound_jax.load_hf(tmp_path)
    ids, mask = _batch(hf.config.vocab_size)
    expected = hf_logits(hf, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    chex.assert_shape(got, expected.shape)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_rope_theta_read_from_both_config_layouts(tmp_path):
    tiny_hf_mistral(tmp_path, rope_theta=1e6)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert recfound_jax.convert.hf.config_from_hf(raw).rope_theta == 1e6
    legacy = {k: v for k, v in raw.items() if k != "rope_parameters"} | {"rope_theta": 5e5}
    assert recfound_jax.convert.hf.config_from_hf(legacy).rope_theta == 5e5


def test_save_hf_loads_in_transformers_with_same_logits(tmp_path):
    tiny_hf_mistral(tmp_path / "src", heads=4, kv_heads=2, rope_theta=1e6)
    model = recfound_jax.load_hf(tmp_path / "src")
    recfound_jax.save_hf(model, tmp_path / "out")
    reloaded = transformers.MistralForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids, mask = _batch(model.config.vocab_size, seed=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[real],
                               hf_logits(reloaded, ids, mask)[real], atol=1e-4, rtol=1e-4)


def test_load_save_load_is_exact_and_shards(tmp_path):
    tiny_hf_mistral(tmp_path / "src")
    first = recfound_jax.load_hf(tmp_path / "src")
    recfound_jax.save_hf(first, tmp_path / "out", max_shard_bytes=20_000)
    assert (tmp_path / "out" / safetensors_io.INDEX_FILE).is_file()
    second = recfound_jax.load_hf(tmp_path / "out")
    chex.assert_trees_all_equal(jax.tree.leaves(first), jax.tree.leaves(second))


def test_bfloat16_load_round_trip(tmp_path):
    tiny_hf_mistral(tmp_path / "src")
    model = recfound_jax.load_hf(tmp_path / "src", dtype=jnp.bfloat16)
    assert model.layers.q[...].dtype == jnp.bfloat16
    recfound_jax.save_hf(model, tmp_path / "out")
    again = recfound_jax.load_hf(tmp_path / "out", dtype=jnp.bfloat16)
    chex.assert_trees_all_equal(model.layers.q[...], again.layers.q[...])
    reloaded = transformers.MistralForCausalLM.from_pretrained(tmp_path / "out")
    assert str(reloaded.dtype) == "torch.bfloat16"


def test_wrong_missing_or_misshapen_tensor_is_named(tmp_path):
    tiny_hf_mistral(tmp_path / "src")
    model = recfound_jax.load_hf(tmp_path / "src")
    raw = json.loads((tmp_path / "src" / "config.json").read_text())
    bad = dict(raw, intermediate_size=raw["intermediate_size"] + 1)
    (tmp_path / "src" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape"):
        recfound_jax.load_hf(tmp_path / "src")
    recfound_jax.save_hf(model, tmp_path / "out")
    infos = safetensors_io.index_checkpoint(tmp_path / "out")
    tensors = [(n, i.shape, i.dtype, (lambda i=i: safetensors_io.read_tensor(i)))
               for n, i in infos.items() if n != "model.layers.1.self_attn.k_proj.weight"]
    safetensors_io.write_checkpoint(tmp_path / "missing", tensors)
    (tmp_path / "missing" / "config.json").write_text((tmp_path / "out" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj\.weight"):
        recfound_jax.load_hf(tmp_path / "missing")


def test_pickle_only_checkpoint_is_refused(tmp_path):
    tiny_hf_mistral(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors only"):
        recfound_jax.load_hf(tmp_path)
