"""Where the time goes on one GPU, by ablation: variants of the 7B-shaped train step and of decoding.

    python scripts/profile_gpu.py [--train] [--decode] [--train-variants full,...] [--trace DIR]

Train (512 tokens, micro-batch 16, dots_saveable, cuDNN, TMoLE 2/2/2 r16, random bf16 base): the
forward alone; the full step as scripts/bench_gpu.py runs it (full-vocabulary CE at every position,
dropout 0.1); with LM-head logits only at 64 answer positions; without dropout; plain LoRA
(one rank-16 expert, no router); no rematerialisation at micro-batch 8 (what recomputation costs);
the full step with the layers unrolled instead of scanned (no stacked residuals or weight slices); the full
step with its dropout masks drawn as packed Threefry (tmole.dropout_rng = "threefry16"), and also with one mask
for the q, k and v adapters (tmole.dropout_shared_qkv: one A contraction); the full step compiled
with XLA free to give any GEMM to Triton, which may fuse the GEMM's elementwise producers (SwiGLU, dropout)
into it, and without the launcher's while-loop double buffering (per-program compiler options, one
process). Rows print as they finish. Decode (batch 128, cache of 384 slots): the prefill of 256 tokens; one
decode step with adapters (layer slices and gates computed once, as `greedy_decode` does); without
adapters. --trace DIR adds, with CUDA graphs off, a profiler trace of one decode step, of the forward
and of one full train step, their optimized HLO, and tables of device time per op kind and per op
(scripts/trace_summary.py).
Each row: median of 5 timed calls after one warm-up (compile) call.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recfound_jax import distributed  # noqa: E402

distributed.set_gpu_xla_flags()
if "--trace" in sys.argv:  # one trace event per kernel, not one per CUDA graph (command buffer)
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import trace_summary  # noqa: E402  (scripts/trace_summary.py)
from flax import nnx  # noqa: E402

from recfound_jax import config as config_lib  # noqa: E402
from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLE, TMoLEConfig  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402

CFG = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128)
TINY = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16)
ATTENTION = "cudnn"
TRACE_DIR = ""  # --trace: where profiler traces and optimized HLO go


def compiled(jitted, args: tuple, options: dict | None):
    """``jitted``, or its program for ``args`` compiled with these XLA options (no process restart)."""
    return jitted.lower(*args).compile(compiler_options=options) if options else jitted


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


def trace(name: str, fn, *args):
    """Profile one call of ``fn`` into TRACE_DIR/name: the perfetto trace (copied to name.json.gz) and,
    for a jitted ``fn``, its optimized HLO (name.hlo.txt) to read fusion names by. Returns the output."""
    if hasattr(fn, "lower"):
        (Path(TRACE_DIR) / f"{name}.hlo.txt").write_text(fn.lower(*args).compile().as_text())
    with jax.profiler.trace(str(Path(TRACE_DIR) / name), create_perfetto_trace=True):
        out = jax.block_until_ready(fn(*args))
    shutil.copyfile(trace_summary.trace_file(Path(TRACE_DIR) / name), Path(TRACE_DIR) / f"{name}.json.gz")
    return out


TRAIN_VARIANTS = ("forward", "full", "answers", "no_dropout", "lora", "no_remat_mb8", "unrolled", "threefry16",
                  "shared_qkv", "triton_any", "no_double_buffering")


def train_rows(names: tuple[str, ...] = TRAIN_VARIANTS) -> Iterator[tuple[str, float, float, float]]:
    rng = np.random.default_rng(0)
    length = 512
    shared_base = None
    # key: (row name, TMoLE, micro-batch, labels: "all" positions or the last 64 "answers", remat policy,
    # XLA compiler options of the step)
    variants = {
        "forward": ("forward only (hidden states)", TMoLEConfig.default(), 16, None, "dots_saveable"),
        "full": ("step: full-vocab CE at every position, dropout 0.1", TMoLEConfig.default(), 16, "all",
                 "dots_saveable"),
        "answers": ("step: CE at 64 answer positions", TMoLEConfig.default(), 16, "answers", "dots_saveable"),
        "no_dropout": ("step: every position, dropout 0", TMoLEConfig.default(dropout=0.0), 16, "all", "dots_saveable"),
        "lora": ("step: plain LoRA r16 (no router), every position", TMoLEConfig.default(enabled=False), 16, "all",
                 "dots_saveable"),
        "no_remat_mb8": ("step: every position, no remat, micro-batch 8", TMoLEConfig.default(), 8, "all", "none"),
        "unrolled": ("step: full, layers unrolled (no scan)", TMoLEConfig.default(), 16, "all", "dots_saveable"),
        "threefry16": ("step: full, dropout masks from packed Threefry",
                       TMoLEConfig.default(dropout_rng="threefry16"), 16, "all", "dots_saveable"),
        "shared_qkv": ("step: full, packed Threefry, one dropout mask for q/k/v",
                       TMoLEConfig.default(dropout_rng="threefry16", dropout_shared_qkv=True), 16, "all",
                       "dots_saveable"),
        "triton_any": ("step: full, xla_gpu_triton_gemm_any", TMoLEConfig.default(), 16, "all", "dots_saveable",
                       {"xla_gpu_triton_gemm_any": True}),
        "no_double_buffering": ("step: full, no while-loop double buffering", TMoLEConfig.default(), 16, "all",
                                "dots_saveable", {"xla_gpu_enable_while_loop_double_buffering": False}),
    }
    for key in names:
        name, tmole, micro, labels, remat, *options = variants[key]
        ids = jnp.asarray(rng.integers(3, CFG.vocab_size, (micro, length)), jnp.int32)
        answers = np.full((micro, length), -100)
        answers[:, -64:] = np.asarray(ids)[:, -64:]
        batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
                 "labels": ids if labels == "all" else jnp.asarray(answers, jnp.int32),
                 "task_ids": jnp.asarray(rng.integers(3, 13, micro), jnp.int32)}
        m = model(tmole, remat=remat, base=shared_base)
        m.scan_layers = key != "unrolled"
        shared_base = nnx.state(m, BaseParam)
        parts = step_lib.ModelParts.of(m)
        if labels is None:
            fn = jax.jit(lambda p, b, i, t: parts.merge(p, b).hidden_states(i, task_ids=t))
            first, median = timed(fn, parts.params, parts.base, ids, batch["task_ids"])
            if TRACE_DIR:
                trace(f"train_{key}", fn, parts.params, parts.base, ids, batch["task_ids"])
        else:
            optimizer = step_lib.make_optimizer(learning_rate=1e-4, total_steps=100, warmup_ratio=0.0,
                                                weight_decay=0.0, grad_clip=1.0)
            state = step_lib.init_train_state(parts.params, optimizer)
            opts = step_lib.StepOptions.from_config(config_lib.base_config(),
                                                    answer_budget=64 if labels == "answers" else 0)
            args = (state, parts.base, None, batch, jax.random.key(0))
            start = time.perf_counter()
            jitted = jax.jit(step_lib.make_train_step(parts, optimizer, opts))
            fn = compiled(jitted, args, options[0] if options else None)
            compile_s = time.perf_counter() - start
            first, median = timed(fn, *args)
            first += compile_s
            if TRACE_DIR and key == "full":
                trace(f"train_{key}", fn, *args)
        yield name, first, median, micro * length / median
        del m  # (parts is rebound by the next variant; the base is shared)


def decode_rows() -> list[tuple[str, float, float, float]]:
    rng = np.random.default_rng(0)
    batch, prompt, slots = 128, 256, 384
    ids = jnp.asarray(rng.integers(3, CFG.vocab_size, (batch, prompt)), jnp.int32)
    mask = jnp.ones_like(ids)
    tasks = jnp.full((batch,), 5, jnp.int32)
    rows = []
    with_adapters = model(TMoLEConfig.default(), remat="none")
    without = model(None, remat="none", base=nnx.state(with_adapters, BaseParam))

    def prefill(m, i, k):
        return m.prefill(i, k, m.init_cache(batch, slots), task_ids=tasks, logits_at=jnp.full((batch,), prompt - 1))

    first, median = timed(jax.jit(prefill), with_adapters, ids, mask)
    rows.append(("prefill 128 x 256 (adapters)", first, median, batch * prompt / median))
    _, cache = jax.jit(prefill)(with_adapters, ids, mask)
    token, positions = ids[:, -1], jnp.full((batch,), prompt, jnp.int32)
    step = jax.jit(lambda m, t, p, c, layers: m.decode_step(t, p, c, layers=layers), donate_argnums=3)
    slices = jax.jit(lambda m: m.layer_slices(tasks))
    for name, m in (("decode step (adapters)", with_adapters), ("decode step (no adapters)", without)):
        layers = slices(m)
        c = jax.tree.map(jnp.copy, cache)
        start = time.perf_counter()
        _, c = step(m, token, positions, c, layers)
        jax.block_until_ready(c)
        first = time.perf_counter() - start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            _, c = step(m, token, positions, c, layers)
            jax.block_until_ready(c)
            times.append(time.perf_counter() - start)
        rows.append((name, first, statistics.median(times), batch / statistics.median(times)))
        if TRACE_DIR and m is with_adapters:
            c = trace("decode_step", lambda *a: step(*a)[1], m, token, positions, c, layers)
        del layers, c
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
    parser.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS),
                        help=f"comma-separated, of {', '.join(TRAIN_VARIANTS)}")
    parser.add_argument("--trace", default="", help="write profiler traces and optimized HLO here, then "
                        "summarize the device time per op (scripts/trace_summary.py)")
    args = parser.parse_args()
    global CFG, ATTENTION, TRACE_DIR
    if args.tiny:
        CFG, ATTENTION = TINY, "xla"
    TRACE_DIR = args.trace
    if TRACE_DIR:
        Path(TRACE_DIR).mkdir(parents=True, exist_ok=True)
    parts = [p for p, on in (("train", args.train), ("decode", args.decode)) if on] or ["train", "decode"]
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    for part in parts:
        rows = train_rows(tuple(args.train_variants.split(","))) if part == "train" else decode_rows()
        unit = "tokens/s" if part == "train" else "tokens/s (prefill) or new tokens/s"
        print(f"\n| {part} variant | first call s | median | {unit} |\n|---|---:|---:|---:|")
        for name, first, median, rate in rows:
            print(f"| {name} | {first:.1f} | {median * 1e3:.1f} ms | {rate:,.0f} |", flush=True)
    if TRACE_DIR:
        for name in ("decode_step", "train_forward", "train_full"):
            if (Path(TRACE_DIR) / name).is_dir():
                print(f"\n{name}:")
                trace_summary.print_summary(trace_summary.summarize(Path(TRACE_DIR) / name))


if __name__ == "__main__":
    main()
