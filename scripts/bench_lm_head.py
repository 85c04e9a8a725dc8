"""The full-vocabulary cross-entropy over every position: the project's form against plain autodiff.

    python scripts/bench_lm_head.py [--steps 5]       # CPU here; on a GPU the same command (7B shape)

Value and gradient (with respect to the hidden states) of the next-token cross-entropy of random hidden
states through an LM head, float32 and bf16. "project": ``mistral.head_logits`` (its gradient GEMMs
in the model's dtype) on hidden[:, :-1], as the train step does with no answer budget. "autodiff":
float32 logits of every position, sliced to [:, :-1], differentiated by JAX (a float32 cotangent
contracted with the bf16 weight, and the slice's padded float32 gradient). CPU: 16 x 256 tokens,
hidden 256, vocab 32,768; GPU: 16 x 512 tokens, hidden 4,096 (the 7B step's head). Medians of
``--steps`` calls after compile and two warm-ups, the two forms timed in alternation.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_step import median_times  # noqa: E402

from recfound_jax.model.mistral import head_logits  # noqa: E402
from recfound_jax.train import cross_entropy  # noqa: E402

VOCAB = 32768


def project_loss(hidden: jax.Array, weight: jax.Array, labels: jax.Array) -> jax.Array:
    """The train step's form: logits of hidden[:, :-1] only, gradient GEMMs in the model's dtype."""
    return cross_entropy.per_sample_cross_entropy(head_logits(hidden[:, :-1], weight), labels)[0].sum()


def autodiff_loss(hidden: jax.Array, weight: jax.Array, labels: jax.Array) -> jax.Array:
    """Float32 logits of every position, sliced, differentiated by JAX."""
    logits = jnp.einsum("...d,vd->...v", hidden, weight, preferred_element_type=jnp.float32)
    return cross_entropy.per_sample_cross_entropy(logits[:, :-1], labels)[0].sum()


def runner(loss: Callable, hidden: jax.Array, weight: jax.Array,
           labels: jax.Array) -> tuple[Callable[[], None], float]:
    """(one compiled value-and-gradient call, the loss it returns)."""
    fn = jax.jit(jax.value_and_grad(loss))
    value = float(fn(hidden, weight, labels)[0])
    return lambda: jax.block_until_ready(fn(hidden, weight, labels)), value


def main() -> None:
    """Time both forms in both dtypes; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = jax.devices()[0]
    batch, length, width = (16, 256, 256) if device.platform == "cpu" else (16, 512, 4096)
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, VOCAB, (batch, length)), jnp.int32)
    print(f"{device.platform} ({device.device_kind}), jax {jax.__version__}; {batch} x {length} tokens, hidden "
          f"{width}, vocab {VOCAB}\n")
    print("| dtype | project ms | autodiff ms | speed-up | same loss |\n|---|---:|---:|---:|---|")
    for dtype in (jnp.float32, jnp.bfloat16):
        hidden = jnp.asarray(rng.normal(size=(batch, length, width)), dtype)
        weight = jnp.asarray(0.02 * rng.normal(size=(VOCAB, width)), dtype)
        (ours, ours_loss), (peer, peer_loss) = (runner(f, hidden, weight, labels)
                                                for f in (project_loss, autodiff_loss))
        ours_s, peer_s = median_times([ours, peer], args.steps)
        same = np.isclose(ours_loss, peer_loss, rtol=1e-5)
        print(f"| {jnp.dtype(dtype).name} | {1e3 * ours_s:.1f} | {1e3 * peer_s:.1f} | {peer_s / ours_s:.2f}x "
              f"| {same} |")


if __name__ == "__main__":
    main()
