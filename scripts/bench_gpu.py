"""One GPU: the project's TMoLE train step on a Mistral-7B-shaped model against transformers + PEFT LoRA.

    python scripts/bench_gpu.py                 # on one H100: five runs, one table
    python scripts/bench_gpu.py --cpu-small     # the same code on the CPU at a tiny shape (hidden 128, 2 layers)

JAX rows: recfound_jax/train/step.py's joint step (generative branch: token cross-entropy over every
position, AdamW on the adapters) with TMoLE 2/2/2 rank 16 on q/k/v/o, random bf16 base weights,
cuDNN attention, 512 tokens, at micro-batch 16 (adapter dropout drawn with Threefry, one hash an element, and
with packed Threefry, four 16-bit draws a hash: tmole.dropout_rng) and at a larger one. Peer rows: transformers'
MistralForCausalLM of the same shape with a PEFT LoRA of rank 16 on q/k/v/o (dropout 0.1), AdamW,
SDPA attention, with gradient checkpointing at micro-batch 16 and without it at micro-batch 8.

Each row runs in its own process (a fresh GPU, its own peak memory). Model FLOP/s count 4 N FLOPs a
token (N = all base parameters: forward 2N, backward through the frozen weights 2N; no attention
term), MFU divides by --peak (989e12, the H100 SXM's dense bf16). Peak memory: jax's
``memory_stats()["peak_bytes_in_use"]``, torch's ``max_memory_allocated``. A run that does not fit
reports OOM. The GPU launcher's XLA flags (recfound_jax/distributed.py) are set before jax starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_BF16_PEAK = 989e12
RESULT = "RESULT "


@dataclasses.dataclass(frozen=True)
class Shape:
    """Model and batch shape of one mode."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    length: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


MISTRAL_7B = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32768, length=512)
CPU_SMALL = Shape(hidden=128, intermediate=352, layers=2, heads=4, kv_heads=2, vocab=32768, length=64)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: which framework, micro-batch, and remat policy (JAX) or gradient checkpointing (peer)."""

    framework: str  # "jax" or "peft"
    micro: int
    remat: str = "none"  # jax: model.remat; peft: "checkpointing" or "none"
    dropout_rng: str = "threefry"  # jax: tmole.dropout_rng

    @property
    def variant(self) -> str:
        """What sets a JAX row apart besides micro-batch and remat: the adapter-dropout RNG."""
        return self.dropout_rng if self.framework == "jax" else "-"


def cases(small: bool) -> list[Case]:
    """The rows: JAX at the defaults, with packed Threefry dropout draws, at a larger micro-batch; then the peer."""
    if small:
        return [Case("jax", 4, "dots_saveable"), Case("jax", 4, "dots_saveable", "threefry16"),
                Case("jax", 8, "save_attention_out"),
                Case("peft", 4, "checkpointing"), Case("peft", 2, "none")]
    return [Case("jax", 16, "dots_saveable"),
            Case("jax", 16, "dots_saveable", "threefry16"),
            Case("jax", 32, "save_attention_out"),
            Case("peft", 16, "checkpointing"), Case("peft", 8, "none")]


# ------------------------------------------------------------------------------------------ JAX
def run_jax(case: Case, shape: Shape, small: bool, steps: int, rank: int) -> dict:
    """The project's train step, generative branch only; returns timings and peak memory."""
    if not small:
        from recfound_jax import distributed  # noqa: PLC0415

        distributed.set_gpu_xla_flags()
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from recfound_jax import config as config_lib  # noqa: PLC0415
    from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig  # noqa: PLC0415
    from recfound_jax.model.tmole import TMoLE, TMoLEConfig  # noqa: PLC0415
    from recfound_jax.train import step as step_lib  # noqa: PLC0415

    cfg = MistralConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                        num_layers=shape.layers, num_heads=shape.heads, num_kv_heads=shape.kv_heads,
                        head_dim=shape.head_dim)
    dtype = jnp.float32 if small else jnp.bfloat16
    tmole = TMoLEConfig.default(rank=rank, alpha=4.0 * rank, dropout=0.1, task_embedding_dim=512,
                                dropout_rng=case.dropout_rng)
    model = nnx.eval_shape(lambda: Mistral(cfg, tmole=tmole, param_dtype=dtype, dtype=dtype, remat=case.remat,
                                           attention_impl="xla" if small else "cudnn", rngs=nnx.Rngs(0)))
    nnx.update(model, random_base(nnx.state(model, BaseParam)))
    model.adapters = TMoLE(tmole, cfg.num_layers, cfg.projection_dims(), rngs=nnx.Rngs(1))
    parts = step_lib.ModelParts.of(model)
    optimizer = step_lib.make_optimizer(learning_rate=1e-4, total_steps=1000, warmup_ratio=0.0, weight_decay=0.0,
                                        grad_clip=1.0)
    state = step_lib.init_train_state(parts.params, optimizer)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, shape.vocab, (case.micro, shape.length)), jnp.int32)
    gen = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": ids,
           "task_ids": jnp.asarray(rng.integers(3, 13, case.micro), jnp.int32)}
    opts = step_lib.StepOptions.from_config(config_lib.base_config(), answer_budget=0)
    train_step = jax.jit(step_lib.make_train_step(parts, optimizer, opts), donate_argnums=0)
    key = jax.random.key(0)
    begin = time.perf_counter()
    state, metrics = train_step(state, parts.base, None, gen, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - begin
    times = []
    for i in range(2 + steps):
        begin = time.perf_counter()
        state, metrics = train_step(state, parts.base, None, gen, key)
        jax.block_until_ready((state, metrics))
        if i >= 2:
            times.append(time.perf_counter() - begin)
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"step_s": float(np.median(times)), "compile_s": compile_s, "peak_bytes": stats.get("peak_bytes_in_use"),
            "loss": float(metrics["loss"]), "params": cfg.num_params()}


def random_base(abstract):
    """Random base weights made on the device in their own dtype (no float32 copy of the 7B model):
    norms 1, every other weight N(0, 0.02)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from recfound_jax import parallel  # noqa: PLC0415

    @jax.jit
    def make():
        def one(path, x):
            if "norm" in parallel.path_str(path):
                return jnp.ones(x.shape, x.dtype)
            key = jax.random.fold_in(jax.random.key(0), zlib.crc32(parallel.path_str(path).encode()) % 2**31)
            return (0.02 * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)

        return jax.tree_util.tree_map_with_path(one, abstract)

    return make()


# ------------------------------------------------------------------------------------------ peer
def run_peft(case: Case, shape: Shape, small: bool, steps: int, rank: int) -> dict:
    """transformers MistralForCausalLM + PEFT LoRA on q/k/v/o with AdamW; returns timings and peak memory."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    from transformers import MistralConfig, MistralForCausalLM  # noqa: PLC0415

    device = torch.device("cpu" if small else "cuda")
    dtype = torch.float32 if small else torch.bfloat16
    config = MistralConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                           num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                           num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                           max_position_embeddings=4096, sliding_window=None, attn_implementation="sdpa")
    torch.manual_seed(0)
    with device:
        model = MistralForCausalLM._from_config(config, dtype=dtype)
    if case.remat == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=rank, lora_alpha=4 * rank, lora_dropout=0.1,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, shape.vocab, (case.micro, shape.length), device=device)

    def one_step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    begin = time.perf_counter()
    one_step()
    sync()
    first_s = time.perf_counter() - begin
    times = []
    for i in range(2 + steps):
        begin = time.perf_counter()
        loss = one_step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - begin)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"step_s": float(np.median(times)), "compile_s": first_s, "peak_bytes": peak, "loss": float(loss.detach()),
            "params": params}


# ------------------------------------------------------------------------------------------ driver
def child(args: argparse.Namespace) -> None:
    """Run one case in this process and print its result as one JSON line."""
    shape = CPU_SMALL if args.cpu_small else MISTRAL_7B
    case = Case(args.framework, args.micro, args.remat, args.dropout_rng)
    runner = run_jax if case.framework == "jax" else run_peft
    result = runner(case, shape, args.cpu_small, args.steps, args.rank)
    print(RESULT + json.dumps(result), flush=True)


def launch(case: Case, args: argparse.Namespace) -> dict:
    """Run a case in a fresh process; {"error": ...} if it failed (OOM is named as such)."""
    cmd = [sys.executable, __file__, "--child", "--framework", case.framework, "--micro", str(case.micro),
           "--remat", case.remat, "--dropout-rng", case.dropout_rng,
           "--steps", str(args.steps), "--rank", str(args.rank)]
    if args.cpu_small:
        cmd.append("--cpu-small")
    env = dict(os.environ)
    if args.cpu_small:
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # the run's own GPU: let the largest batch try
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    text = done.stdout + done.stderr
    oom = any(s in text for s in ("RESOURCE_EXHAUSTED", "OutOfMemoryError", "out of memory"))
    return {"error": "OOM" if oom else f"failed (exit {done.returncode}): {text.strip().splitlines()[-1:]}"}


def table(rows: list[tuple[Case, dict]], shape: Shape, peak: float) -> str:
    """One line per case: tokens/s, step time, model FLOP/s, MFU, peak memory, first-step seconds."""
    out = [f"{'framework':<22} {'micro':>5} {'remat / ckpt':<19} {'variant':<10} {'tokens/s':>9} {'step ms':>8} "
           f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} {'first s':>7}"]
    for case, r in rows:
        name = "recfound_jax TMoLE" if case.framework == "jax" else "transformers+PEFT LoRA"
        if "error" in r:
            out.append(f"{name:<22} {case.micro:>5} {case.remat:<19} {case.variant:<10} {r['error']}")
            continue
        tokens = case.micro * shape.length / r["step_s"]
        flops = 4 * r["params"] * tokens
        mem = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.1f}"
        out.append(f"{name:<22} {case.micro:>5} {case.remat:<19} {case.variant:<10} {tokens:>9.0f} "
                   f"{1e3 * r['step_s']:>8.1f} "
                   f"{flops / 1e12:>8.1f} {flops / peak:>6.1%} {mem:>8} {r['compile_s']:>7.1f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-small", action="store_true", help="tiny shape on the CPU (exercises the code)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (after 2 warm-up steps)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--peak", type=float, default=H100_BF16_PEAK, help="peak FLOP/s for MFU")
    parser.add_argument("--only", choices=("jax", "peft"), help="run one framework's rows")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per row")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=("jax", "peft"), help=argparse.SUPPRESS)
    parser.add_argument("--micro", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--remat", help=argparse.SUPPRESS)
    parser.add_argument("--dropout-rng", default="threefry", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    shape = CPU_SMALL if args.cpu_small else MISTRAL_7B
    rows = []
    for case in cases(args.cpu_small):
        if args.only and case.framework != args.only:
            continue
        rows.append((case, launch(case, args)))
        print(f"done: {case}", file=sys.stderr, flush=True)
    where = "CPU (tiny shape)" if args.cpu_small else "GPU"
    print(f"{where}: hidden {shape.hidden}, {shape.layers} layers, {shape.length} tokens, LoRA/expert rank "
          f"{args.rank}; model FLOP/s = 4 N per token; MFU against {args.peak:.3g} FLOP/s")
    print(table(rows, shape, args.peak))


if __name__ == "__main__":
    main()
