"""Sharded training equals single-device training: loss, gradients and the updated state on 8 CPU devices."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from recfound_jax import parallel
from recfound_jax.model import tmole
from recfound_jax.model.mistral import Mistral, MistralConfig
from recfound_jax.model.tmole import TMoLEConfig
from recfound_jax.train import step as step_lib
from tests.train_fixtures import step_options

CFG = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8)
OPTS = step_options(gradcache_chunk=8, generative_micro_batch=8)
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2)]


def _parts(dropout_rng: str = "threefry") -> step_lib.ModelParts:
    model = Mistral(CFG, tmole=TMoLEConfig.default(rank=4, dropout=0.1, task_embedding_dim=16,
                                                   dropout_rng=dropout_rng), rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    for bank in model.adapters.banks.values():  # B starts at zero: make every gradient non-trivial
        key, sub = jax.random.split(key)
        bank.b.set_value(0.1 * jax.random.normal(sub, bank.b[...].shape))
    return step_lib.ModelParts.of(model)


def _batches(size: int = 16, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)

    def right_padded(rows, length, low):
        return (np.arange(length)[None] < rng.integers(low, length + 1, rows)[:, None]).astype(np.int32)

    qmask, pmask, gmask = right_padded(size, 6, 3), right_padded(2 * size, 7, 3), right_padded(size, 9, 4)
    gen_ids = rng.integers(1, 64, (size, 9)) * gmask
    emb = {"query_ids": rng.integers(1, 64, (size, 6)) * qmask, "query_mask": qmask,
           "query_pool_mask": qmask.astype(np.float32), "passage_ids": rng.integers(1, 64, (2 * size, 7)) * pmask,
           "passage_mask": pmask, "passage_pool_mask": pmask.astype(np.float32),
           "negative_mask": (rng.random(size) < 0.8).astype(np.float32),
           "task_ids": rng.integers(0, 3, size).astype(np.int32)}
    gen = {"input_ids": gen_ids, "attention_mask": gmask,
           "labels": np.where((np.arange(9)[None] >= 3) & (gmask == 1), gen_ids, -100),
           "task_ids": rng.integers(3, 13, size).astype(np.int32)}
    as_jax = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    return as_jax(emb), as_jax(gen)


def _optimizer():
    # Clipping at 1.0 scaled this batch's gradients (global norm ~167) down to Adam's eps (1e-8) for 1-4% of
    # the adapter entries, where the update g / (|g| + eps) is decided by float32 reduction-order noise
    # (measured: an entry at |g| = eps / 10 moved by 4e-5 between meshes). Clipping above the norm still runs
    # the global-norm clip on the mesh, and leaves every update well conditioned.
    return step_lib.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_ratio=0.0, weight_decay=0.01,
                                   grad_clip=1e3)


def _grads_and_step(parts: step_lib.ModelParts, optimizer) -> callable:
    """(branch losses and gradients, updated state, metrics) of one train step, in one program."""
    train_step = step_lib.make_train_step(parts, optimizer, OPTS)

    def fn(state, base, emb, gen, key):
        k_emb, k_gen = jax.random.split(key)
        loss_emb, grads_emb = step_lib.embedding_loss_and_grads(parts, state["params"], base, emb, k_emb, OPTS)
        loss_gen, grads_gen = step_lib.generative_loss_and_grads(parts, state["params"], base, gen, k_gen, OPTS)
        return (loss_emb, loss_gen, grads_emb, grads_gen), *train_step(state, base, emb, gen, key)

    return fn


@functools.cache
def _reference(dropout_rng: str):
    """Losses, gradients and one updated state on one device (no mesh)."""
    parts = _parts(dropout_rng)
    emb, gen = _batches()
    optimizer = _optimizer()
    state = step_lib.init_train_state(parts.params, optimizer)
    return jax.device_get(jax.jit(_grads_and_step(parts, optimizer))(state, parts.base, emb, gen, jax.random.key(3)))


# every mesh with Threefry dropout masks; that packed Threefry ("threefry16") draws the same masks on any
# sharding is test_threefry16_masks_do_not_depend_on_the_sharding's
@pytest.mark.parametrize("shape", MESHES, ids=lambda v: "x".join(map(str, v)))
def test_sharded_step_equals_single_device(shape, dropout_rng="threefry"):
    reference = _reference(dropout_rng)
    mesh = parallel.make_mesh(shape)
    parts = _parts(dropout_rng)
    params = jax.device_put(parts.params, parallel.state_shardings(parts.params, mesh))
    base = jax.device_put(parts.base, parallel.state_shardings(parts.base, mesh))
    parts = step_lib.ModelParts(parts.graphdef, params, base)
    emb, gen = _batches()
    batch_sh = lambda b: {k: parallel.batch_sharding(mesh, v.ndim) for k, v in b.items()}  # noqa: E731
    emb, gen = jax.device_put(emb, batch_sh(emb)), jax.device_put(gen, batch_sh(gen))
    rep = parallel.replicated(mesh)
    optimizer = _optimizer()
    state = jax.jit(lambda p: step_lib.init_train_state(p, optimizer))(params)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    base_sh = jax.tree.map(lambda x: x.sharding, base)
    # as the trainer jits its step: in/out shardings, the state donated, traced under the mesh
    fn = jax.jit(parallel.under_mesh(_grads_and_step(parts, optimizer), mesh),
                 in_shardings=(state_sh, base_sh, batch_sh(emb), batch_sh(gen), rep),
                 out_shardings=(None, state_sh, rep), donate_argnums=0)
    grads, state, metrics = fn(state, base, emb, gen, jax.device_put(jax.random.key(3), rep))
    ref_grads, ref_state, ref_metrics = reference
    host_grads = jax.device_get(grads)
    np.testing.assert_allclose(host_grads[0], ref_grads[0], rtol=1e-5)
    np.testing.assert_allclose(host_grads[1], ref_grads[1], rtol=1e-5)
    # Gradients reach ~15; the mesh's float32 reduction order differs from one device's, by up to 1.3e-4
    # in one entry of 1,536 on an AMD EPYC host: absolute tolerance 2e-5 of the largest gradient.
    chex.assert_trees_all_close(host_grads[2:], ref_grads[2:], rtol=1e-4, atol=3e-4)
    for name in ("loss", "loss_emb", "loss_gen", "grad_norm"):
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, err_msg=name)
    chex.assert_trees_all_close(jax.device_get(state), ref_state, rtol=1e-4, atol=1e-5)
    # the updated state keeps the partition rules' shardings
    bank = lambda tree: tree["adapters"]["banks"]["q"]["a"][...]  # noqa: E731
    assert bank(state["params"]).sharding == bank(params).sharding


@pytest.mark.parametrize("hidden", [32, 18])
def test_threefry16_masks_do_not_depend_on_the_sharding(hidden):
    """Packed Threefry draws (tmole.dropout_rng = "threefry16") on activations split by sample over
    data x fsdp and by width over tensor are the single device's, bit for bit."""
    mesh = parallel.make_mesh((2, 2, 2))
    shape = (16, 9, hidden)
    key = jax.random.key(5)

    def mask(k):
        return tmole.dropout_keep_mask(k, 0.9, shape, "threefry16")

    sharding = NamedSharding(mesh, P(parallel.BATCH_AXES, None, "tensor"))
    sharded = jax.jit(mask, in_shardings=parallel.replicated(mesh), out_shardings=sharding)(key)
    assert sharded.sharding == sharding
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(jax.jit(mask)(key)))


def test_params_are_sharded_as_the_rules_say():
    mesh = parallel.make_mesh((1, 8, 1))
    parts = _parts()
    base = jax.device_put(parts.base, parallel.state_shardings(parts.base, mesh))
    params = jax.device_put(parts.params, parallel.state_shardings(parts.params, mesh))
    q = base["layers"]["q"][...]
    assert q.sharding.spec == P(None, "tensor", "fsdp")
    assert {s.data.shape for s in q.addressable_shards} == {(2, 32, 4)}  # [L, out, in]: the input axis in 8
    assert base["layers"]["o"][...].sharding.spec == P(None, "fsdp", "tensor")
    assert base["embed"][...].sharding.spec == P("tensor", "fsdp")
    bank_a, bank_b = params["adapters"]["banks"]["q"]["a"][...], params["adapters"]["banks"]["q"]["b"][...]
    assert bank_a.sharding.spec == P(None, None, "fsdp", None)  # [L, N, d_in, r]: follows q's input axis
    assert {s.data.shape for s in bank_a.addressable_shards} == {(2, 6, 4, 4)}
    assert bank_b.sharding.spec == P(None, None, None, "tensor")
    assert params["adapters"]["task_embedding"][...].sharding.is_fully_replicated

    mesh = parallel.make_mesh((2, 2, 2))
    base = jax.device_put(parts.base, parallel.state_shardings(parts.base, mesh))
    q, o = base["layers"]["q"][...], base["layers"]["o"][...]
    assert {s.data.shape for s in q.addressable_shards} == {(2, 16, 16)}  # heads over tensor, input over fsdp
    assert {s.data.shape for s in o.addressable_shards} == {(2, 16, 16)}
    k = base["layers"]["k"][...]  # 16 kv features over tensor 2, 32 inputs over fsdp 2
    assert {s.data.shape for s in k.addressable_shards} == {(2, 8, 16)}


def test_batch_spans_data_and_fsdp():
    mesh = parallel.make_mesh((2, 2, 2))
    x = jax.device_put(jnp.arange(16 * 3).reshape(16, 3), parallel.batch_sharding(mesh, 2))
    assert x.sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in x.addressable_shards} == {(4, 3)}  # 4 ways over data x fsdp, tensor replicas


def test_each_process_loads_its_block_of_the_batch():
    assert parallel.batch_share(parallel.make_mesh((2, 2, 2))) == (0, 1)  # one process holds it all
    two_hosts = np.repeat([0, 1], 4).reshape(2, 2, 2)  # 4 devices each, in order
    assert [parallel.batch_block(two_hosts, p) for p in (0, 1)] == [(0, 2), (1, 2)]
    tensor_across_hosts = np.tile([0, 1], 4).reshape(2, 2, 2)  # both hosts hold every batch shard
    assert [parallel.batch_block(tensor_across_hosts, p) for p in (0, 1)] == [(0, 1), (0, 1)]
    eight_hosts = np.arange(8).reshape(1, 8, 1)
    assert parallel.batch_block(eight_hosts, 5) == (5, 8)
    with pytest.raises(ValueError, match="contiguous"):
        parallel.batch_block(np.array([0, 1, 1, 0]).reshape(1, 4, 1), 0)


def test_constrain_applies_only_under_a_mesh():
    x = jnp.ones((8, 3, 4))
    assert parallel.constrain(x, "residual") is x
    mesh = parallel.make_mesh((2, 4, 1))
    replicated = jax.device_put(x, NamedSharding(mesh, P()))
    out = jax.jit(parallel.under_mesh(lambda a: parallel.constrain(a * 2, "residual"), mesh))(replicated)
    assert out.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(out, 2 * x)
    odd = jax.jit(parallel.under_mesh(lambda a: parallel.constrain(a, "residual"), mesh))(
        jax.device_put(jnp.ones((3, 2, 4)), NamedSharding(mesh, P())))
    assert odd.sharding.is_fully_replicated  # 3 samples do not split 8 ways: left whole


def test_mesh_shape_resolution():
    assert parallel.resolve_mesh_shape((1, -1, 1), 8) == (1, 8, 1)
    assert parallel.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        parallel.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="at most one"):
        parallel.resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 16 devices"):
        parallel.resolve_mesh_shape((2, 8, 1), 8)
    assert dict(parallel.make_mesh((2, -1, 1)).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
