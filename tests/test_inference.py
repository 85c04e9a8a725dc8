"""The inference API on a real 2-step run of a tiny base: formats, greedy decoding, embeddings, loading, routing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recfound_jax
from recfound_jax.data.formatting import IGNORE_INDEX, Formatter
from recfound_jax.inference.recfound import RecFound
from recfound_jax.runs import rundir
from recfound_jax.tasks import TASKS, get_task
from recfound_jax.train import inputs
from recfound_jax.train.trainer import train
from tests.train_fixtures import tiny_config, write_tiny_base

TASK = "Sequential_Recommendation"
PROMPTS = [
    "Which item comes next?",
    "Below is an instruction that describes a task. Instruction: rewrite the query. Input: red shoes Response:",
    "Given the user's history of running shoes, socks and a water bottle, which of these options will the user "
    "buy next? Options: A. trail shoes B. a desk lamp C. a yoga mat D. a phone case Response:",
    "Is this review of the shoes positive or negative?",
    "Describe the user: bought a tent, a sleeping bag, a camping stove, a folding chair and two headlamps in "
    "March, then looked at hiking boots, trekking poles and a rain jacket.",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFOUND_CACHE", str(root / "cache"))
        base = write_tiny_base(root / "base")
        train(tiny_config(base, train__steps=2), root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def rf(run_dir):
    return RecFound.from_run(run_dir)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_the_package_exposes_the_inference_api(run_dir):
    assert recfound_jax.RecFound is RecFound and "RecFound" in recfound_jax.__all__
    assert all(callable(getattr(recfound_jax, name)) for name in recfound_jax.__all__)  # each loads on first use
    assert isinstance(recfound_jax.RecFound.from_run(run_dir), RecFound)
    with pytest.raises(AttributeError, match="no attribute 'Recfound'"):
        _ = recfound_jax.Recfound


# ------------------------------------------------------------------------------------ formats
def test_prompt_ids_are_the_training_format_up_to_the_answer(rf):
    fmt = Formatter(rf.tokenizer)
    for prompt in PROMPTS:
        ids = rf.prompt_ids([prompt])[0]
        train_ids, labels = fmt.format_generative([(prompt, "A")])
        first_answer = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert ids == train_ids[:first_answer]
        assert ids == rf.tokenizer.encode(f"<|user|>\n{prompt}\n<|assistant|>\n", add_bos=True)


def test_long_prompts_are_cut_in_the_middle_to_the_prompt_limit(rf):
    prompt = "Instruction: pick one. " + "filler words here " * 80 + "Options: A. x B. y Response:"
    ids = rf.prompt_ids([prompt])[0]
    full = rf.tokenizer.encode(f"<|user|>\n{prompt}\n<|assistant|>\n", add_bos=True)
    assert len(full) > rf.max_prompt_len == len(ids)
    text = rf.tokenizer.decode(ids)
    assert text.startswith("<|user|>\nInstruction: pick one.")
    assert text.endswith("Options: A. x B. y Response:\n<|assistant|>\n")


# ------------------------------------------------------------------------------------ generation
def test_batched_generation_equals_one_prompt_at_a_time(rf):
    ids, task_id = rf.prompt_ids(PROMPTS), get_task(TASK).id
    assert len({len(p) for p in ids}) == len(ids)
    batched = rf.generator.generate(ids, task_id, max_new_tokens=6, batch_size=4)
    alone = np.concatenate([rf.generator.generate([p], task_id, max_new_tokens=6, batch_size=1) for p in ids])
    np.testing.assert_array_equal(batched, alone)


def test_kv_cache_greedy_equals_argmax_of_the_full_forward_each_step(rf):
    graphdef, state = nnx.split(rf.model)
    task_id, width, steps = get_task(TASK).id, 128, 6

    @jax.jit
    def next_token(state, ids, length):
        logits = nnx.merge(graphdef, state)(ids, (jnp.arange(width) < length)[None],
                                            task_ids=jnp.array([task_id]), causal=True)
        return jnp.argmax(logits[0, length - 1])

    prompts = PROMPTS[:3]
    got = rf.generate_ids(prompts, task=TASK, max_new_tokens=steps, batch_size=2)
    for ids, answer in zip(rf.prompt_ids(prompts), got):
        seq, expected = list(ids), []
        for _ in range(steps):
            padded = np.zeros((1, width), np.int32)
            padded[0, : len(seq)] = seq
            token = int(next_token(state, padded, len(seq)))
            if token == rf.tokenizer.eos_id:
                break
            expected.append(token)
            seq.append(token)
        assert answer.tolist() == expected


def test_generation_stops_at_eos_per_row(run_dir):
    """Make EOS the next token exactly after one token X, then put X in one row's greedy path only."""
    rf = RecFound.from_run(run_dir)
    m, eos, pad = rf.model, rf.tokenizer.eos_id, rf.tokenizer.pad_id
    # Residual dimension 0 carries nothing: no embedding, attention output or MLP writes to it...
    m.embed.set_value(m.embed[...].at[:, 0].set(0.0))
    m.layers.o.set_value(m.layers.o[...].at[:, 0, :].set(0.0))
    m.layers.down.set_value(m.layers.down[...].at[:, 0, :].set(0.0))
    m.adapters.banks["o"].b.set_value(m.adapters.banks["o"].b[...].at[..., 0].set(0.0))
    # ...and the EOS logit reads dimension 0 only, so it is 0 everywhere, below the best other logit.
    m.lm_head.set_value(m.lm_head[...].at[eos].set(0.0).at[eos, 0].set(1.0))
    prompts, task_id, steps = rf.prompt_ids(PROMPTS[1:3]), get_task(TASK).id, 8
    ref = rf.generator.generate(prompts, task_id, max_new_tokens=steps, batch_size=2)
    assert eos not in ref
    unseen = set(prompts[0]) | set(prompts[1]) | set(ref[1].tolist())
    k = next(k for k, token in enumerate(ref[0].tolist()) if token not in unseen | set(ref[0, :k].tolist()))
    x = int(ref[0, k])
    # Now token X alone writes dimension 0 (strongly): after X the EOS logit dominates.
    m.embed.set_value(m.embed[...].at[x, 0].set(100.0))
    out = rf.generator.generate(prompts, task_id, max_new_tokens=steps, batch_size=2)
    assert k + 2 <= steps
    np.testing.assert_array_equal(out[0], ref[0, : k + 1].tolist() + [eos] + [pad] * (steps - k - 2))
    np.testing.assert_array_equal(out[1], ref[1])
    answers = rf.generate_ids(PROMPTS[1:3], task=TASK, max_new_tokens=steps, batch_size=2)
    assert answers[0].tolist() == ref[0, : k + 1].tolist()
    assert rf.generate(PROMPTS[1:3], task=TASK, max_new_tokens=steps)[0] == rf.tokenizer.decode(ref[0, : k + 1])


def test_compilations_stay_few_over_prompts_of_varied_lengths(rf):
    fresh = RecFound(rf.model, rf.config, rf.tokenizer)
    rng = np.random.default_rng(0)
    prompts = [" ".join(["shoes"] * int(n)) for n in rng.integers(1, 150, size=20)]
    fresh.generate(prompts, task=TASK, max_new_tokens=4, batch_size=4)
    # At most one compilation per length bucket: powers of two from 16 below the cap, and the cap.
    assert fresh.generator.traces <= len(_buckets(fresh.max_prompt_len)) <= 5
    fresh.generate(list(rng.permutation(prompts)), task=TASK, max_new_tokens=4, batch_size=4)
    fresh.generate(prompts[:4], task=TASK, max_new_tokens=4, batch_size=4)
    assert fresh.generator.traces <= len(_buckets(fresh.max_prompt_len))
    texts = [" ".join(["red"] * int(n)) for n in rng.integers(1, 60, size=20)]
    fresh.embed(texts, task="Q2I", batch_size=4)
    fresh.embed(list(rng.permutation(texts)), task="Q2I", batch_size=4)
    assert fresh.encoder.traces <= len(_buckets(rf.config.data.query_len)) <= 4


def _buckets(cap: int) -> list[int]:
    return [b for b in (16, 32, 64, 128, 256, 512) if b < cap] + [cap]


def test_generate_rejects_embedding_tasks_and_embed_rejects_generative_ones(rf):
    with pytest.raises(ValueError, match="embedding task"):
        rf.generate(["x"], task="Q2I")
    with pytest.raises(ValueError, match="generative task"):
        rf.embed(["x"], task="SR")


# ------------------------------------------------------------------------------------ embedding
def test_embeddings_are_unit_norm_float32_and_equal_the_mean_pooled_hidden_states(rf):
    fmt, task = Formatter(rf.tokenizer), get_task("Q2I")
    pairs = [("Find the product for this query", "red running shoes"), (None, "a blue tent for four people"),
             ("Represent the user", "bought a tent, a stove and two headlamps, then looked at boots")]
    got = rf.embed_pairs(pairs, task=task.name, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3, rf.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    for (instruction, text), vector in zip(pairs, got):
        ids, prefix = fmt.format_embedding(instruction or "", text)
        hidden = rf.model.hidden_states(jnp.asarray([ids]), task_ids=jnp.asarray([task.id]), causal=False)
        pooled = np.asarray(hidden[0, prefix:], np.float64).mean(axis=0)
        np.testing.assert_allclose(vector, pooled / np.linalg.norm(pooled), atol=2e-5)


def test_query_and_passage_roles_agree_and_instructions_matter(rf):
    texts = ["red shoes", "tent"]
    query = rf.embed(texts, task="I2I", instruction="Retrieve the item", role="query")
    passage = rf.embed(texts, task="I2I", instruction="Retrieve the item", role="passage")
    np.testing.assert_allclose(query, passage, atol=1e-6)
    other = rf.embed(texts, task="I2I", instruction="Represent the review", role="query")
    assert np.abs(query - other).max() > 1e-3
    bare = rf.embed(texts, task="I2I")
    assert np.abs(query - bare).max() > 1e-3
    long_text = "a very long description of a pair of trail running shoes with many features " * 4
    length = len(rf.tokenizer.encode(f"<|embed|>\n{long_text}", add_bos=True))
    assert rf.config.data.passage_len < length <= rf.config.data.query_len
    as_query, as_passage = rf.embed([long_text], task="I2I", role="query"), rf.embed([long_text], task="I2I",
                                                                                         role="passage")
    assert np.abs(as_query - as_passage).max() > 1e-3  # the passage is cut at data.passage_len


def test_embeddings_depend_on_the_task_route(rf):
    a = rf.embed(["red shoes"], task="U2I")
    b = rf.embed(["red shoes"], task="Q2I")
    assert np.abs(a - b).max() > 1e-6


# ------------------------------------------------------------------------------------ loading
def test_from_run_loads_the_asked_step_and_base_only(run_dir, rf):
    assert rf.step == 2
    start = RecFound.from_run(run_dir, step=0)
    assert start.step == 0
    c = rundir.read_config(run_dir)
    fresh = rundir.build_model(c, inputs.resolve_base(c))  # the adapters a run starts from (seeded init)
    for a, b in zip(_leaves(nnx.state(start.model.adapters)), _leaves(nnx.state(fresh.adapters))):
        np.testing.assert_array_equal(a, b)
    changed = [np.abs(a - b).max() for a, b in zip(_leaves(nnx.state(start.model.adapters)),
                                                   _leaves(nnx.state(rf.model.adapters)))]
    assert max(changed) > 0
    last = RecFound.from_run(run_dir, step=2)
    for a, b in zip(_leaves(nnx.state(last.model.adapters)), _leaves(nnx.state(rf.model.adapters))):
        np.testing.assert_array_equal(a, b)
    base = RecFound.from_run(run_dir, base_only=True)
    assert base.model.adapters is None and base.step is None
    np.testing.assert_array_equal(np.asarray(base.model.lm_head[...]), np.asarray(rf.model.lm_head[...]))
    np.testing.assert_array_equal(np.asarray(base.model.layers.q[...]), np.asarray(rf.model.layers.q[...]))
    assert np.abs(base.embed(["red shoes"], task="Q2I") - rf.embed(["red shoes"], task="Q2I")).max() > 1e-6
    with pytest.raises(ValueError, match="adapters"):
        base.routing()


# ------------------------------------------------------------------------------------ routing
def test_routing_is_each_tasks_masked_softmax_over_experts(rf):
    adapters = rf.model.adapters
    cfg = adapters.cfg
    got = rf.routing()
    num_layers = rf.model.config.num_layers
    assert got.shape == (len(TASKS), len(cfg.targets) * num_layers * cfg.num_experts)
    table = np.asarray(adapters.task_embedding[...], np.float64)
    kinds = cfg.expert_kinds()
    for i, task in enumerate(TASKS):
        blocks = []
        for target in cfg.targets:
            bank = adapters.banks[target]
            w, b = np.asarray(bank.router_w[0][...], np.float64), np.asarray(bank.router_b[0][...], np.float64)
            for layer in range(num_layers):
                logits = table[task.id] @ w[layer] + b[layer]
                allowed = (kinds == 1) | (kinds == (0 if task.is_embedding else 2))
                p = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
                blocks.append(p / p.sum())
        np.testing.assert_allclose(got[i], np.concatenate(blocks), rtol=1e-5, atol=1e-7)
    sub = rf.routing(["SR", 0])  # a batch of 2 compiles to other kernels than 13: float32 rounding differs
    np.testing.assert_allclose(sub, got[[get_task("SR").id, 0]], rtol=1e-6, atol=1e-8)
