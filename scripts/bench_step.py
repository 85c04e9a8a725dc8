"""CPU train-step time of TMoLE (2/2/2, rank r) against one plain LoRA of the same total rank (6r), and S2Sched.

    JAX_PLATFORMS=cpu python scripts/bench_step.py [--rank 16] [--steps 5]

Both adapters sit on q/k/v/o of the same small random Mistral (hidden 256, 4 layers, 8 heads, vocab
32768), both run the project's joint step (recfound_jax/train/step.py: InfoNCE over queries and
passages plus token cross-entropy, AdamW on the adapters, dropout 0.1) on the same batches of both
branches. Reported: the median wall time of ``--steps`` steps after compile and two warm-up steps,
the two variants' steps alternating.
The S2Sched row is scripts/bench_s2sched.py's measurement (observe + counts of one step, 10 tasks).
Goals: TMoLE at most 1.3x plain LoRA's step; an S2Sched update under 1 ms.
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_s2sched  # noqa: E402

from recfound_jax import config as config_lib  # noqa: E402
from recfound_jax.model.mistral import Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig  # noqa: E402
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402

SMALL = MistralConfig(vocab_size=32768, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=8,
                      num_kv_heads=4, head_dim=32, rope_theta=1e4, max_position_embeddings=512)
STEP_GOAL, S2SCHED_GOAL_MS = 1.3, 1.0
WARMUP_STEPS = 2


def batches(emb: int, gen: int, query_len: int, passage_len: int, gen_len: int, seed: int = 0) -> tuple[dict, dict]:
    """Random right-padded batches of both branches with every task present."""
    rng = np.random.default_rng(seed)

    def mask(rows, length):
        return (np.arange(length)[None] < rng.integers(length // 2, length + 1, rows)[:, None]).astype(np.int32)

    def ids(m):
        return (rng.integers(3, SMALL.vocab_size, m.shape) * m).astype(np.int32)

    qm, pm, gm = mask(emb, query_len), mask(2 * emb, passage_len), mask(gen, gen_len)
    gen_ids = ids(gm)
    emb_batch = {"query_ids": ids(qm), "query_mask": qm, "query_pool_mask": qm.astype(np.float32),
                 "passage_ids": ids(pm), "passage_mask": pm, "passage_pool_mask": pm.astype(np.float32),
                 "negative_mask": np.ones(emb, np.float32),
                 "task_ids": np.resize([t.id for t in EMBEDDING_TASKS], emb).astype(np.int32)}
    gen_batch = {"input_ids": gen_ids, "attention_mask": gm,
                 "labels": np.where((np.arange(gen_len)[None] >= gen_len // 4) & (gm == 1), gen_ids, -100),
                 "task_ids": np.resize([t.id for t in GENERATIVE_TASKS], gen).astype(np.int32)}
    return ({k: jnp.asarray(v) for k, v in emb_batch.items()}, {k: jnp.asarray(v) for k, v in gen_batch.items()})


def compiled_step(tmole: TMoLEConfig, emb: dict, gen: dict) -> tuple[Callable[[], None], float]:
    """(run one step, compile + first step seconds) of the joint step with these adapters."""
    model = Mistral(SMALL, tmole=tmole, rngs=nnx.Rngs(0))
    parts = step_lib.ModelParts.of(model)
    optimizer = step_lib.make_optimizer(learning_rate=1e-3, total_steps=100, warmup_ratio=0.0, weight_decay=0.0,
                                        grad_clip=1.0)
    opts = step_lib.StepOptions.from_config(config_lib.base_config(), answer_budget=0)
    train_step = jax.jit(step_lib.make_train_step(parts, optimizer, opts), donate_argnums=0)
    holder = {"state": step_lib.init_train_state(parts.params, optimizer)}
    key = jax.random.key(0)

    def run() -> None:
        holder["state"], metrics = train_step(holder["state"], parts.base, emb, gen, key)
        jax.block_until_ready((holder["state"], metrics))

    begin = time.perf_counter()
    run()
    return run, time.perf_counter() - begin


def median_times(runs: list[Callable[[], None]], steps: int) -> list[float]:
    """Median seconds of each step function, timed in alternation so that machine load hits both alike."""
    times = [[] for _ in runs]
    for i in range(WARMUP_STEPS + steps):
        for run, seen in zip(runs, times):
            begin = time.perf_counter()
            run()
            if i >= WARMUP_STEPS:
                seen.append(time.perf_counter() - begin)
    return [float(np.median(seen)) for seen in times]


def main() -> None:
    """Time both adapters and one S2Sched update; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16, help="rank r of each TMoLE expert")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after compile and warm-up)")
    parser.add_argument("--emb", type=int, default=8, help="embedding queries a step (2 passages each)")
    parser.add_argument("--gen", type=int, default=8, help="generative samples a step")
    parser.add_argument("--calls", type=int, default=300, help="timed S2Sched updates")
    args = parser.parse_args()
    emb, gen = batches(args.emb, args.gen, query_len=64, passage_len=64, gen_len=128)
    r = args.rank
    variants = [
        (f"TMoLE 2/2/2 rank {r}", TMoLEConfig.default(rank=r, alpha=4.0 * r, dropout=0.1, task_embedding_dim=512)),
        (f"plain LoRA rank {6 * r}", TMoLEConfig.default(enabled=False, rank=6 * r, alpha=24.0 * r, dropout=0.1)),
    ]
    print(f"{jax.devices()[0].platform} x{jax.device_count()}, model hidden {SMALL.hidden_size}, "
          f"{SMALL.num_layers} layers, vocab {SMALL.vocab_size}; batch {args.emb} queries + {2 * args.emb} passages "
          f"(64 tokens) and {args.gen} generative (128 tokens); median of {args.steps} steps")
    compiled = [compiled_step(cfg, emb, gen) for _, cfg in variants]
    medians = median_times([run for run, _ in compiled], args.steps)
    results = [(name, first, median) for (name, _), (_, first), median in zip(variants, compiled, medians)]
    ratio = results[0][2] / results[1][2]
    print(f"{'what':<28} {'first s':>8} {'median ms':>10} {'ratio':>6} {'goal':>6}  ok")
    print(f"{results[0][0]:<28} {results[0][1]:>8.1f} {1e3 * results[0][2]:>10.1f} {ratio:>6.2f} {STEP_GOAL:>6.1f}  "
          f"{'yes' if ratio <= STEP_GOAL else 'NO'}  (ratio: TMoLE / plain LoRA)")
    print(f"{results[1][0]:<28} {results[1][1]:>8.1f} {1e3 * results[1][2]:>10.1f} {1.0:>6.2f}")
    sched_ms = 1e3 * bench_s2sched._time_updates([t.id for t in GENERATIVE_TASKS], args.calls, batch_size=1024)
    median = float(np.median(sched_ms))
    ok = "yes" if median < S2SCHED_GOAL_MS else "NO"
    print(f"{'S2Sched update (10 tasks)':<28} {'':>8} {median:>10.3f} {'':>6} {S2SCHED_GOAL_MS:>6.1f}  {ok}  (ms)")


if __name__ == "__main__":
    main()
