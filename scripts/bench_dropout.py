"""What the adapter dropout costs with each mask generator (tmole.dropout_rng), on whatever device jax has.

    python scripts/bench_dropout.py [--steps 5]            # CPU here; on a GPU the same command

Two tables. Masks: one adapter-dropout application (``tmole.dropout``: the mask and the rescale, as
``expert_deltas`` applies it) on one layer's input at the 7B step's shape, 16 x 512 tokens x 4096, bf16.
Step: the project's joint train step (generative branch, every position, AdamW, dots_saveable) of a
mid-size random model (hidden 1024, 2 layers, 8 x 256 tokens, float32 on the CPU, bf16 elsewhere) with
dropout 0.1 drawn by each generator, per projection, one mask for q/k/v (tmole.dropout_shared_qkv) or one
per expert as released (tmole.dropout_per_expert), and without dropout: how much of dropout's cost each
one leaves.
Medians of ``--steps`` calls after compile and two warm-ups, the variants timed in alternation.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_step import median_times  # noqa: E402

from recfound_jax import config as config_lib  # noqa: E402
from recfound_jax.config import DROPOUT_RNGS  # noqa: E402
from recfound_jax.model.mistral import Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig, dropout  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402

MASK_SHAPE = (16 * 512, 4096)
MID = MistralConfig(vocab_size=1024, hidden_size=1024, intermediate_size=2048, num_layers=2, num_heads=8,
                    num_kv_heads=2, head_dim=128)
RATE = 0.1


def mask_run(rng: str) -> Callable[[], None]:
    """One dropout application on a 7B-step-shaped layer input, jitted and compiled."""
    x = jnp.ones(MASK_SHAPE, jnp.bfloat16)
    key = jax.random.key(0)

    apply = jax.jit(lambda k, x: dropout(x, k, RATE, rng))

    def run() -> None:
        jax.block_until_ready(apply(key, x))

    run()
    return run


def step_run(tmole: TMoLEConfig, dtype) -> Callable[[], None]:
    """The joint train step of the mid-size model with these adapters, compiled."""
    model = Mistral(MID, tmole=tmole, remat="dots_saveable", param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(0))
    parts = step_lib.ModelParts.of(model)
    optimizer = step_lib.make_optimizer(learning_rate=1e-4, total_steps=100, warmup_ratio=0.0, weight_decay=0.0,
                                        grad_clip=1.0)
    state = step_lib.init_train_state(parts.params, optimizer)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, MID.vocab_size, (8, 256)), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": ids,
             "task_ids": jnp.asarray(rng.integers(3, 13, 8), jnp.int32)}
    opts = step_lib.StepOptions.from_config(config_lib.base_config(), answer_budget=0)
    train_step = jax.jit(step_lib.make_train_step(parts, optimizer, opts))
    key = jax.random.key(0)

    def run() -> None:
        jax.block_until_ready(train_step(state, parts.base, None, batch, key))

    run()
    return run


def main() -> None:
    """Time the masks, then the steps; print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per row (after compile and warm-up)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"{device.platform} ({device.device_kind}), jax {jax.__version__}")
    masks = median_times([mask_run(rng) for rng in DROPOUT_RNGS], args.steps)
    print(f"\n| dropout mask + rescale, {MASK_SHAPE[0]} x {MASK_SHAPE[1]} bf16 | ms |\n|---|---:|")
    for rng, seconds in zip(DROPOUT_RNGS, masks):
        print(f"| {rng} | {1e3 * seconds:.2f} |")
    dtype = jnp.float32 if device.platform == "cpu" else jnp.bfloat16
    variants = [(rng, TMoLEConfig.default(dropout=RATE, dropout_rng=rng)) for rng in DROPOUT_RNGS]
    variants += [(f"{rng}, one mask for q/k/v",
                  TMoLEConfig.default(dropout=RATE, dropout_rng=rng, dropout_shared_qkv=True)) for rng in DROPOUT_RNGS]
    variants += [(f"{rng}, a mask per expert (released)",
                  TMoLEConfig.default(dropout=RATE, dropout_rng=rng, dropout_per_expert=True)) for rng in DROPOUT_RNGS]
    variants.append(("no dropout", TMoLEConfig.default(dropout=0.0)))
    steps = median_times([step_run(tmole, dtype) for _, tmole in variants], args.steps)
    free = steps[-1]
    print(f"\n| train step, hidden {MID.hidden_size}, {MID.num_layers} layers, 8 x 256 tokens, "
          f"{jnp.dtype(dtype).name} | ms | dropout's cost, ms |\n|---|---:|---:|")
    for (name, _), seconds in zip(variants, steps):
        print(f"| {name} | {1e3 * seconds:.1f} | {1e3 * (seconds - free):.1f} |")


if __name__ == "__main__":
    main()
