"""Benchmark HF checkpoint loading and the compile time of a Mistral-7B-shaped TMoLE training step.

1. Writes a random sharded bf16 HF Mistral checkpoint of about 2 GB (hidden 2048, intermediate 7168,
   16 layers, 32 heads, 8 KV heads, vocab 32768: 1.0B parameters), one tensor at a time.
2. Times `recfound_jax.load_hf(dir, dtype=bfloat16)` from a warm page cache, in a fresh subprocess
   per repeat, and reports the peak host RSS of the load (ru_maxrss after the load minus the RSS of
   the interpreter with jax imported and its backend started, measured in that process before loading).
3. Lowers and compiles, on CPU from abstract shapes only, the gradient wrt the TMoLE adapters
   (nnx.Param) of a next-token cross-entropy through a Mistral-7B-shaped model (hidden 4096,
   intermediate 14336, 32 heads, 8 KV heads, head_dim 128, vocab 32768, TMoLE 2/2/2 rank 16) at
   2, 8 and 32 layers, to show the layer scan keeps compile time flat in depth.

    JAX_PLATFORMS=cpu python scripts/bench_load.py [--dir DIR] [--layers 16] [--repeats 3]
        [--compile-layers 2,8,32] [--seq 512] [--skip-load] [--skip-compile]

Without --dir the checkpoint goes to a temporary directory that is removed at the end; with --dir an
existing checkpoint there is reused (written first if the directory has none) and kept.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_GBPS = 1.0
GOAL_RSS_RATIO = 1.5


def load_config(layers: int):
    """The Mistral-7B-like shape of the load benchmark checkpoint, smaller width and depth."""
    from recfound_jax.model.mistral import MistralConfig

    return MistralConfig(vocab_size=32768, hidden_size=2048, intermediate_size=7168, num_layers=layers,
                         num_heads=32, num_kv_heads=8, head_dim=64)


def compile_config(layers: int):
    """The Mistral-7B shape (only the depth varies)."""
    from recfound_jax.model.mistral import MistralConfig

    return MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_layers=layers,
                         num_heads=32, num_kv_heads=8, head_dim=128)


# ------------------------------------------------------------------------------------ checkpoint
def random_bf16(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bfloat16 values of magnitude in [2^-7, 2^-6) with random sign, made from random bits.

    Building the bit pattern directly is several times faster than drawing normals and casting.
    """
    import ml_dtypes

    bits = np.random.default_rng(seed).integers(0, 2**16, size=shape, dtype=np.uint16)
    bits &= 0x807F  # keep sign and mantissa
    bits |= 0x3C00  # biased exponent 120: 2^-7
    return bits.view(ml_dtypes.bfloat16)


def write_random_checkpoint(directory: Path, cfg, shard_bytes: int) -> None:
    """A sharded bf16 HF checkpoint of ``cfg`` with random weights (norms ones), plus config.json."""
    import jax.numpy as jnp
    import ml_dtypes

    from recfound_jax.convert import safetensors_io as st
    from recfound_jax.convert.hf import config_to_hf, expected_tensors

    dtype = np.dtype(ml_dtypes.bfloat16)

    def produce(shape, seed):
        if len(shape) == 1:
            return lambda: np.ones(shape, dtype)
        return lambda: random_bf16(shape, seed)

    tensors = [(name, shape, dtype, produce(shape, seed))
               for seed, (name, shape) in enumerate(expected_tensors(cfg).items())]
    st.write_checkpoint(directory, tensors, max_shard_bytes=shard_bytes)
    (directory / "config.json").write_text(json.dumps(config_to_hf(cfg, jnp.bfloat16), indent=2))


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory."""
    return sorted(directory.glob("*.safetensors"))


def warm_page_cache(files: list[Path]) -> float:
    """Read every file once (like cat > /dev/null) so the timed load reads from memory; returns seconds."""
    start = time.perf_counter()
    buffer = bytearray(64 * 2**20)
    view = memoryview(buffer)
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ load (child)
def current_rss_bytes() -> int:
    """Resident set size of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_load(directory: str) -> None:
    """Run in a fresh process: time one load_hf and print a JSON line with time and RSS figures."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import recfound_jax

    jnp.zeros(8).block_until_ready()  # start the backend so its memory is in the baseline
    baseline, baseline_peak = current_rss_bytes(), peak_rss_bytes()
    start = time.perf_counter()
    model = recfound_jax.load_hf(directory, dtype=jnp.bfloat16)
    state = nnx.state(model)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    loaded = sum(x.nbytes for x in jax.tree.leaves(state))
    gc.collect()
    print(json.dumps({"seconds": seconds, "baseline_rss": baseline, "baseline_peak": baseline_peak,
                      "peak_rss": peak_rss_bytes(), "rss_after": current_rss_bytes(), "loaded_bytes": loaded}))


def run_load_child(directory: Path) -> dict:
    """One load in a fresh interpreter; returns its JSON figures."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, __file__, "--child-load", str(directory)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ compile
def compile_step(layers: int, seq: int) -> tuple[float, float]:
    """(lower seconds, compile seconds) of jit(grad wrt adapters) for a 7B-shaped model of ``layers``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from recfound_jax.model.mistral import Mistral
    from recfound_jax.model.tmole import TMoLEConfig

    cfg = compile_config(layers)
    tmole = TMoLEConfig.default(num_embedding=2, num_shared=2, num_generative=2, rank=16)
    model = nnx.eval_shape(lambda: Mistral(cfg, tmole=tmole, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16,
                                           rngs=nnx.Rngs(0)))
    graphdef, adapters, frozen = nnx.split(model, nnx.Param, ...)

    def loss(adapters, frozen, input_ids, task_ids, dropout_key):
        net = nnx.merge(graphdef, adapters, frozen)
        logits = net(input_ids[:, :-1], task_ids=task_ids, dropout_key=dropout_key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, input_ids[:, 1:]).mean()

    ids = jax.ShapeDtypeStruct((1, seq + 1), jnp.int32)
    task_ids = jax.ShapeDtypeStruct((1,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(adapters, frozen, ids, task_ids, key)
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


# ------------------------------------------------------------------------------------ main
def bench_load(args, rows: list[tuple[str, str, str]]) -> None:
    """Write (or reuse) the checkpoint, warm the cache, time the loads and add rows."""
    owned = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="bench_load_")) if owned else Path(args.dir)
    try:
        cfg = load_config(args.layers)
        if not (directory / "config.json").is_file():
            start = time.perf_counter()
            write_random_checkpoint(directory, cfg, args.shard_mb * 2**20)
            os.sync()  # flush dirty pages so writeback does not run during the timed loads
            rows.append(("write random checkpoint", f"{time.perf_counter() - start:.1f} s", ""))
        files = checkpoint_files(directory)
        size = sum(f.stat().st_size for f in files)
        params = sum(int(np.prod(s)) for s in _expected_shapes(directory))
        rows.append(("checkpoint", f"{size / 1e9:.2f} GB in {len(files)} shards, {params / 1e9:.2f}B params",
                     str(directory)))
        warm = warm_page_cache(files)
        rows.append(("page-cache warm read", f"{warm:.2f} s ({size / 1e9 / warm:.2f} GB/s)", ""))
        results = [run_load_child(directory) for _ in range(args.repeats)]
        best = min(r["seconds"] for r in results)
        peak = max(r["peak_rss"] - r["baseline_rss"] for r in results)
        base = results[0]
        gbps = size / 1e9 / best
        ratio = peak / size
        all_seconds = ", ".join(f"{r['seconds']:.2f}" for r in results)
        rows.append((f"load_hf bf16 (best of {args.repeats})", f"{best:.2f} s = {gbps:.2f} GB/s (all: {all_seconds} s)",
                     f"goal >= {GOAL_GBPS} GB/s: {'met' if gbps >= GOAL_GBPS else 'MISSED'}"))
        rows.append(("interpreter + jax baseline RSS", f"{base['baseline_rss'] / 1e9:.2f} GB",
                     f"peak before load {base['baseline_peak'] / 1e9:.2f} GB"))
        rows.append(("peak RSS of the load (minus baseline)", f"{peak / 1e9:.2f} GB = {ratio:.2f}x checkpoint",
                     f"goal < {GOAL_RSS_RATIO}x: {'met' if ratio < GOAL_RSS_RATIO else 'MISSED'}"))
        rows.append(("RSS after load (minus baseline)", f"{(base['rss_after'] - base['baseline_rss']) / 1e9:.2f} GB",
                     f"model arrays {base['loaded_bytes'] / 1e9:.2f} GB"))
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _expected_shapes(directory: Path) -> list[tuple[int, ...]]:
    from recfound_jax.convert.hf import expected_tensors, read_config

    return list(expected_tensors(read_config(directory)).values())


def bench_compile(args, rows: list[tuple[str, str, str]]) -> None:
    """Lower and compile the training gradient at each requested depth and add rows."""
    for layers in args.compile_layers:
        lower, comp = compile_step(layers, args.seq)
        rows.append((f"jit(value_and_grad) 7B-shaped, {layers} layers, [1, {args.seq}]",
                     f"lower {lower:.1f} s + compile {comp:.1f} s = {lower + comp:.1f} s", "CPU, abstract shapes"))


def print_table(rows: list[tuple[str, str, str]]) -> None:
    """All figures as one markdown table."""
    print("| measurement | value | note |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="checkpoint directory to reuse (written there if absent; kept)")
    parser.add_argument("--layers", type=int, default=16, help="layers of the load checkpoint (16 -> ~2 GB)")
    parser.add_argument("--shard-mb", type=int, default=512, help="max shard size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads, each in a fresh process")
    parser.add_argument("--compile-layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8, 32])
    parser.add_argument("--seq", type=int, default=512, help="sequence length of the abstract batch")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        child_load(args.child_load)
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows: list[tuple[str, str, str]] = []
    start = time.perf_counter()
    if not args.skip_load:
        bench_load(args, rows)
    if not args.skip_compile:
        bench_compile(args, rows)
    rows.append(("whole script", f"{time.perf_counter() - start:.1f} s", ""))
    print_table(rows)


if __name__ == "__main__":
    main()
