"""The Flax Mistral on its own: KV cache, attention forms, sharded forward, TMoLE gates and folding."""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recfound_jax import parallel, tasks
from recfound_jax.convert.hf import folded_weights
from recfound_jax.model import attention
from recfound_jax.model import tmole as tmole_lib
from recfound_jax.model.mistral import Mistral, MistralConfig, head_logits
from recfound_jax.model.tmole import (
    TMoLEConfig,
    _threefry16_draws,
    dropout_keep_mask,
    expert_deltas,
    folded_delta,
    kept_fraction,
)

CFG = MistralConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, rope_theta=1e4)
TMOLE = TMoLEConfig.default(rank=4, alpha=8.0, dropout=0.0, task_embedding_dim=16)


def _randomise_b(model: Mistral, seed: int = 0) -> None:
    """Give the zero-initialised B matrices random values so adapters change the output."""
    key = jax.random.key(seed)
    for bank in model.adapters.banks.values():
        key, sub = jax.random.split(key)
        bank.b.set_value(0.05 * jax.random.normal(sub, bank.b[...].shape))


def _ids(batch=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(1, CFG.vocab_size, (batch, length)))


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_decode_equals_full_forward(window):
    cfg = MistralConfig(**{**CFG.__dict__, "sliding_window": window})
    model = Mistral(cfg, tmole=TMOLE, rngs=nnx.Rngs(0))
    _randomise_b(model)
    ids, task_ids = _ids(2, 9), jnp.array([4, 7])
    full = model(ids, task_ids=task_ids)
    cache = model.init_cache(2, 12)
    prompt = 4
    logits, cache = model.prefill(ids[:, :prompt], jnp.ones((2, prompt), jnp.int32), cache, task_ids=task_ids)
    np.testing.assert_allclose(logits, full[:, :prompt], atol=1e-5)
    last, _ = model.prefill(ids[:, :prompt], jnp.ones((2, prompt), jnp.int32), model.init_cache(2, 12),
                            task_ids=task_ids, logits_at=jnp.array([prompt - 1, 1]))
    np.testing.assert_allclose(last, full[jnp.arange(2), jnp.array([prompt - 1, 1])], atol=1e-5)
    for pos in range(prompt, 9):
        step, cache = model.decode_step(ids[:, pos], jnp.full((2,), pos), cache, task_ids=task_ids)
        np.testing.assert_allclose(step, full[:, pos], atol=1e-5)


def test_decode_rows_at_their_own_positions():
    """Right-padded prompts of different lengths continue each from its own end."""
    model = Mistral(CFG, rngs=nnx.Rngs(1))
    ids = _ids(2, 8, seed=3)
    lengths = jnp.array([5, 3])
    mask = (jnp.arange(8)[None] < lengths[:, None]).astype(jnp.int32)
    cache = model.init_cache(2, 8)
    _, cache = model.prefill(ids[:, :5] * mask[:, :5], mask[:, :5], cache)
    step, _ = model.decode_step(ids[jnp.arange(2), lengths], lengths, cache)
    for row, n in enumerate([5, 3]):
        full = model(ids[row:row + 1, :n + 1])
        np.testing.assert_allclose(step[row], full[0, n], atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 4])
def test_structured_attention_equals_explicit_mask(causal, window):
    key = jax.random.key(0)
    q, k, v = (jax.random.normal(s, shape) for s, shape in
               zip(jax.random.split(key, 3), [(3, 8, 4, 8), (3, 8, 2, 8), (3, 8, 2, 8)]))
    lengths = jnp.array([8, 5, 2])
    mask_1d = (jnp.arange(8)[None] < lengths[:, None]).astype(jnp.int32)
    explicit = attention.attend(q, k, v, attention.full_sequence_mask(mask_1d, 8, causal=causal, sliding_window=window))
    structured = attention.attend_right_padded(q, k, v, lengths, causal=causal, sliding_window=window)
    real = np.asarray(mask_1d, bool)
    np.testing.assert_allclose(np.asarray(structured)[real], np.asarray(explicit)[real], atol=1e-5)


def test_bidirectional_differs_from_causal_only_through_attention():
    one_layer = MistralConfig(**{**CFG.__dict__, "num_layers": 1})
    model = Mistral(one_layer, rngs=nnx.Rngs(0))
    ids = _ids(1, 6)
    causal = model.hidden_states(ids, causal=True)
    bidir = model.hidden_states(ids, causal=False)
    # With one layer the last token attends to every token either way.
    np.testing.assert_allclose(causal[:, -1], bidir[:, -1], atol=1e-5)
    assert not np.allclose(causal[:, 0], bidir[:, 0], atol=1e-3)


def test_zero_b_equals_base_model_exactly():
    base = Mistral(CFG, rngs=nnx.Rngs(0))
    adapted = Mistral(CFG, tmole=TMOLE, rngs=nnx.Rngs(0))
    ids = _ids()
    for attr in ("embed", "final_norm", "lm_head"):
        getattr(adapted, attr).set_value(getattr(base, attr)[...])
    for name, value in base.layers.arrays().items():
        getattr(adapted.layers, name).set_value(value)
    expected = base(ids)
    got = adapted(ids, task_ids=jnp.array([0, 5, 12]))
    chex.assert_trees_all_equal(got, expected)


@pytest.mark.parametrize("counts", [(2, 2, 2), (3, 0, 3), (1, 2, 0)])
def test_gates_mask_the_other_kind(counts):
    cfg = TMoLEConfig.default(num_embedding=counts[0], num_shared=counts[1], num_generative=counts[2],
                              rank=2, task_embedding_dim=8, router_hidden=(6,))
    model = Mistral(CFG, tmole=cfg, rngs=nnx.Rngs(0))
    task_ids = jnp.arange(tasks.TASK_TABLE_SIZE)
    kinds = cfg.expert_kinds()
    by_path = {path: model.adapters.gates(task_ids, path) for path in tmole_lib.PATHS}
    for path, gates in by_path.items():
        for name, gate in gates.items():
            chex.assert_shape(gate, (CFG.num_layers, tasks.TASK_TABLE_SIZE, cfg.num_experts))
            np.testing.assert_allclose(gate.sum(-1), 1.0, atol=1e-6)
            for task in tasks.TASKS:
                other = 2 if task.is_embedding else 0
                assert np.all(np.asarray(gate[:, task.id, kinds == other]) == 0.0)
                assert np.all(np.asarray(gate[:, task.id, kinds != other]) > 0.0)
            # the "none" row follows the call path, as the released layer masks by path
            none = np.asarray(gate[:, tasks.NONE_TASK_ID])
            other = 2 if path == "encoding" else 0
            assert np.all(none[:, kinds == other] == 0.0) and np.all(none[:, kinds != other] > 0.0)
            if path == "generation":  # the 13 tasks route the same on both paths
                chex.assert_trees_all_equal(gate[:, :tasks.NUM_TASKS], by_path["encoding"][name][:, :tasks.NUM_TASKS])
    with pytest.raises(ValueError, match="path must be one of"):
        model.adapters.gates(task_ids, "decode")


def test_the_none_task_is_routed_by_the_call_path():
    """Id 13 through the model: the encoding forward uses the embedding experts' gates, the generation
    forward the generative ones; shown by zeroing the generative experts' B matrices."""
    cfg = TMoLEConfig.default(num_embedding=1, num_shared=0, num_generative=1, rank=2, task_embedding_dim=8)
    model = Mistral(CFG, tmole=cfg, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (2, 6), 0, CFG.vocab_size)
    none = jnp.full((2,), tasks.NONE_TASK_ID)
    for bank in model.adapters.banks.values():
        bank.b[...] = jax.random.normal(jax.random.key(2), bank.b.shape)
    encoding, generation = (model.hidden_states(ids, task_ids=none, causal=c) for c in (False, True))
    kinds = cfg.expert_kinds()
    for bank in model.adapters.banks.values():  # zero the generative experts: generation must change, encoding not
        bank.b[...] = jnp.where(jnp.asarray(kinds == 2)[None, :, None, None], 0.0, bank.b[...])
    chex.assert_trees_all_equal(model.hidden_states(ids, task_ids=none, causal=False), encoding)
    assert not np.allclose(model.hidden_states(ids, task_ids=none, causal=True), generation)


def test_plain_lora_when_disabled():
    model = Mistral(CFG, tmole=TMoLEConfig.default(enabled=False, rank=8, task_embedding_dim=8), rngs=nnx.Rngs(0))
    assert model.adapters.banks["q"].a[...].shape == (CFG.num_layers, 1, CFG.hidden_size, 8)
    assert not hasattr(model.adapters, "task_embedding")
    _randomise_b(model)
    np.testing.assert_allclose(model(_ids(), task_ids=jnp.array([0, 1, 2])),
                               model(_ids(), task_ids=jnp.array([5, 6, 7])), atol=0)


def test_bank_folds_into_one_dense_delta_per_task():
    model = Mistral(CFG, tmole=TMOLE, rngs=nnx.Rngs(0))
    _randomise_b(model)
    ids = _ids()
    for task in ("Emb_item", "Sentiment_Analysis"):
        task_id = tasks.get_task(task).id
        expected = model(ids, task_ids=jnp.full((3,), task_id))
        plain = Mistral(CFG, rngs=nnx.Rngs(0))
        for name, weight in folded_weights(model, task).items():
            getattr(plain.layers, name).set_value(weight)
        np.testing.assert_allclose(plain(ids), expected, atol=1e-5)


def test_folded_delta_equals_sum_of_expert_products():
    rng = np.random.default_rng(0)
    a, b, g = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 2, 4)), rng.random(3)
    expected = 2.0 * sum(g[j] * a[j] @ b[j] for j in range(3))
    np.testing.assert_allclose(folded_delta(jnp.asarray(a), jnp.asarray(b), jnp.asarray(g), 2.0), expected, rtol=1e-5)


def test_forward_on_8_device_fsdp_mesh_equals_single_device():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    model = Mistral(CFG, tmole=TMOLE, rngs=nnx.Rngs(0))
    _randomise_b(model)
    ids, task_ids = _ids(8, 10), jnp.arange(8) % 13
    expected = model(ids, task_ids=task_ids)
    mesh = parallel.make_mesh((1, 8, 1))
    graphdef, state = nnx.split(model)
    sharded = jax.device_put(state, parallel.state_shardings(state, mesh))
    assert sharded["layers"]["q"][...].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")

    @jax.jit
    def forward(state, ids, task_ids):
        return nnx.merge(graphdef, state)(ids, task_ids=task_ids)

    got = forward(sharded, jax.device_put(ids, parallel.batch_sharding(mesh, 2)), task_ids)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# the default masks, and every mask option at once (packed Threefry, one draw for q, k and v, one per expert)
@pytest.mark.parametrize("dropout_rng,shared_qkv,per_expert", [("threefry", False, False), ("threefry16", True, True)])
def test_remat_policies_give_the_same_gradients(dropout_rng, shared_qkv, per_expert):
    """With adapter dropout on: a rematerialised layer must draw the forward's masks again, bit for bit."""
    tmole = TMoLEConfig.default(rank=4, alpha=8.0, dropout=0.3, task_embedding_dim=16, dropout_rng=dropout_rng,
                                dropout_shared_qkv=shared_qkv, dropout_per_expert=per_expert)
    model = Mistral(CFG, tmole=tmole, rngs=nnx.Rngs(0))
    _randomise_b(model)
    ids, task_ids = _ids(), jnp.array([3, 4, 5])
    key = jax.random.key(7)
    grads = {}
    for policy in ("none", "full", "dots_saveable", "save_attention_out"):
        model.remat = policy

        def loss(m):
            return m(ids, task_ids=task_ids, dropout_key=key).mean()

        grads[policy] = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(model)
    for policy in ("full", "dots_saveable", "save_attention_out"):
        chex.assert_trees_all_close(grads[policy], grads["none"], atol=1e-6)
    model.remat = "none"
    undropped = nnx.grad(lambda m: m(ids, task_ids=task_ids).mean(), argnums=nnx.DiffState(0, nnx.Param))(model)
    bank_a = lambda g: np.asarray(g["adapters"]["banks"]["q"]["a"][...])  # noqa: E731
    dropped, plain = bank_a(grads["none"]), bank_a(undropped)
    assert np.abs(dropped - plain).max() > 0.1 * np.abs(plain).max()  # the masks are really applied


@pytest.mark.parametrize("rng", ["threefry", "threefry16"])
def test_dropout_keep_mask_rate_and_determinism(rng):
    key = jax.random.key(11)
    mask = np.asarray(dropout_keep_mask(key, 0.9, (64, 512), rng))
    assert mask.dtype == bool and mask.shape == (64, 512)
    assert abs(mask.mean() - 0.9) < 0.005  # 32,768 draws: the standard error is 0.0017
    np.testing.assert_array_equal(mask, np.asarray(dropout_keep_mask(key, 0.9, (64, 512), rng)))
    other = np.asarray(dropout_keep_mask(jax.random.key(12), 0.9, (64, 512), rng))
    assert (mask != other).mean() > 0.1  # another key, other masks (independent: 2 * 0.9 * 0.1 = 0.18)


def test_threefry16_draws_are_threefry_64_bit_words_in_quarters():
    """Each 64-bit Threefry word (jax.random.bits' own, counted by flat index over [rows, ceil(n / 4)]) gives
    four 16-bit draws, high half first; a last axis n that is not a multiple of 4 drops its last word's tail."""
    key = jax.random.key(11)
    for n in (20, 18, 9):
        with jax.enable_x64(True), jax.threefry_partitionable(True):
            words = np.asarray(jax.random.bits(key, (3, -(-n // 4)), jnp.uint64))
        quarters = np.stack([(words >> 32) & 0xFFFF, words >> 48, words & 0xFFFF, (words >> 16) & 0xFFFF], axis=-1)
        expected = quarters.reshape(3, -1)[:, :n]
        np.testing.assert_array_equal(np.asarray(_threefry16_draws(key, (3, n))), expected, err_msg=f"n={n}")


def test_threefry16_dropout_divides_by_the_kept_fraction():
    """expert_deltas with threefry16 masks = numpy's (x * mask / kept fraction) A B, the fraction a multiple of
    2**-16 (58,982 / 65,536 for a rate of 0.1), so the expectation is exact."""
    assert kept_fraction(0.9, "threefry16") == 58982 / 65536
    assert kept_fraction(0.9, "threefry") == 0.9
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    a, b = rng.normal(size=(3, 8, 4)).astype(np.float32), rng.normal(size=(3, 4, 6)).astype(np.float32)
    gate = rng.random((2, 3)).astype(np.float32)
    key = jax.random.key(4)
    got, = expert_deltas(jnp.asarray(x), [(jnp.asarray(gate), jnp.asarray(a), jnp.asarray(b))], scale=2.0,
                         dropout_rate=0.1, dropout_key=key, dropout_rng="threefry16")
    mask = np.asarray(dropout_keep_mask(key, 0.9, x.shape, "threefry16"))
    dropped = x * mask / (58982 / 65536)
    expected = 2.0 * np.einsum("bn,btnr,nro->bto", gate, np.einsum("btd,ndr->btnr", dropped, a), b)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_expert_deltas_share_one_mask_and_one_a_contraction():
    """Banks on one input (q, k, v): numpy's gated (x * mask / keep) A B of each, with one mask; each equals
    the bank alone under the same key (the same mask); banks of other sizes and widths split right."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    shapes = [(3, 6), (3, 4), (2, 4)]  # (experts, d_out) of each bank
    banks = [(rng.random((2, n)).astype(np.float32), rng.normal(size=(n, 8, 4)).astype(np.float32),
              rng.normal(size=(n, 4, o)).astype(np.float32)) for n, o in shapes]
    key = jax.random.key(9)
    kwargs = dict(scale=2.0, dropout_rate=0.25, dropout_key=key)
    got = expert_deltas(jnp.asarray(x), [tuple(map(jnp.asarray, bank)) for bank in banks], **kwargs)
    dropped = x * np.asarray(dropout_keep_mask(key, 0.75, x.shape)) / 0.75
    for (gate, a, b), out in zip(banks, got):
        expected = 2.0 * np.einsum("bn,btnr,nro->bto", gate, np.einsum("btd,ndr->btnr", dropped, a), b)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
        alone, = expert_deltas(jnp.asarray(x), [(gate, a, b)], **kwargs)
        np.testing.assert_allclose(np.asarray(out), np.asarray(alone), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dropout_rng", ["threefry", "threefry16"])
def test_per_expert_dropout_gives_each_expert_its_own_mask(dropout_rng):
    """tmole.dropout_per_expert, as released: numpy's gated sum over experts j of (x * mask_j / keep) A_j B_j,
    mask_j the j-th slice of one [B, T, experts, d_in] draw, the experts of the banks in order."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    shapes = [(3, 6), (2, 4)]
    banks = [(rng.random((2, n)).astype(np.float32), rng.normal(size=(n, 8, 4)).astype(np.float32),
              rng.normal(size=(n, 4, o)).astype(np.float32)) for n, o in shapes]
    key = jax.random.key(4)
    got = expert_deltas(jnp.asarray(x), [tuple(map(jnp.asarray, bank)) for bank in banks], scale=2.0,
                        dropout_rate=0.25, dropout_key=key, dropout_rng=dropout_rng, per_expert=True)
    keep = kept_fraction(0.75, dropout_rng)
    masks = np.asarray(dropout_keep_mask(key, 0.75, (2, 5, 5, 8), dropout_rng))  # 5 experts in all
    assert not (masks[:, :, 0] == masks[:, :, 1]).all()  # two experts, two masks
    first = 0
    for (gate, a, b), out in zip(banks, got):
        expected = np.zeros(out.shape, np.float64)
        for j in range(a.shape[0]):
            dropped = x * masks[:, :, first + j] / keep
            expected += 2.0 * gate[:, j, None, None] * (dropped @ a[j] @ b[j])
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
        first += a.shape[0]


def _mask_draws_per_layer(tmole: TMoLEConfig) -> int:
    """How many activation-sized dropout masks one forward draws in its layer scan (threefry16 draws: one
    threefry2x32 over [B, T, words] a mask; key splits are smaller)."""
    model = Mistral(CFG, tmole=tmole, rngs=nnx.Rngs(0))
    ids, task_ids = _ids(), jnp.array([3, 4, 5])
    jaxpr = jax.make_jaxpr(lambda m: m(ids, task_ids=task_ids, dropout_key=jax.random.key(1)))(model)

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "threefry2x32" and eqn.outvars[0].aval.ndim == 3:
                total += 1
            for sub in _subjaxprs(eqn):
                total += count(sub)
        return total

    return count(jaxpr.jaxpr)


def _subjaxprs(eqn):
    """The jaxprs an equation holds (a scan's body, a pjit's or checkpoint's function)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def test_dropout_shared_qkv_draws_one_mask_for_q_k_and_v():
    """Per projection (PEFT's way) a layer draws four masks (q, k, v, o); shared, two (q/k/v and o)."""
    tmole = TMoLEConfig.default(rank=4, alpha=8.0, dropout=0.1, task_embedding_dim=16, dropout_rng="threefry16")
    assert _mask_draws_per_layer(tmole) == 4
    assert _mask_draws_per_layer(dataclasses.replace(tmole, dropout_shared_qkv=True)) == 2


def test_unknown_dropout_rng_is_refused():
    with pytest.raises(ValueError, match="dropout_rng"):
        TMoLEConfig.default(dropout_rng="philox")


def test_unrolled_layers_equal_the_scan():
    """scan_layers=False (a Python loop over layers) computes what the layer scan does: loss and gradients
    with dropout under remat, and the per-layer KV caches prefill writes."""
    tmole = TMoLEConfig.default(rank=4, alpha=8.0, dropout=0.2, task_embedding_dim=16)
    model = Mistral(CFG, tmole=tmole, remat="dots_saveable", rngs=nnx.Rngs(0))
    _randomise_b(model)
    ids, task_ids = _ids(), jnp.array([3, 4, 5])

    def loss(m):
        return m(ids, task_ids=task_ids, dropout_key=jax.random.key(5)).mean()

    def prefill(m):
        return m.prefill(ids, jnp.ones_like(ids), m.init_cache(3, 16), task_ids=task_ids,
                         logits_at=jnp.full((3,), 9))

    results = {}
    for scan in (True, False):
        model.scan_layers = scan
        results[scan] = (loss(model), nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(model), prefill(model))
    chex.assert_trees_all_close(results[False], results[True], atol=1e-6)


def test_lm_head_gradient_runs_in_the_model_dtype():
    """float32: the LM head's custom gradient is autodiff's. bf16: every GEMM of the cross-entropy's gradient
    takes bf16 operands (autodiff would contract the float32 cotangent as a float32 GEMM over the vocabulary),
    and the gradient stays within bf16 rounding of the float32 one."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    weight = jnp.asarray(0.3 * rng.normal(size=(64, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 64, (2, 5)))

    def loss(logits_fn, h, w):
        logits = logits_fn(h, w)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1).mean()

    def autodiff(h, w):
        return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)

    grad = jax.grad(loss, argnums=(1, 2))
    chex.assert_trees_all_close(grad(head_logits, hidden, weight), grad(autodiff, hidden, weight), atol=1e-6)
    low = (hidden.astype(jnp.bfloat16), weight.astype(jnp.bfloat16))
    jaxpr = jax.make_jaxpr(grad, static_argnums=0)(head_logits, *low)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2 and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    low_grads = grad(head_logits, *low)
    assert all(g.dtype == jnp.bfloat16 for g in low_grads)
    chex.assert_trees_all_close(jax.tree.map(lambda g: g.astype(jnp.float32), low_grads),
                                grad(autodiff, *(x.astype(jnp.bfloat16).astype(jnp.float32) for x in low)),
                                rtol=3e-2, atol=2e-3)
