"""Per-device memory of the paper's Mistral-7B TMoLE train step, compiled for an 8-device mesh on the CPU.

    python scripts/plan_7b.py                      # every length, remat policy and micro-batch (minutes)
    python scripts/plan_7b.py --lengths 2048 --remat full dots_saveable --micro 2 4
    python scripts/plan_7b.py --probe --lengths 2048 --remat dots_saveable --micro 1   # S2Sched's probe too

The step is the project's own (recfound_jax/train/step.py) on configs/recfound_mistral7b.py: 2048
embedding samples (GradCache) and 1024 generative samples a step, TMoLE 2/2/2 rank 16 on q/k/v/o of a
frozen bf16 Mistral-7B. Everything is abstract (nnx.eval_shape: no weights exist), lowered and compiled
with the run's shardings for 8 simulated devices; XLA's memory analysis then gives each device's
argument, output, temporary and code bytes. ``--micro`` is the samples per device in one GradCache
chunk and one generative micro-batch (global chunk = micro x data-parallel devices).

The CPU compiler's memory analysis estimates the GPU one, it is not the GPU's: buffer assignment
differs by backend; the CPU runs bf16 matmuls in float32 (saved matmul outputs count twice the
bytes they take on a GPU, which matters for dots_saveable and none); and the CPU program runs
attention through XLA, materialising [B, H, T, T] scores, where the GPU run uses cuDNN's fused
attention, which never does. The "attn" column is one layer's scores and probabilities in float32
for one micro-batch: roughly what cuDNN saves off the CPU's temp. "fits" means the total is within
72 GB (80 GB less 10% for the CUDA context, cuDNN workspaces and allocator slack).

``--probe`` adds, per length, S2Sched's validation probe of the recipe (s2sched.probe_size rows of each of
the 13 tasks, forwards without dropout in the recipe's GradCache chunks and micro-batches,
`step.make_probe_fn`): its memory, and the tokens its forwards read against the step's (forward, backward
and GradCache's extra forward): the probe's cost relative to a step when it runs every step, in forward
token-passes (XLA's flop count of a program counts a loop's body once, so it cannot compare the two).
"""
from __future__ import annotations

import os

# Before jax is imported: 8 simulated CPU devices, and a faster CPU compile (LLVM optimisation off:
# buffer assignment, hence the memory analysis, does not depend on it).
_FLAGS = {"--xla_force_host_platform_device_count": "8", "--xla_backend_optimization_level": "0",
          "--xla_llvm_disable_expensive_passes": "true"}
for _name, _value in _FLAGS.items():
    if _name not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_name}={_value}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recfound_jax import parallel, recipes  # noqa: E402
from recfound_jax.config import REMAT_POLICIES  # noqa: E402
from recfound_jax.model.mistral import Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig  # noqa: E402
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS  # noqa: E402
from recfound_jax.train import step as step_lib  # noqa: E402

MISTRAL_7B = MistralConfig()  # the defaults are Mistral-7B-v0.3's shape
GIB = 2**30
# An H100's 80 GB less about 10% for the CUDA context, cuDNN workspaces and allocator slack.
BUDGET_BYTES = 0.9 * 80e9
FASTEST_FIRST = ("none", "dots_saveable", "save_attention_out", "full")  # less recomputation first


@dataclasses.dataclass(frozen=True)
class Plan:
    """One point of the sweep: sequence length, remat policy, per-device micro-batch."""

    length: int
    remat: str
    micro: int


def abstract_model(remat: str, tmole: TMoLEConfig) -> Mistral:
    """The 7B model with TMoLE as shapes only (bf16 base, float32 adapters, bf16 compute)."""
    return nnx.eval_shape(lambda: Mistral(MISTRAL_7B, tmole=tmole, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16,
                                          remat=remat, attention_impl="xla", rngs=nnx.Rngs(0)))


def with_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """ShapeDtypeStructs carrying the partition-rule sharding of each leaf."""
    shardings = parallel.state_shardings(tree, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def batch_structs(shapes: dict[str, tuple[tuple[int, ...], Any]], mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract batch arrays, sharded on their sample axis over data x fsdp."""
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in shapes.items()}


def recipe_batches(emb: int, gen: int, query_len: int, passage_len: int, gen_len: int, mesh):
    """The recipe's embedding and generative batches as abstract arrays."""
    i32, f32 = jnp.int32, jnp.float32
    emb_shapes = {"query_ids": ((emb, query_len), i32), "query_mask": ((emb, query_len), i32),
                  "query_pool_mask": ((emb, query_len), f32), "passage_ids": ((2 * emb, passage_len), i32),
                  "passage_mask": ((2 * emb, passage_len), i32), "passage_pool_mask": ((2 * emb, passage_len), f32),
                  "negative_mask": ((emb,), f32), "task_ids": ((emb,), i32)}
    gen_shapes = {"input_ids": ((gen, gen_len), i32), "attention_mask": ((gen, gen_len), i32),
                  "labels": ((gen, gen_len), i32), "task_ids": ((gen,), i32)}
    return batch_structs(emb_shapes, mesh), batch_structs(gen_shapes, mesh)


def compile_step(plan: Plan, c, mesh) -> dict[str, float]:
    """Lower and compile the recipe's train step for one plan; sizes in bytes per device, times in s."""
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    model = abstract_model(plan.remat, TMoLEConfig.from_config(c.tmole))
    parts = step_lib.ModelParts.of(model)
    params, base = with_shardings(parts.params, mesh), with_shardings(parts.base, mesh)
    # the schedule's length (the recipe's steps follow from its data) changes no buffer
    optimizer = step_lib.make_optimizer(learning_rate=c.train.learning_rate, total_steps=c.train.steps or 1000,
                                        warmup_ratio=c.train.warmup_ratio, weight_decay=c.train.weight_decay,
                                        grad_clip=c.train.grad_clip)
    opt_state = jax.eval_shape(optimizer.init, params)
    opt_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh))
                             if x.ndim == 0 else x, opt_state)
    opt_state = _like_params(opt_state, params, mesh)
    state = {"params": params, "opt_state": opt_state,
             "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh))}
    query_len = min(c.data.query_len, plan.length)
    emb, gen = recipe_batches(c.train.embedding_batch, c.train.generative_batch, query_len, plan.length,
                              plan.length, mesh)
    opts = step_lib.StepOptions(temperature=c.train.temperature, gradcache_chunk=plan.micro * data_ways,
                                generative_micro_batch=plan.micro * data_ways, answer_budget=0)
    step_fn = parallel.under_mesh(step_lib.make_train_step(parts, optimizer, opts), mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    base_sh = jax.tree.map(lambda x: x.sharding, base)
    emb_sh = {k: v.sharding for k, v in emb.items()}
    gen_sh = {k: v.sharding for k, v in gen.items()}
    rep = parallel.replicated(mesh)
    jitted = jax.jit(step_fn, in_shardings=(state_sh, base_sh, emb_sh, gen_sh, rep),
                     out_shardings=(state_sh, rep), donate_argnums=0)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    begin = time.perf_counter()
    lowered = jitted.lower(state, base, emb, gen, key)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    mem = compiled.memory_analysis()
    heads = MISTRAL_7B.num_heads
    attn = 2 * plan.micro * heads * plan.length * plan.length * 4
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return {"lower_s": lowered_at - begin, "compile_s": done - lowered_at,
            "argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
            "alias": mem.alias_size_in_bytes, "temp": mem.temp_size_in_bytes,
            "code": mem.generated_code_size_in_bytes, "total": total, "attn": attn}


def compile_probe(c, mesh, length: int) -> dict[str, float]:
    """Lower and compile the recipe's S2Sched probe at ``length`` tokens; bytes per device, and its forward
    token-passes against the step's (`token_passes`)."""
    n = c.s2sched.probe_size
    n_emb, n_gen = n * len(EMBEDDING_TASKS), n * len(GENERATIVE_TASKS)
    parts = step_lib.ModelParts.of(abstract_model("none", TMoLEConfig.from_config(c.tmole)))
    params, base = with_shardings(parts.params, mesh), with_shardings(parts.base, mesh)
    emb, gen = recipe_batches(n_emb, n_gen, min(c.data.query_len, length), length, length, mesh)
    emb["task_index"] = batch_structs({"task_index": ((n_emb,), jnp.int32)}, mesh)["task_index"]
    gen["task_index"] = batch_structs({"task_index": ((n_gen,), jnp.int32)}, mesh)["task_index"]
    probe = parallel.under_mesh(step_lib.make_probe_fn(
        parts, len(EMBEDDING_TASKS), len(GENERATIVE_TASKS), c.train.temperature,
        embedding_chunk=c.train.gradcache_chunk, generative_chunk=c.train.generative_micro_batch), mesh)
    compiled = jax.jit(probe).lower(params, base, emb, gen).compile()
    mem = compiled.memory_analysis()
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    query_len = min(c.data.query_len, length)
    probe_tokens = n_emb * query_len + 2 * n_emb * length + n_gen * length
    return {"rows": n_emb + n_gen, "temp": mem.temp_size_in_bytes, "total": total, "probe_passes": probe_tokens,
            "step_passes": token_passes(c, query_len, length)}


def token_passes(c, query_len: int, length: int) -> int:
    """The train step's work in forward token-passes (a backward counted as two): embedding tokens four
    times (GradCache's representation pass, the recomputed forward, its backward), generative tokens three."""
    emb = c.train.embedding_batch * (query_len + 2 * length)
    return 4 * emb + 3 * c.train.generative_batch * length


def _like_params(opt_state: Any, params: Any, mesh) -> Any:
    """Shard the optimizer's per-parameter leaves (mu, nu) like their parameter; scalars replicated."""
    by_shape_path = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        by_shape_path[parallel.path_str(path)] = leaf.sharding

    def one(path, leaf):
        name = parallel.path_str(path)
        for param_path, sharding in by_shape_path.items():
            if name.endswith(param_path):
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=parallel.replicated(mesh))

    return jax.tree_util.tree_map_with_path(one, opt_state)


def main() -> None:
    """Compile every selected plan and print one table row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--remat", nargs="+", default=list(REMAT_POLICIES), choices=REMAT_POLICIES)
    parser.add_argument("--micro", type=int, nargs="+", default=[1, 2, 4],
                        help="samples per device in one GradCache chunk / generative micro-batch")
    parser.add_argument("--mesh", type=int, nargs=3, default=[1, -1, 1], metavar=("DATA", "FSDP", "TENSOR"))
    parser.add_argument("--probe", action="store_true", help="also plan S2Sched's probe and compare its cost")
    args = parser.parse_args()
    c = recipes.load("recfound_mistral7b")
    mesh = parallel.make_mesh(args.mesh)
    print(f"Mistral-7B TMoLE step, {dict(mesh.shape)} mesh of {jax.device_count()} CPU devices, "
          f"batches {c.train.embedding_batch} emb + {c.train.generative_batch} gen; GiB per device")
    header = (f"{'len':>5} {'remat':<19} {'micro':>5} {'lower s':>7} {'compile s':>9} {'args':>6} {'out':>6} "
              f"{'temp':>7} {'code':>5} {'total':>7} {'attn':>6}  fits")
    print(header)
    totals = {}
    for length in args.lengths:
        for remat in args.remat:
            for micro in args.micro:
                r = compile_step(Plan(length, remat, micro), c, mesh)
                totals[Plan(length, remat, micro)] = r["total"]
                fits = "yes" if r["total"] <= BUDGET_BYTES else "no"
                print(f"{length:>5} {remat:<19} {micro:>5} {r['lower_s']:>7.1f} {r['compile_s']:>9.1f} "
                      f"{r['argument'] / GIB:>6.2f} {r['output'] / GIB:>6.2f} {r['temp'] / GIB:>7.2f} "
                      f"{r['code'] / GIB:>5.3f} {r['total'] / GIB:>7.2f} {r['attn'] / GIB:>6.2f}  {fits}",
                      flush=True)
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    for length in args.lengths:
        print(f"{length} tokens: {recommend(totals, length, data_ways)}")
    if args.probe:
        print(f"\nS2Sched probe: {c.s2sched.probe_size} rows of each task ({c.s2sched.probe_sampling}); GiB per "
              "device; cost in forward token-passes")
        print(f"{'len':>5} {'rows':>5} {'temp':>7} {'total':>7}  fits {'probe Mtok':>10} {'step Mtok':>9} "
              f"{'probe/step':>10}")
        for length in args.lengths:
            r = compile_probe(c, mesh, length)
            fits = "yes" if r["total"] <= BUDGET_BYTES else "no"
            print(f"{length:>5} {r['rows']:>5} {r['temp'] / GIB:>7.2f} {r['total'] / GIB:>7.2f}  {fits:>4} "
                  f"{r['probe_passes'] / 1e6:>10.2f} {r['step_passes'] / 1e6:>9.2f} "
                  f"{r['probe_passes'] / r['step_passes']:>10.3f}", flush=True)


def recommend(totals: dict[Plan, float], length: int, data_ways: int) -> str:
    """The least-recomputing remat policy that fits, at its largest fitting micro-batch."""
    for remat in FASTEST_FIRST:
        fitting = [p for p, total in totals.items()
                   if p.length == length and p.remat == remat and total <= BUDGET_BYTES]
        if fitting:
            best = max(fitting, key=lambda p: p.micro)
            return (f"model.remat={remat}, {best.micro} samples per device per micro-batch "
                    f"(train.gradcache_chunk = train.generative_micro_batch = {best.micro * data_ways}), "
                    f"{totals[best] / GIB:.1f} GiB per device")
    return "nothing measured fits: try smaller --micro or model.remat=full"


if __name__ == "__main__":
    main()
