"""GPU check: the model's cuDNN attention path against the XLA path (bf16, right-padded batch, causal and
bidirectional).

    python scripts/check_cudnn.py      # prints one table; run on a GPU
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from recfound_jax.model.mistral import Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig  # noqa: E402


def main() -> None:
    cfg = MistralConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=64)
    xla = Mistral(cfg, tmole=TMoLEConfig.default(rank=8), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16,
                  attention_impl="xla", rngs=nnx.Rngs(0))
    cudnn = nnx.merge(nnx.graphdef(Mistral(cfg, tmole=TMoLEConfig.default(rank=8), param_dtype=jnp.bfloat16,
                                           dtype=jnp.bfloat16, attention_impl="cudnn", rngs=nnx.Rngs(0))),
                      nnx.state(xla))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, 1024, (4, 128)))
    mask = jnp.asarray(np.arange(128)[None] < np.array([128, 100, 64, 7])[:, None], jnp.int32)
    tasks = jnp.array([0, 4, 1, 7])
    print(f"backend {jax.default_backend()}, devices {jax.devices()}")
    print("| attention | max abs diff of real positions (bf16 hidden) | max abs value |")
    print("|---|---|---|")
    for causal in (True, False):
        a = jax.jit(lambda m, i, k: m.hidden_states(i, k, task_ids=tasks, causal=causal))(xla, ids, mask)
        b = jax.jit(lambda m, i, k: m.hidden_states(i, k, task_ids=tasks, causal=causal))(cudnn, ids, mask)
        real = np.asarray(mask, bool)
        diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))[real].max()
        largest = np.abs(np.asarray(a, np.float32)).max()
        print(f"| {'causal' if causal else 'bidirectional'} | {diff:.4f} | {largest:.2f} |")


if __name__ == "__main__":
    main()
