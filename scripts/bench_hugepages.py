"""What glibc's malloc.hugetlb tunable does to a CPU training step: one markdown table, both runs in one call.

    python scripts/bench_hugepages.py [--steps 30]

Each row is a fresh child process (the tunable is read when a process starts) timing ``--steps`` calls of the
demo base's causal-LM step (recfound_jax/demo/pretrain.py, 16 x 153 tokens, random weights) after one
warm-up call: the plain environment, then GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which the command lines
set for themselves (recfound_jax/cli.py `restart_with_hugepages`). Minor page faults and system CPU
seconds come from getrusage over the timed calls.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax.numpy as jnp
import numpy as np
from flax import nnx
from recfound_jax import config as config_lib
from recfound_jax.demo import pretrain
from recfound_jax.model.mistral import BaseParam, Mistral

steps = int(sys.argv[1])
base = config_lib.demo_base_config()
model = Mistral(pretrain.model_config(base), param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(0))
graphdef, params, rest = nnx.split(model, BaseParam, ...)
tx = pretrain.make_optimizer(base.train)
step = pretrain.make_train_step(graphdef, rest, tx)
opt_state = tx.init(params)
rng = np.random.default_rng(0)
batches = [jnp.asarray(rng.integers(3, base.model.vocab_size, (16, 153), np.int32)) for _ in range(4)]
params, opt_state, loss = step(params, opt_state, batches[0])
loss.block_until_ready()
before, begin = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for i in range(steps):
    params, opt_state, loss = step(params, opt_state, batches[i % 4])
loss.block_until_ready()
seconds, after = time.perf_counter() - begin, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": 1e3 * seconds / steps, "faults": (after.ru_minflt - before.ru_minflt) / steps,
                  "sys": after.ru_stime - before.ru_stime}))
"""


def child(steps: int, tunable: str | None) -> dict:
    """One child process's figures, with GLIBC_TUNABLES set to ``tunable`` (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunable:
        env["GLIBC_TUNABLES"] = tunable
    done = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps in each child process")
    args = parser.parse_args()
    print(f"demo base causal-LM step, 16 x 153 tokens, {args.steps} steps a row")
    print("| environment | ms a step | minor page faults a step | system CPU s |")
    print("|---|---:|---:|---:|")
    for name, tunable in (("plain", None), ("GLIBC_TUNABLES=glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=1")):
        row = child(args.steps, tunable)
        print(f"| {name} | {row['ms']:.0f} | {row['faults']:,.0f} | {row['sys']:.1f} |")


if __name__ == "__main__":
    main()
