"""Benchmark the data pipeline on synthetic rows of realistic length.

Measures (1) the one-time cost: reading + validating the JSONL, formatting + tokenizing, writing and
reading the tokenized cache, extrapolated to the released training split (366,940 rows, Table 1 of
the paper), on one core and on two; (2) batch assembly from the tokenized tables on one core, in
samples per second (embedding + generative rows per step).

The rows mimic the released ones: the task mix of Table 1, item texts of short product titles and
descriptions, user histories of 10-30 titles, Alpaca-style generative prompts, answers from one
option letter to a paragraph. Goals: assembly >= 5,000 samples/s on one core; the one-time
formatting + tokenization of the released size < 5 minutes on 2 cores.

    python scripts/bench_data.py [--rows 20000] [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from recfound_jax.data import batching, formatting, records
from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS, get_task
from recfound_jax.tokenizer import Tokenizer

RELEASED_TRAIN_ROWS = 366_940
TRAIN_SIZES = {  # Table 1, training split
    "U2I": 86_000, "Q2I": 40_000, "I2I": 83_680, "QR": 3_260, "AVE": 20_000, "AG": 20_000, "SR": 20_000,
    "SA": 20_000, "UP": 20_000, "AP": 15_000, "PRP": 20_000, "PM": 4_000, "IP": 15_000,
}
BRANDS = ["Nike", "Sony", "Anker", "Logitech", "KitchenAid", "Lego", "Philips", "Samsung", "Adidas", "Bosch"]
NOUNS = ["running shoes", "wireless earbuds", "USB-C cable", "coffee grinder", "yoga mat", "desk lamp",
         "phone case", "backpack", "water bottle", "mechanical keyboard", "face serum", "dog leash",
         "novel", "board game", "frying pan", "hiking socks", "smart watch", "throw pillow"]
ADJECTIVES = ["lightweight", "durable", "waterproof", "premium", "compact", "ergonomic", "organic", "stainless",
              "adjustable", "portable", "classic", "rechargeable"]
FILLER = ("great quality and fits well, arrived quickly, the color is slightly different from the picture, "
          "works as described, would buy again, battery lasts all day, easy to clean, comfortable for long use").split()


def _title(rng: random.Random) -> str:
    return (f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}, "
            f"{rng.randint(1, 12)} pack, {rng.choice(['black', 'white', 'blue', 'red'])}")


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(lo, hi)))


def _item(rng: random.Random) -> str:
    return f"Title: {_title(rng)}. Description: {_words(rng, 30, 90)}"


def _history(rng: random.Random) -> str:
    return "The user bought, in order: " + "; ".join(_title(rng) for _ in range(rng.randint(10, 30)))


def _embedding_row(rng: random.Random, short: str, item) -> dict:
    query = {"U2I": _history, "Q2I": lambda r: f"{r.choice(ADJECTIVES)} {r.choice(NOUNS)} for {_words(r, 2, 6)}",
             "I2I": item}[short](rng)
    instr = {"U2I": "Given the user's purchase history, represent the user for retrieving items they will buy:",
             "Q2I": "Given a shopping query, represent it for retrieving relevant products:",
             "I2I": "Represent the item for retrieving similar items:"}[short]
    return {"query": [instr, query], "pos": [["Represent the item:", item(rng)] for _ in range(rng.randint(1, 2))],
            "neg": [["Represent the item:", item(rng)] for _ in range(rng.randint(0, 2))], "task": get_task(short).name}


def _answer(rng: random.Random, short: str) -> str:
    if short in ("SR", "PRP", "SA"):
        return rng.choice("ABCDE")
    if short in ("PM", "AP"):
        return rng.choice(["yes", "no"])
    if short == "AVE":
        return json.dumps([{"attribute": "brand", "value": rng.choice(BRANDS), "source": "title"},
                           {"attribute": "color", "value": "black", "source": "description"}])
    return _words(rng, {"QR": (5, 15), "AG": (20, 60), "UP": (60, 160), "IP": (60, 160)}[short][0],
                  {"QR": (5, 15), "AG": (20, 60), "UP": (60, 160), "IP": (60, 160)}[short][1])


def _generative_row(rng: random.Random, short: str) -> dict:
    body = _history(rng) if short in ("SR", "UP") else _item(rng) + " " + _item(rng)
    options = "\n".join(f"{c}. {_title(rng)}" for c in "ABCDE") if short in ("SR", "PRP", "SA") else ""
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              f"Write a response that appropriately completes the request.\n\nInstruction: Solve the {short} task "
              f"for the given input.\n\nInput: {body}\n\nOptions: {options}\n\nResponse:")
    return {"text": [prompt, _answer(rng, short)], "task": get_task(short).name}


def make_rows(n: int, seed: int = 0, catalog: int = 0) -> list[dict]:
    """n synthetic rows with the task mix of the released training split; passages and I2I queries
    come from a catalog of ``catalog`` items, or are all distinct when it is 0."""
    rng = random.Random(seed)
    items = [_item(rng) for _ in range(catalog)]
    item = (lambda r: r.choice(items)) if catalog else _item
    shorts = list(TRAIN_SIZES)
    weights = [TRAIN_SIZES[s] for s in shorts]
    rows = []
    for short in rng.choices(shorts, weights, k=n):
        kind = get_task(short).kind
        rows.append(_embedding_row(rng, short, item) if kind == "embedding" else _generative_row(rng, short))
    return rows


def _pin(cores: int) -> None:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(available[:cores]))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cpu_timed(fn):
    """(result, wall seconds, CPU seconds of this process's threads)."""
    cpu = time.process_time()
    out, wall = _timed(fn)
    return out, wall, time.process_time() - cpu


def bench_one_time(data_dir: Path, tok: Tokenizer, n_rows: int, cores: int, lengths: dict) -> dict:
    _pin(cores)
    (rows, report), t_read, c_read = _cpu_timed(lambda: records.load_split(data_dir, "train"))
    table, t_tok, c_tok = _cpu_timed(lambda: formatting.tokenize_records(rows, tok, report=report, **lengths))
    with tempfile.TemporaryDirectory() as tmp:
        _, t_save = _timed(lambda: table.save(Path(tmp) / "c.npz"))
        _, t_load = _timed(lambda: formatting.TokenizedSplit.load(Path(tmp) / "c.npz"))
    scale = RELEASED_TRAIN_ROWS / n_rows
    return {"cores": cores, "read": t_read, "tokenize": t_tok, "save": t_save, "load": t_load,
            "cpu": c_read + c_tok, "released_cpu_s": (c_read + c_tok) * scale,
            "rows/s": n_rows / (t_read + t_tok), "released_s": (t_read + t_tok + t_save) * scale,
            "table": table}


def bench_assembly(table: formatting.TokenizedSplit, steps: int, config: batching.BatchConfig) -> float:
    _pin(1)
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
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--catalog", type=int, default=0,
                        help="draw passages from this many distinct items (0: every passage distinct)")
    args = parser.parse_args()
    lengths = {"query_max_len": 256, "passage_max_len": 2048, "generative_max_len": 2048}
    tok = Tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "train").mkdir()
        with open(data_dir / "train" / "rows.jsonl", "w") as f:
            for row in make_rows(args.rows, catalog=args.catalog):
                f.write(json.dumps(row) + "\n")
        size_mb = (data_dir / "train" / "rows.jsonl").stat().st_size / 1e6
        results = [bench_one_time(data_dir, tok, args.rows, cores, lengths) for cores in (1, 2)]
    table = results[-1]["table"]
    e, g = table.embedding, table.generative
    print(f"synthetic rows: {args.rows}, catalog {args.catalog or 'none'} ({size_mb:.1f} MB of JSONL); tokens: "
          f"{len(e.seqs.data) / len(e.seqs):.0f} per embedding seq ({len(e.seqs)} seqs), "
          f"{len(g.seqs.data) / max(len(g), 1):.0f} per generative row ({len(g)} rows)")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times include contention)")
    print(f"\n{'one-time':<10}{'read+validate s':>17}{'tokenize s':>12}{'save s':>8}{'load s':>8}"
          f"{'rows/s':>10}{'cpu s':>8}{'366,940 rows: wall min':>24}{'cpu min':>9}")
    for r in results:
        print(f"{r['cores']} core(s){'':<2}{r['read']:>17.2f}{r['tokenize']:>12.2f}{r['save']:>8.2f}{r['load']:>8.2f}"
              f"{r['rows/s']:>10.0f}{r['cpu']:>8.2f}{r['released_s'] / 60:>24.2f}{r['released_cpu_s'] / 60:>9.2f}")
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
