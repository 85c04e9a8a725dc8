"""Benchmark TIES merging over checkpoints shaped like the Mistral-7B TMoLE trainable state.

The state (random float32): 32 layers x {q, k, v, o} x A[6, 4096, 16] and B[6, 16, d_out]
(d_out 4096 for q and o, 1024 for k and v), one router per projection (weight [32, 512, 6],
bias [32, 6]) and the task embedding [14, 512]: 82.2M parameters per checkpoint.
Leaves are generated lazily, one at a time, so the inputs are never all resident; the merged
leaves are kept (as a caller writing them out would hold them at worst).

    JAX_PLATFORMS=cpu python scripts/bench_merge.py [--models 3] [--layout per-layer|stacked]
        [--order ties|released] [--method ties|linear] [--per-tensor] [--generate-only]

--per-tensor trims each released tensor separately (one per layer and expert, one router per layer)
instead of each leaf as a whole.

Prints wall seconds and peak resident memory (ru_maxrss) of the whole process.
"""
from __future__ import annotations

import argparse
import resource
import time
import zlib

import numpy as np

LAYERS = 32
EXPERTS = 6
RANK = 16
HIDDEN = 4096
KV_DIM = 1024
ROUTER_IN = 512
TASK_ROWS = 14
OUT_DIMS = {"q": HIDDEN, "k": KV_DIM, "v": KV_DIM, "o": HIDDEN}


def leaf_shapes(layout: str) -> dict[str, tuple[int, ...]]:
    """Path -> shape of every trainable leaf, per layer ("per-layer") or stacked over layers ("stacked")."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, out_dim in OUT_DIMS.items():
        a, b = (EXPERTS, HIDDEN, RANK), (EXPERTS, RANK, out_dim)
        if layout == "stacked":
            shapes[f"layers/{name}/A"] = (LAYERS, *a)
            shapes[f"layers/{name}/B"] = (LAYERS, *b)
        else:
            for layer in range(LAYERS):
                shapes[f"layers/{layer}/{name}/A"] = a
                shapes[f"layers/{layer}/{name}/B"] = b
        shapes[f"router/{name}/weight"] = (LAYERS, ROUTER_IN, EXPERTS)
        shapes[f"router/{name}/bias"] = (LAYERS, EXPERTS)
    shapes["task_embedding"] = (TASK_ROWS, ROUTER_IN)
    return shapes


def per_tensor_batch_dims(path: str, layout: str) -> int:
    """Leading axes of a leaf that index the released per-layer, per-expert tensors."""
    if path == "task_embedding":
        return 0
    if path.startswith("router/"):
        return 1  # [layers, ...]
    return 2 if layout == "stacked" else 1  # [layers,] experts, ...


def _random(path: str, model: int, shape: tuple[int, ...], scale: float) -> np.ndarray:
    seed = zlib.crc32(f"{model}:{path}".encode())
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(scale)


class LazyCheckpoints:
    """Generates one leaf of the init and of each fine-tuned checkpoint on request."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self._init_path: str | None = None  # the init leaf of the current path is kept, no other
        self._init_value: np.ndarray | None = None

    def init_leaf(self, path: str) -> np.ndarray:
        if path != self._init_path:
            self._init_path, self._init_value = path, _random(path, -1, self.shapes[path], 0.02)
        return self._init_value

    def load_leaf(self, model: int, path: str) -> np.ndarray:
        return self.init_leaf(path) + _random(path, model, self.shapes[path], 1e-3)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(models: int, layout: str, order: str, method: str, per_tensor: bool, generate_only: bool) -> None:
    """Merge (or only generate) the lazily made checkpoints and print time and memory."""
    import jax

    from recfound_jax.merge import ties_merge_stream

    shapes = leaf_shapes(layout)
    params = sum(int(np.prod(s)) for s in shapes.values())
    source = LazyCheckpoints(shapes)
    print(f"{len(shapes)} leaves, {params / 1e6:.1f}M float32 parameters per checkpoint, {models} checkpoints")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; peak RSS before: {peak_rss_mib():.0f} MiB")
    start, start_cpu = time.perf_counter(), time.process_time()
    merged: dict[str, np.ndarray] = {}
    if generate_only:
        for path in shapes:
            source.init_leaf(path)
            for k in range(models):
                source.load_leaf(k, path)
    else:
        def batch_dims(path: str) -> int:
            return per_tensor_batch_dims(path, layout) if per_tensor else 0

        stream = ties_merge_stream(
            list(shapes), source.init_leaf, source.load_leaf, models, order=order, method=method, batch_dims=batch_dims
        )
        for path, leaf in stream:
            merged[path] = np.asarray(leaf)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    what = "generate only" if generate_only else f"method={method} order={order} per_tensor={per_tensor}"
    print(f"{what}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU, peak RSS {peak_rss_mib():.0f} MiB, "
          f"kept {len(merged)} merged leaves")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--layout", choices=("per-layer", "stacked"), default="per-layer")
    parser.add_argument("--order", choices=("ties", "released"), default="ties")
    parser.add_argument("--method", choices=("ties", "linear"), default="ties")
    parser.add_argument("--per-tensor", action="store_true", help="trim per released tensor, not per leaf")
    parser.add_argument("--generate-only", action="store_true", help="time the leaf generation alone")
    args = parser.parse_args()
    run(args.models, args.layout, args.order, args.method, args.per_tensor, args.generate_only)


if __name__ == "__main__":
    main()
