"""Benchmark the data pipeline on the synthetic dataset at the released training split's size.

Measures (1) the one-time tokenization of 366,940 rows (the released train split, Table 1 of the paper, in
its task mix) drawn by the synthetic dataset's writers (recfound_jax/demo/synthetic.py; ``--distinct``
rows a task, repeated up to the task's share), by the in-process tokenizer (`formatting.tokenize_records`,
the code before ``datasets``) and by `hf_tokenize` (``datasets.Dataset.map``) at num_proc 1 and 2, in the
same run, with the arrays checked equal, then the same call again reading ``datasets``' cache; (2) batch
assembly from the tokenized tables on one core, in samples per second.

Goals: the map path no slower than the in-process one at num_proc=1, and about linear in processes.

    python scripts/bench_data.py [--rows 366940] [--distinct 5000] [--steps 50]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from recfound_jax.data import batching, formatting, hf_tokenize, records
from recfound_jax.demo import synthetic
from recfound_jax.demo import synthetic_world as sw
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS, TASKS
from recfound_jax.tokenizer import Tokenizer

RELEASED_TRAIN_ROWS = 366_940
TRAIN_SIZES = {  # Table 1, training split
    "U2I": 86_000, "Q2I": 40_000, "I2I": 83_680, "QR": 3_260, "AVE": 20_000, "AG": 20_000, "SR": 20_000,
    "SA": 20_000, "UP": 20_000, "AP": 15_000, "PRP": 20_000, "PM": 4_000, "IP": 15_000,
}


def task_rows(n_rows: int) -> dict[str, int]:
    """Rows of each task (short name) in ``n_rows`` with the released split's mix (largest remainders)."""
    counts = _largest_remainder(np.array([TRAIN_SIZES[t.short] for t in TASKS], float), n_rows)
    return {t.short: int(n) for t, n in zip(TASKS, counts)}


def write_synthetic(out: Path, n_rows: int, distinct: int, seed: int = 0) -> Path:
    """``out/train/{task}.jsonl``: each task's share of ``n_rows``, ``distinct`` rows from the synthetic
    writers (a scale-8 world) repeated in order up to it."""
    world = sw.build_world(8, seed)
    (out / "train").mkdir(parents=True)
    for task in TASKS:
        n = task_rows(n_rows)[task.short]
        drawn = synthetic.WRITERS[task.short](world, "train", min(n, distinct),
                                              np.random.default_rng([seed, 300, task.id]))
        rows = [drawn[i % len(drawn)] for i in range(n)]
        synthetic._write_jsonl(out / "train" / f"{task.name}.jsonl", rows)
    return out


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cpu_seconds() -> float:
    """CPU seconds of this process's threads and of its finished children (the map's workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _cpu_timed(fn):
    """(result, wall seconds, CPU seconds)."""
    cpu = _cpu_seconds()
    out, wall = _timed(fn)
    return out, wall, _cpu_seconds() - cpu


def _same(a: formatting.TokenizedSplit, b: formatting.TokenizedSplit) -> bool:
    def arrays(split: formatting.TokenizedSplit) -> list[np.ndarray]:
        out = []
        for table in ("embedding", "generative"):
            for value in vars(getattr(split, table)).values():
                out += [value.data, value.offsets] if isinstance(value, formatting.Ragged) else [value]
        return out

    pairs = zip(arrays(a), arrays(b))
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in pairs) and a.stats == b.stats


def bench_tokenize(rows: list, tok: Tokenizer, lengths: dict,
                   cache_root: Path) -> tuple[list, formatting.TokenizedSplit]:
    """(name, seconds, CPU seconds) of each way, and the in-process tables."""
    reference, wall, cpu = _cpu_timed(lambda: formatting.tokenize_records(rows, tok, **lengths))
    results = [("in-process (before)", wall, cpu)]
    for num_proc in (1, 2):
        cache = cache_root / f"num_proc{num_proc}"
        table, wall, cpu = _cpu_timed(lambda: hf_tokenize.tokenize_records(rows, tok, cache_dir=cache,
                                                                           num_proc=num_proc, **lengths))
        if not _same(reference, table):
            raise AssertionError(f"num_proc={num_proc}: the map path's arrays differ from the in-process ones")
        results.append((f"datasets.map, num_proc={num_proc}", wall, cpu))
    table, wall, cpu = _cpu_timed(lambda: hf_tokenize.tokenize_records(rows, tok, cache_dir=cache_root / "num_proc2",
                                                                       num_proc=2, **lengths))
    results.append(("datasets.map, cache read", wall, cpu))
    return results, reference


def bench_assembly(table: formatting.TokenizedSplit, steps: int, config: batching.BatchConfig) -> float:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:1]))
    batcher = batching.Batcher(table, config)
    emb_sizes = np.array([TRAIN_SIZES[t.short] for t in EMBEDDING_TASKS], float)
    gen_sizes = np.array([TRAIN_SIZES[t.short] for t in GENERATIVE_TASKS], float)
    emb_counts = _largest_remainder(emb_sizes, config.embedding_batch_size)
    gen_counts = _largest_remainder(gen_sizes, config.generative_batch_size)
    batcher.next_batches(emb_counts, gen_counts)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        batcher.next_batches(emb_counts, gen_counts)
    elapsed = time.perf_counter() - start
    local = (config.embedding_batch_size + config.generative_batch_size) // config.process_count
    return local * steps / elapsed


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    raw = weights / weights.sum() * total
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(counts - raw)[: total - counts.sum()]] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=RELEASED_TRAIN_ROWS)
    parser.add_argument("--distinct", type=int, default=5_000, help="distinct rows drawn per task, then repeated")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    lengths = {"query_max_len": 256, "passage_max_len": 2048, "generative_max_len": 2048}
    tok = Tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        (data_dir, t_write) = _timed(lambda: write_synthetic(Path(tmp) / "data", args.rows, args.distinct))
        size_mb = sum(p.stat().st_size for p in (data_dir / "train").iterdir()) / 1e6
        (rows, _), t_read = _timed(lambda: records.load_split(data_dir, "train"))
        results, table = bench_tokenize(rows, tok, lengths, Path(tmp) / "cache")
    e, g = table.embedding, table.generative
    print(f"synthetic rows: {len(rows)}, at most {args.distinct} distinct a task ({size_mb:.1f} MB of JSONL, written "
          f"in {t_write:.1f} s, read and validated in {t_read:.1f} s); tokens: {len(e.seqs.data) / len(e.seqs):.0f} "
          f"per embedding seq ({len(e.seqs)} seqs), {len(g.seqs.data) / max(len(g), 1):.0f} per generative row "
          f"({len(g)} rows); every way's arrays equal")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores "
          "(wall times include contention)")
    print("\n| tokenizing | rows | seconds | rows/s | CPU seconds |\n|---|---:|---:|---:|---:|")
    for name, wall, cpu in results:
        print(f"| {name} | {len(rows):,} | {wall:.1f} | {len(rows) / wall:,.0f} | {cpu:.1f} |")
    configs = {
        "1 proc, B=256+128, pad to max": batching.BatchConfig(256, 128, 256, 2048, 2048, seed=0),
        "1 proc, B=256+128, buckets": batching.BatchConfig(
            256, 128, 256, 2048, 2048, seed=0, query_buckets=(64, 128), passage_buckets=(256, 512, 1024),
            generative_buckets=(512, 1024)),
        "8 procs, B=2048+1024, share of 1": batching.BatchConfig(2048, 1024, 256, 2048, 2048, seed=0,
                                                                 process_count=8),
    }
    print(f"\n{'batch assembly (1 core)':<36}{'samples/s':>12}")
    for name, config in configs.items():
        print(f"{name:<36}{bench_assembly(table, args.steps, config):>12.0f}")


if __name__ == "__main__":
    main()
