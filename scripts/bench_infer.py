"""Benchmark inference: greedy generation (new tokens/s) and embedding (texts/s, tokens/s).

CPU mode (default): the demo model, loaded from a demo run with --run, otherwise a random model of the
demo base's shape (hidden 128, 2 layers, vocab 32768, configs/demo_base.py) with the demo's TMoLE
adapters (configs/demo.py). Generation: prompts of 128 tokens, 32 new tokens, batch 8 and 32, through
`GreedyGenerator` (prefill + a jitted while-loop of KV-cache decode steps, one dispatch per batch).
Embedding: inputs of data.query_len tokens (64) at batch 8 and 32, through `EmbeddingEncoder`.

    JAX_PLATFORMS=cpu python scripts/bench_infer.py [--run runs/demo] [--repeats 3]

GPU mode (--gpu): the Mistral-7B shape with random bf16 weights (nothing downloaded) against, in the same
process, transformers' `generate` (greedy, KV cache) and a torch mean-pooling encoder (one forward of the
base model, masked mean of the last hidden state). Generation: prompt 256, 128 new tokens, batch 32 and
128; encoding: 64 inputs of 256 tokens. The JAX model carries the paper's TMoLE adapters (2/2/2 experts of
rank 16 on q, k, v, o) and is routed by task, as `RecFound` runs it; --with-base adds rows for the same
base without adapters. torch runs first and frees its memory before JAX starts; JAX does not preallocate.

    python scripts/bench_infer.py --gpu [--with-base] [--repeats 3]
    JAX_PLATFORMS=cpu python scripts/bench_infer.py --gpu --tiny      # smoke test of the GPU path on CPU

Every generation runs exactly its number of new tokens (EOS never stops it: JAX uses eos_id=-1, torch
min_new_tokens=max_new_tokens), so tokens/s compare like with like. Times are medians over --repeats
runs after one warm-up run; "first" is the warm-up run's time (for JAX it includes the compilation).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU in --gpu mode
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from recfound_jax import recipes
from recfound_jax.inference.decoding import GreedyGenerator  # noqa: E402
from recfound_jax.inference.encoding import EmbeddingEncoder  # noqa: E402
from recfound_jax.inference.recfound import RecFound  # noqa: E402
from recfound_jax.model.mistral import BaseParam, Mistral, MistralConfig  # noqa: E402
from recfound_jax.model.tmole import TMoLEConfig  # noqa: E402
from recfound_jax.tasks import get_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEN_TASK = get_task("Sequential_Recommendation").id
EMB_TASK = get_task("Emb_query").id
NO_EOS = -1  # a token id that is never generated: every row runs all its new tokens


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes of one benchmark."""

    prompt: int
    new_tokens: int
    gen_batches: tuple[int, ...]
    emb_len: int
    emb_batches: tuple[int, ...]
    emb_count: int  # inputs per embedding measurement (a multiple of every batch)


CPU_SIZES = Sizes(prompt=128, new_tokens=32, gen_batches=(8, 32), emb_len=64, emb_batches=(8, 32), emb_count=64)
GPU_SIZES = Sizes(prompt=256, new_tokens=128, gen_batches=(32, 128), emb_len=256, emb_batches=(64,), emb_count=64)
TINY_SIZES = Sizes(prompt=32, new_tokens=8, gen_batches=(2, 4), emb_len=32, emb_batches=(4,), emb_count=4)
MISTRAL_7B = MistralConfig()  # hidden 4096, intermediate 14336, 32 layers, 32/8 heads of 128, vocab 32768
TINY_SHAPE = MistralConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=16, max_position_embeddings=512)


@dataclasses.dataclass
class Row:
    """One line of the result table."""

    impl: str
    what: str
    batch: int
    shape: str
    first_s: float
    median_s: float
    amount: float  # what one run produces: new tokens, or texts
    unit: str

    @property
    def rate(self) -> float:
        return self.amount / self.median_s


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(time of the first call, median time of ``repeats`` more calls); ``fn`` must block until done."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def random_prompts(rng: np.random.Generator, count: int, length: int, vocab: int) -> list[list[int]]:
    """Token-id sequences of one length, BOS first, no special ids after it."""
    return [[1] + rng.integers(3, vocab, size=length - 1).tolist() for _ in range(count)]


# ------------------------------------------------------------------------------------ JAX
def jax_rows(model: Mistral, name: str, sizes: Sizes, repeats: int, rng: np.random.Generator) -> list[Row]:
    """Generation and embedding rows of a JAX model."""
    vocab = model.config.vocab_size
    generator = GreedyGenerator(model, eos_id=NO_EOS, pad_id=0, max_prompt_len=sizes.prompt)
    rows = []
    for batch in sizes.gen_batches:
        prompts = random_prompts(rng, batch, sizes.prompt, vocab)

        def run():
            out = generator.generate(prompts, GEN_TASK, max_new_tokens=sizes.new_tokens, batch_size=batch,
                                     progress=False)
            assert out.shape == (batch, sizes.new_tokens)

        first, median = timed(run, repeats)
        rows.append(Row(name, "generate", batch, f"{sizes.prompt}+{sizes.new_tokens}", first, median,
                        batch * sizes.new_tokens, "new tok/s"))
    encoder = EmbeddingEncoder(model, pad_id=0)
    seqs = random_prompts(rng, sizes.emb_count, sizes.emb_len, vocab)
    for batch in sizes.emb_batches:
        def run():
            encoder.encode(seqs, [0] * len(seqs), EMB_TASK, max_len=sizes.emb_len, batch_size=batch,
                           progress=False)

        first, median = timed(run, repeats)
        rows.append(Row(name, "embed", batch, f"{sizes.emb_count}x{sizes.emb_len}", first, median,
                        sizes.emb_count, "texts/s"))
    return rows


def demo_model(run: str | None) -> tuple[Mistral, str]:
    """The demo run's model, or a random model of the demo base's shape with the demo's adapters."""
    if run:
        rf = RecFound.from_run(run)
        return rf.model, f"jax demo run (step {rf.step})"
    m = recipes.load("demo_base").model
    cfg = MistralConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                        head_dim=m.head_dim, rms_norm_eps=m.rms_norm_eps, rope_theta=m.rope_theta,
                        max_position_embeddings=m.max_position_embeddings)
    tmole = TMoLEConfig.from_config(recipes.load("demo").tmole)
    return Mistral(cfg, tmole=tmole, rngs=nnx.Rngs(0)), "jax demo shape (random)"


def bf16_model(cfg: MistralConfig, *, adapters: bool) -> Mistral:
    """A random bf16 model of ``cfg``, with the paper's TMoLE adapters or none; cuDNN attention on GPU."""
    attention = "cudnn" if jax.default_backend() == "gpu" else "xla"
    return Mistral(cfg, tmole=TMoLEConfig.default() if adapters else None, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16,
                   attention_impl=attention, rngs=nnx.Rngs(0))


def without_adapters(model: Mistral) -> Mistral:
    """The same base weights (shared, not copied) in a model with no adapters."""
    cfg = model.config
    shell = nnx.eval_shape(lambda: Mistral(cfg, param_dtype=jnp.bfloat16, dtype=model.dtype,
                                           attention_impl=model.attention_impl, rngs=nnx.Rngs(0)))
    return nnx.merge(nnx.graphdef(shell), nnx.state(model, BaseParam))


# ------------------------------------------------------------------------------------ torch
def torch_rows(cfg: MistralConfig, sizes: Sizes, repeats: int, rng: np.random.Generator) -> list[Row]:
    """transformers generate and a torch mean-pooling encoder on a random bf16 model of ``cfg``."""
    import torch
    import transformers

    from recfound_jax.convert.hf import config_to_hf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_config = transformers.MistralConfig(**config_to_hf(cfg, jnp.bfloat16))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = transformers.MistralForCausalLM(hf_config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    name = f"torch {torch.__version__.split('+')[0]} transformers {transformers.__version__}"
    rows = _torch_measure(model, name, device, sizes, repeats, rng)
    del model  # free the GPU for JAX
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _torch_measure(model, name: str, device: str, sizes: Sizes, repeats: int, rng: np.random.Generator) -> list[Row]:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    vocab = model.config.vocab_size
    rows = []
    for batch in sizes.gen_batches:
        ids = torch.tensor(random_prompts(rng, batch, sizes.prompt, vocab), device=device)
        mask = torch.ones_like(ids)

        def run():
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sizes.new_tokens,
                                     min_new_tokens=sizes.new_tokens, do_sample=False, pad_token_id=0)
            sync()
            assert out.shape == (batch, sizes.prompt + sizes.new_tokens)

        first, median = timed(run, repeats)
        rows.append(Row(name, "generate", batch, f"{sizes.prompt}+{sizes.new_tokens}", first, median,
                        batch * sizes.new_tokens, "new tok/s"))
    seqs = torch.tensor(random_prompts(rng, sizes.emb_count, sizes.emb_len, vocab), device=device)
    for batch in sizes.emb_batches:
        def run():
            with torch.inference_mode():
                for start in range(0, sizes.emb_count, batch):
                    ids = seqs[start: start + batch]
                    mask = torch.ones_like(ids)
                    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                    weights = mask[..., None].to(hidden.dtype)
                    pooled = (hidden * weights).sum(1).float() / weights.sum(1).float()
                    torch.nn.functional.normalize(pooled, dim=-1).cpu()
            sync()

        first, median = timed(run, repeats)
        rows.append(Row(name, "embed", batch, f"{sizes.emb_count}x{sizes.emb_len}", first, median,
                        sizes.emb_count, "texts/s"))
    return rows


# ------------------------------------------------------------------------------------ report
def print_table(rows: list[Row], sizes: Sizes) -> None:
    """One table: throughput, and tokens/s for embedding rows."""
    print(f"\ndevice: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    header = f"{'implementation':<44} {'task':<9} {'batch':>5} {'shape':>9} {'first s':>8} {'median s':>9} " \
             f"{'throughput':>12} {'unit':<10} {'tok/s':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        tokens = r.rate * (sizes.emb_len if r.what == "embed" else 1)
        print(f"{r.impl:<44} {r.what:<9} {r.batch:>5} {r.shape:>9} {r.first_s:>8.2f} {r.median_s:>9.3f} "
              f"{r.rate:>12,.1f} {r.unit:<10} {tokens:>10,.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a demo run directory (CPU mode); default: a random model of its shape")
    parser.add_argument("--gpu", action="store_true", help="the Mistral-7B shape against transformers and torch")
    parser.add_argument("--tiny", action="store_true", help="with --gpu: a tiny shape, to smoke-test on CPU")
    parser.add_argument("--with-base", action="store_true", help="with --gpu: also the JAX base without adapters")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if not args.gpu:
        sizes = CPU_SIZES
        model, name = demo_model(args.run)
        rows = jax_rows(model, name, sizes, args.repeats, rng)
    else:
        sizes, cfg = (TINY_SIZES, TINY_SHAPE) if args.tiny else (GPU_SIZES, MISTRAL_7B)
        rows = torch_rows(cfg, sizes, args.repeats, rng)
        model = bf16_model(cfg, adapters=True)
        rows += jax_rows(model, f"jax {jax.__version__} RecFound (TMoLE 2/2/2 r16)", sizes, args.repeats, rng)
        if args.with_base:
            rows += jax_rows(without_adapters(model), f"jax {jax.__version__} base (no adapters)", sizes,
                             args.repeats, rng)
    print_table(rows, sizes)


if __name__ == "__main__":
    main()
