"""Where the time goes on one GPU, by ablation: variants of the 7B-shaped train step and of decoding.

    python scripts/profile_gpu.py [--train] [--decode]      # one table per part; run on a GPU

Train (512 tokens, micro-batch 16, dots_saveable, cuDNN, TMoLE 2/2/2 r16, random bf16 base): the
forward alone; the full step as scripts/bench_gpu.py runs it (full-vocabulary CE at every position,
dropout 0.1); with LM-head logits only at 64 answer positions; without dropout; plain LoRA
(one rank-16 expert, no router). Decode (batch 128, cache of 384 slots): the prefill of 256 tokens;
one decode step with adapters; without adapters; and one decode step's layer scan without the cache
written back (attention over the old cache), which bounds what the cache update costs.
Each row: median of 5 timed calls after one warm-up (compile) call.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recfound_jax import distributed  # noqa: E402

distributed.set_gpu_xla_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLE, TMoLEConfig  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402

CFG = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128)
TINY = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16)
ATTENTION = "cudnn"


def timed(fn, *args) -> tuple[float, float]:
    """(first call seconds, median of 5 later calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def model(tmole: TMoLEConfig | None, remat: str = "dots_saveable", base=None) -> Mistral:
    """A random bf16 7B-shaped model (base made on device; shared when ``base`` is given)."""
    m = nnx.eval_shape(lambda: Mistral(CFG, tmole=tmole, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16,
                                       remat=remat, attention_impl=ATTENTION, rngs=nnx.Rngs(0)))
    if base is None:
        abstract = nnx.state(m, BaseParam)

        @jax.jit
        def make():
            leaves, tree = jax.tree.flatten(abstract)
            keys = jax.random.split(jax.random.key(0), len(leaves))
            return jax.tree.unflatten(tree, [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                                             for k, x in zip(keys, leaves)])

        base = make()
    nnx.update(m, base)
    if tmole is not None:
        m.adapters = TMoLE(tmole, CFG.num_layers, CFG.projection_dims(), rngs=nnx.Rngs(1))
    return m


def train_rows() -> list[tuple[str, float, float, float]]:
    rng = np.random.default_rng(0)
    micro, length = 16, 512
    ids = jnp.asarray(rng.integers(3, CFG.vocab_size, (micro, length)), jnp.int32)
    answers = np.full((micro, length), -100)
    answers[:, -64:] = np.asarray(ids)[:, -64:]
    full = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": ids,
            "task_ids": jnp.asarray(rng.integers(3, 13, micro), jnp.int32)}
    short = dict(full, labels=jnp.asarray(answers, jnp.int32))
    rows = []
    shared_base = None
    variants = [
        ("forward only (hidden states)", TMoLEConfig(), None, None),
        ("step: full-vocab CE at every position, dropout 0.1", TMoLEConfig(), full, 0),
        ("step: CE at 64 answer positions", TMoLEConfig(), short, 64),
        ("step: every position, dropout 0", TMoLEConfig(dropout=0.0), full, 0),
        ("step: plain LoRA r16 (no router), every position", TMoLEConfig(enabled=False), full, 0),
    ]
    for name, tmole, batch, budget in variants:
        m = model(tmole, base=shared_base)
        shared_base = nnx.state(m, BaseParam)
        parts = step_lib.ModelParts.of(m)
        if batch is None:
            fn = jax.jit(lambda p, b, i, t: parts.merge(p, b).hidden_states(i, task_ids=t))
            first, median = timed(fn, parts.params, parts.base, ids, full["task_ids"])
        else:
            optimizer = step_lib.make_optimizer(learning_rate=1e-4, total_steps=100, warmup_ratio=0.0,
                                                weight_decay=0.0, grad_clip=1.0)
            state = step_lib.init_train_state(parts.params, optimizer)
            opts = step_lib.StepOptions(answer_budget=budget)
            fn = jax.jit(step_lib.make_train_step(parts, optimizer, opts))
            first, median = timed(fn, state, parts.base, None, batch, jax.random.key(0))
        rows.append((name, first, median, micro * length / median))
        del m, parts
    return rows


def decode_rows() -> list[tuple[str, float, float, float]]:
    rng = np.random.default_rng(0)
    batch, prompt, slots = 128, 256, 384
    ids = jnp.asarray(rng.integers(3, CFG.vocab_size, (batch, prompt)), jnp.int32)
    mask = jnp.ones_like(ids)
    tasks = jnp.full((batch,), 5, jnp.int32)
    rows = []
    with_adapters = model(TMoLEConfig(), remat="none")
    without = model(None, remat="none", base=nnx.state(with_adapters, BaseParam))

    def prefill(m, i, k):
        return m.prefill(i, k, m.init_cache(batch, slots), task_ids=tasks, logits_at=jnp.full((batch,), prompt - 1))

    first, median = timed(jax.jit(prefill), with_adapters, ids, mask)
    rows.append(("prefill 128 x 256 (adapters)", first, median, batch * prompt / median))
    _, cache = jax.jit(prefill)(with_adapters, ids, mask)
    token, positions = ids[:, -1], jnp.full((batch,), prompt, jnp.int32)
    step = jax.jit(lambda m, t, p, c: m.decode_step(t, p, c, task_ids=tasks), donate_argnums=3)
    for name, m in (("decode step (adapters)", with_adapters), ("decode step (no adapters)", without)):
        c = jax.tree.map(jnp.copy, cache)
        start = time.perf_counter()
        _, c = step(m, token, positions, c)
        jax.block_until_ready(c)
        first = time.perf_counter() - start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            _, c = step(m, token, positions, c)
            jax.block_until_ready(c)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append((name, first, median, batch / median))
    read_only = jax.jit(lambda m, t, p, c: m.decode_step(t, p, c, task_ids=tasks)[0])
    first, median = timed(read_only, with_adapters, token, positions, cache)
    rows.append(("decode step, updated cache discarded (adapters)", first, median, batch / median))
    weights_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(with_adapters, BaseParam)))
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    print(f"base weights {weights_bytes / 2**30:.1f} GiB, KV cache {cache_bytes / 2**30:.1f} GiB "
          f"(one read of both at 3 TB/s: {(weights_bytes + cache_bytes) / 3e12 * 1e3:.1f} ms)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape with XLA attention: a CPU smoke test")
    args = parser.parse_args()
    global CFG, ATTENTION
    if args.tiny:
        CFG, ATTENTION = TINY, "xla"
    parts = [p for p, on in (("train", args.train), ("decode", args.decode)) if on] or ["train", "decode"]
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    for part in parts:
        rows = train_rows() if part == "train" else decode_rows()
        unit = "tokens/s" if part == "train" else "tokens/s (prefill) or new tokens/s"
        print(f"\n| {part} variant | first call s | median | {unit} |\n|---|---:|---:|---:|")
        for name, first, median, rate in rows:
            print(f"| {name} | {first:.1f} | {median * 1e3:.1f} ms | {rate:,.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
