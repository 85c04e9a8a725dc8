"""Where a demo finetuning step's time goes on this machine: one markdown table, measured in one process.

    JAX_PLATFORMS=cpu python scripts/profile_demo.py [--steps 5] [--skip-base]

The model is a randomly initialised Mistral of the demo base's shape (recfound_jax.config.demo_base_config)
with the demo recipe's TMoLE adapters (configs/demo.py); timing does not depend on the weights. Batches
come from the synthetic dataset (generated into the cache if missing), tokenized with the demo base's
vocabulary and assembled as recfound_jax/train/trainer.py does: `batching.Batcher` with S2Sched's step-0
counts, the answer budget of the train and valid splits, and the fixed S2Sched probe batches.

Rows (median of ``--steps`` calls after lowering + compiling and one warm-up call; compile seconds are
``jit(...).lower(...).compile()``):

* the joint train step (both branches), the step with only the embedding batch, only the generative batch,
  and only the generative batch with the LM head at every position (answer budget 0);
* the S2Sched probe forward (`step.make_probe_fn` on the probe batches); the same on 128 rows of each task
  (the paper's probe, the 7B recipe's ``s2sched.probe_sampling = "fresh"``); the host side of a fresh draw
  (`trainer.probe_batches` of a step, to the device) at the demo's 4 rows a task;
* the LM head and cross-entropy alone, forward and backward wrt the hidden states, at the answer budget and
  at every position;
* the host side: drawing a batch pair with the Batcher and putting it on the device;
* padding: real tokens / padded tokens of the embedding and generative batches, answer tokens / LM-head slots;
* unless ``--skip-base``: one causal-LM step and one instruction-stage step of the base at the recipe's shapes
  (recfound_jax/demo/pretrain.py `make_train_step` with `lm_loss` and with `instruct.answer_loss`).
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from recfound_jax import config as config_lib  # noqa: E402
from recfound_jax import recipes  # noqa: E402
from recfound_jax.data import batching, formatting, hf_tokenize  # noqa: E402
from recfound_jax.demo import instruct, pretrain, synthetic, synthetic_world  # noqa: E402
from recfound_jax.model.mistral import BaseParam, Mistral  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig  # noqa: E402
from recfound_jax.tasks import BY_SHORT, EMBEDDING_TASKS, GENERATIVE_TASKS  # noqa: E402
from recfound_jax.tokenizer import Tokenizer  # noqa: E402
from recfound_jax.train import cross_entropy  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402
from recfound_jax.train.s2sched import S2Sched, S2SchedConfig  # noqa: E402
from recfound_jax.train.trainer import answer_budget, probe_batches  # noqa: E402

Batch = dict[str, jax.Array]
WARMUP_CALLS = 1


@dataclasses.dataclass
class Row:
    """One line of the table."""

    what: str
    shape: str
    compile_s: float | None = None
    median_ms: float | None = None
    note: str = ""


@dataclasses.dataclass
class Finetune:
    """Everything a demo finetuning step needs, built as the trainer builds it."""

    config: ml_collections.ConfigDict
    parts: step_lib.ModelParts
    budget: int
    train: formatting.TokenizedSplit
    valid: formatting.TokenizedSplit
    batcher: batching.Batcher
    host_batches: list[tuple[dict, dict]]
    probe: tuple[dict, dict]


# ----------------------------------------------------------------------------------- timing
def compile_jit(fn: Callable, *args, donate: tuple[int, ...] = ()) -> tuple[Any, float]:
    """(compiled fn, seconds to lower and compile it) at these arguments' shapes."""
    begin = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - begin


def median_ms(call: Callable[[int], Any], steps: int) -> float:
    """Median milliseconds of call(i) (blocked on its result) over ``steps`` calls after the warm-up."""
    times = []
    for i in range(WARMUP_CALLS + steps):
        begin = time.perf_counter()
        jax.block_until_ready(call(i))
        if i >= WARMUP_CALLS:
            times.append(time.perf_counter() - begin)
    return 1e3 * float(np.median(times))


def fresh_state(parts: step_lib.ModelParts, optimizer) -> dict[str, Any]:
    """A train state on copies of the params (the step donates its state)."""
    return step_lib.init_train_state(jax.tree.map(jnp.copy, parts.params), optimizer)


# ----------------------------------------------------------------------------------- setup
def demo_config() -> ml_collections.ConfigDict:
    c = recipes.load("demo")
    config_lib.validate(c, device_count=jax.device_count())
    return c


@functools.cache
def demo_tokenizer() -> Tokenizer:
    """The demo base recipe's tokenizer, written as the base build writes it (into a temporary folder)."""
    base = config_lib.demo_base_config()
    data = config_lib.synthetic_dir(base.data.scale, base.data.seed)
    synthetic.ensure_dataset(data, scale=base.data.scale, seed=base.data.seed)
    return pretrain.write_tokenizer(base, data, Path(tempfile.mkdtemp(prefix="profile_demo_")))


def tokenized_splits(c: ml_collections.ConfigDict) -> tuple[formatting.TokenizedSplit, formatting.TokenizedSplit]:
    """The synthetic train and valid splits at the recipe's lengths (dataset generated if missing)."""
    data = config_lib.synthetic_dir(c.data.synthetic_scale, c.data.synthetic_seed)
    synthetic.ensure_dataset(data, scale=c.data.synthetic_scale, seed=c.data.synthetic_seed)
    tokenizer = demo_tokenizer()
    kwargs = dict(query_max_len=c.data.query_len, passage_max_len=c.data.passage_len,
                  generative_max_len=c.data.generative_len)
    return (hf_tokenize.tokenize_split(data, "train", tokenizer, **kwargs),
            hf_tokenize.tokenize_split(data, "valid", tokenizer, **kwargs))


def random_model_parts(c: ml_collections.ConfigDict) -> step_lib.ModelParts:
    """A random Mistral of the demo base's shape with the run's TMoLE adapters, split for the step."""
    model = Mistral(pretrain.model_config(config_lib.demo_base_config()), tmole=TMoLEConfig.for_run(c),
                    param_dtype=jnp.dtype(c.model.param_dtype), dtype=jnp.dtype(c.model.compute_dtype),
                    remat=c.model.remat, attention_impl=c.model.attention, rngs=nnx.Rngs(c.seed))
    return step_lib.ModelParts.of(model)


def without_dropout(c: ml_collections.ConfigDict) -> step_lib.ModelParts:
    """The same random model with adapter dropout 0: no dropout masks are drawn."""
    c = ml_collections.ConfigDict(c.to_dict())
    c.tmole.dropout = 0.0
    return random_model_parts(c)


def step_zero_counts(c: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """Per-task counts of both branches at step 0, from S2Sched as the trainer sets it up."""
    cfg = S2SchedConfig.from_config(c.s2sched)
    emb = S2Sched(cfg, [t.id for t in EMBEDDING_TASKS], c.train.embedding_batch, c.train.steps)
    gen = S2Sched(cfg, [t.id for t in GENERATIVE_TASKS], c.train.generative_batch, c.train.steps)
    return emb.counts(0), gen.counts(0)


def build_finetune(c: ml_collections.ConfigDict, batches: int) -> Finetune:
    train, valid = tokenized_splits(c)
    budget = min(answer_budget(train, valid), c.data.generative_len - 1)
    batcher = batching.Batcher(train, batching.BatchConfig.from_config(
        c, embedding_batch_size=c.train.embedding_batch, generative_batch_size=c.train.generative_batch,
        seed=c.seed))
    emb_counts, gen_counts = step_zero_counts(c)
    host = [batcher.next_batches(emb_counts, gen_counts) for _ in range(batches)]
    return Finetune(c, random_model_parts(c), budget, train, valid, batcher, host, probe_batches(c, valid))


def on_device(batch: dict, drop: tuple[str, ...] = ()) -> Batch:
    return {k: jnp.asarray(v) for k, v in batch.items() if k not in drop}


# ----------------------------------------------------------------------------------- finetuning rows
def train_step_row(f: Finetune, what: str, steps: int, *, emb: bool, gen: bool, budget: int,
                   parts: step_lib.ModelParts | None = None) -> Row:
    """The jitted joint step (state donated) with the chosen branches, cycling over the sampled batches;
    ``parts``: another model than the demo's (default f.parts)."""
    c, parts = f.config, parts or f.parts
    optimizer = step_lib.make_optimizer(learning_rate=c.train.learning_rate, total_steps=c.train.steps,
                                        warmup_ratio=c.train.warmup_ratio, weight_decay=c.train.weight_decay,
                                        grad_clip=c.train.grad_clip)
    opts = step_lib.StepOptions.from_config(c, answer_budget=budget)
    batches = [(on_device(e) if emb else None, on_device(g) if gen else None) for e, g in f.host_batches]
    holder = {"state": fresh_state(parts, optimizer)}
    key = jax.random.key(c.seed)
    compiled, seconds = compile_jit(step_lib.make_train_step(parts, optimizer, opts), holder["state"],
                                    parts.base, *batches[0], key, donate=(0,))

    def call(i):
        holder["state"], metrics = compiled(holder["state"], parts.base, *batches[i % len(batches)], key)
        return holder["state"], metrics

    e, g = f.host_batches[0]
    shape = " + ".join(s for s, on in ((f"emb {e['query_ids'].shape[0]}x{e['query_ids'].shape[1]}q "
                                        f"{e['passage_ids'].shape[0]}x{e['passage_ids'].shape[1]}p", emb),
                                       (f"gen {'x'.join(map(str, g['input_ids'].shape))}", gen)) if on)
    return Row(what, f"{shape}, budget {budget or 'all'}", seconds, median_ms(call, steps))


def probe_row(f: Finetune, steps: int, batches: tuple[dict, dict] | None = None,
              what: str = "S2Sched probe forward", note: str = "run every s2sched.update_every steps") -> Row:
    c = f.config
    probe = step_lib.make_probe_fn(f.parts, len(EMBEDDING_TASKS), len(GENERATIVE_TASKS), c.train.temperature,
                                   f.budget)
    emb, gen = (on_device(b) for b in (batches or f.probe))
    compiled, seconds = compile_jit(probe, f.parts.params, f.parts.base, emb, gen)
    shape = (f"emb {emb['query_ids'].shape[0]}q {emb['passage_ids'].shape[0]}p, "
             f"gen {'x'.join(map(str, gen['input_ids'].shape))}")
    return Row(what, shape, seconds, median_ms(lambda i: compiled(f.parts.params, f.parts.base, emb, gen), steps),
               note)


def probe_sampling(c: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
    """The run config with fresh S2Sched probes of ``size`` rows a task."""
    c = config_lib.from_dict(c.to_dict())
    c.s2sched.probe_size, c.s2sched.probe_sampling = size, "fresh"
    return c


def fresh_probe_rows(f: Finetune, steps: int) -> list[Row]:
    """The paper's 128-a-task probe forward, and the host side of one fresh draw at the demo's size."""
    paper = probe_sampling(f.config, 128)
    demo = probe_sampling(f.config, f.config.s2sched.probe_size)
    return [probe_row(f, steps, probe_batches(paper, f.valid, 0), "S2Sched probe forward, 128 rows a task",
                      "the 7B recipe's fresh probe, every step"),
            Row("host: a fresh probe draw + to device", f"{f.config.s2sched.probe_size} rows a task", None,
                median_ms(lambda i: [on_device(b) for b in probe_batches(demo, f.valid, i)], max(steps, 10)))]


def lm_head_rows(f: Finetune, steps: int) -> list[Row]:
    """LM head + cross-entropy, forward and backward wrt the hidden states, at the budget and at every position."""
    gen = on_device(f.host_batches[0][1])
    b, t = gen["input_ids"].shape
    model = pretrain.model_config(config_lib.demo_base_config())
    hidden = jax.random.normal(jax.random.key(1), (b, t, model.hidden_size), jnp.float32)

    def at_budget(params, base, h, labels):
        positions, targets, valid = cross_entropy.answer_positions(labels, f.budget)
        sums, _ = cross_entropy.target_cross_entropy(f.parts.merge(params, base).logits_at(h, positions), targets,
                                                     valid)
        return sums.sum()

    def everywhere(params, base, h, labels):
        sums, _ = cross_entropy.per_sample_cross_entropy(f.parts.merge(params, base).logits(h[:, :-1]), labels)
        return sums.sum()

    rows = []
    for what, loss, slots in (("LM head + CE fwd/bwd, answer budget", at_budget, f"{b}x{f.budget}"),
                              ("LM head + CE fwd/bwd, every position", everywhere, f"{b}x{t - 1}")):
        fn = jax.value_and_grad(loss, argnums=2)
        compiled, seconds = compile_jit(fn, f.parts.params, f.parts.base, hidden, gen["labels"])
        ms = median_ms(lambda i: compiled(f.parts.params, f.parts.base, hidden, gen["labels"]), steps)
        rows.append(Row(what, f"{slots} positions x vocab {model.vocab_size}", seconds, ms))
    return rows


def host_row(f: Finetune, steps: int) -> Row:
    """Drawing the next batch pair (S2Sched step-0 counts) and putting it on the device."""
    emb_counts, gen_counts = step_zero_counts(f.config)

    def call(i):
        emb, gen = f.batcher.next_batches(emb_counts, gen_counts)
        return on_device(emb), on_device(gen)

    return Row("host: Batcher.next_batches + to device", "one emb + one gen batch", None,
               median_ms(call, max(steps, 10)))


def padding_rows(f: Finetune) -> list[Row]:
    """Real / padded tokens of the sampled batches, and answer tokens / LM-head slots."""
    emb_real = emb_all = gen_real = gen_all = answers = 0
    for emb, gen in f.host_batches:
        emb_real += int(emb["query_mask"].sum() + emb["passage_mask"].sum())
        emb_all += emb["query_mask"].size + emb["passage_mask"].size
        gen_real += int(gen["attention_mask"].sum())
        gen_all += gen["attention_mask"].size
        answers += int((gen["labels"][:, 1:] != formatting.IGNORE_INDEX).sum())
    slots = len(f.host_batches) * f.host_batches[0][1]["input_ids"].shape[0] * f.budget
    n = f"over {len(f.host_batches)} batches"
    return [Row("padding: embedding real / padded tokens", f"{emb_real} / {emb_all}",
                note=f"{emb_real / emb_all:.0%} {n}"),
            Row("padding: generative real / padded tokens", f"{gen_real} / {gen_all}",
                note=f"{gen_real / gen_all:.0%} {n}"),
            Row("padding: answer tokens / LM-head slots", f"{answers} / {slots}", note=f"{answers / slots:.0%} {n}")]


# ----------------------------------------------------------------------------------- base stages
def base_step_row(what: str, step_fn: Callable, params, opt_state, batches: list[tuple], steps: int,
                  shape: str) -> tuple[Row, Any]:
    """A pretrain-style step (params and optimizer state donated); returns the row and the last params."""
    begin = time.perf_counter()
    step_fn.lower(params, opt_state, *batches[0]).compile()
    seconds = time.perf_counter() - begin
    holder = {"params": params, "opt": opt_state}

    def call(i):
        holder["params"], holder["opt"], loss = step_fn(holder["params"], holder["opt"], *batches[i % len(batches)])
        return loss

    return Row(what, shape, seconds, median_ms(call, steps)), holder["params"]


def instruct_rows(base: ml_collections.ConfigDict) -> dict[str, instruct.AnswerRows]:
    """The instruction stage's rows as run_instruct_stage draws them (held-out inputs excluded), per task."""
    t = base.instruct
    data = config_lib.synthetic_dir(base.data.scale, base.data.seed)
    synthetic.ensure_dataset(data, scale=base.data.scale, seed=base.data.seed)
    world = synthetic_world.build_world(base.data.scale, base.data.seed)
    tokenizer = demo_tokenizer()
    rows = {}
    for short, count in t.rows.items():
        name = BY_SHORT[short].name
        held_out = {formatting.input_text(row["text"][0])
                    for split in ("valid", "test") for row in synthetic.read_rows(data, split, name)}
        pairs = [tuple(row["text"]) for row in synthetic.extra_train_rows(world, short, count, t.seed, held_out)]
        rows[short] = instruct.encode_rows(tokenizer, pairs)
    return rows


def base_rows(steps: int) -> list[Row]:
    """One causal-LM step and one instruction-stage step of a random base at the recipe's shapes."""
    base = config_lib.demo_base_config()
    model = Mistral(pretrain.model_config(base), param_dtype=jnp.float32, dtype=jnp.float32,
                    rngs=nnx.Rngs(base.train.seed))
    graphdef, params, rest = nnx.split(model, BaseParam, ...)
    t = base.train
    rng = np.random.default_rng(0)
    tokens = [(jnp.asarray(rng.integers(3, base.model.vocab_size, (t.batch_size, t.seq_len + 1), np.int32)),)
              for _ in range(4)]
    tx = pretrain.make_optimizer(t)
    lm, params = base_step_row("base: causal-LM step", pretrain.make_train_step(graphdef, rest, tx), params,
                               tx.init(params), tokens, steps, f"{t.batch_size}x{t.seq_len + 1} tokens")
    rows = instruct_rows(base)
    stream = instruct.batches(rows, base.instruct.batch_size, base.instruct.seed)
    batches = [(next(stream),) for _ in range(4)]
    tx = pretrain.make_optimizer(base.instruct)
    grids = " + ".join(f"{task} {'x'.join(map(str, part[0].shape))}" for task, part in zip(rows, batches[0][0]))
    shape = f"{grids} tokens, {sum(part[2].shape[0] for part in batches[0][0])} answer slots"
    inst, _ = base_step_row("base: instruction-stage step",
                            pretrain.make_train_step(graphdef, rest, tx, instruct.parts_answer_loss), params,
                            tx.init(params), batches, steps, shape)
    return [lm, inst]


# ----------------------------------------------------------------------------------- output
def print_table(rows: list[Row]) -> None:
    print("| what | shape | compile s | median ms | note |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        compile_s = "" if r.compile_s is None else f"{r.compile_s:.1f}"
        ms = "" if r.median_ms is None else f"{r.median_ms:.1f}"
        print(f"| {r.what} | {r.shape} | {compile_s} | {ms} | {r.note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each function (after compile and warm-up)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batch pairs the steps cycle over")
    parser.add_argument("--skip-base", action="store_true", help="leave out the base's causal-LM and instruct steps")
    args = parser.parse_args()
    begin = time.perf_counter()
    f = build_finetune(demo_config(), args.batches)
    print(f"{jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} CPUs; demo base shape, "
          f"TMoLE rank {f.config.tmole.rank}; answer budget {f.budget}; median of {args.steps} calls "
          f"(setup {time.perf_counter() - begin:.1f} s)")
    rows = [train_step_row(f, "train step (both branches)", args.steps, emb=True, gen=True, budget=f.budget),
            train_step_row(f, "train step, embedding branch only", args.steps, emb=True, gen=False, budget=f.budget),
            train_step_row(f, "train step, generative branch only", args.steps, emb=False, gen=True, budget=f.budget),
            train_step_row(f, "train step, generative only, LM head everywhere", args.steps, emb=False, gen=True,
                           budget=0),
            train_step_row(f, "train step (both branches), adapter dropout 0", args.steps, emb=True, gen=True,
                           budget=f.budget, parts=without_dropout(f.config)),
            probe_row(f, args.steps), *lm_head_rows(f, args.steps), host_row(f, args.steps), *padding_rows(f)]
    full, probe = rows[0].median_ms, rows[5].median_ms
    rows.insert(6, Row("train step + probe (a trainer step's device work)", "", None, full + probe))
    rows[7:7] = fresh_probe_rows(f, args.steps)
    if not args.skip_base:
        rows += base_rows(args.steps)
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
