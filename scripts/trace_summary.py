"""Device time per op kind and per op, from a `jax.profiler.trace(..., create_perfetto_trace=True)` folder.

    python scripts/trace_summary.py TRACE_DIR [--top 25]

Reads the newest perfetto_trace.json.gz under TRACE_DIR and sums the durations of the device's events
(GPU kernels and copies; on CPU, the XLA thunks) by HLO op when the event names one, else by event name.
Kinds are read from the op and kernel names: gemm (cuBLAS/cuBLASLt/XLA dots), attention (cuDNN fused
attention), copy (copy, transpose, dynamic-slice, memcpy), scatter / dynamic-update-slice, reduce and
collective ops, and fusion (every other XLA fusion: elementwise and reductions).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

KINDS = (  # first match wins
    ("attention", re.compile(r"cudnn|fmha|flash|attention", re.I)),
    ("gemm", re.compile(r"gemm|cublas|xmma|\bdot|matmul|cutlass|sm\d+_", re.I)),
    ("scatter/update", re.compile(r"scatter|dynamic[-_]update[-_]slice", re.I)),
    ("copy", re.compile(r"copy|transpose|dynamic[-_]slice|memcpy|memset", re.I)),
    ("collective", re.compile(r"all-reduce|all-gather|reduce-scatter|nccl|collective", re.I)),
)


def trace_file(trace_dir: Path) -> Path:
    """The newest perfetto trace under ``trace_dir``."""
    found = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    return found[-1]


def device_events(events: list[dict]) -> list[dict]:
    """Complete events of the accelerator's processes (or of the host's XLA thunks when there is none)."""
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in names.items() if re.search(r"/device:(GPU|TPU)", name)}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if device_pids:
        return [e for e in complete if e["pid"] in device_pids]
    return [e for e in complete if "hlo_op" in e.get("args", {})]


def kind_of(label: str) -> str:
    """The op kind of an op or kernel name."""
    for kind, pattern in KINDS:
        if pattern.search(label):
            return kind
    return "fusion"


def summarize(trace_dir: Path) -> dict:
    """{"total_ms", "kinds": [(kind, ms, count)], "ops": [(op, kind, ms, count, kernel)]}, largest first."""
    raw = json.load(gzip.open(trace_file(trace_dir)))
    events = device_events(raw["traceEvents"] if isinstance(raw, dict) else raw)
    by_op: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, ""])
    for e in events:
        args = e.get("args", {})
        op = args.get("hlo_op") or e["name"]
        entry = by_op[op]
        entry[0] += e["dur"] / 1e3
        entry[1] += 1
        entry[2] = entry[2] or e["name"]
    kinds: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    ops = []
    for op, (ms, count, kernel) in by_op.items():
        kind = kind_of(f"{op} {kernel}")
        kinds[kind][0] += ms
        kinds[kind][1] += count
        ops.append((op, kind, ms, count, kernel))
    ops.sort(key=lambda row: -row[2])
    total = sum(ms for ms, _ in kinds.values())
    return {"total_ms": total, "kinds": sorted(((k, ms, n) for k, (ms, n) in kinds.items()), key=lambda r: -r[1]),
            "ops": ops}


def print_summary(summary: dict, top: int = 25) -> None:
    """Two markdown tables: device time per kind, then the ``top`` ops."""
    total = summary["total_ms"] or 1.0
    print(f"device time {summary['total_ms']:.1f} ms\n\n| kind | ms | % | events |\n|---|---:|---:|---:|")
    for kind, ms, count in summary["kinds"]:
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f} | {count} |")
    print("\n| op | kind | ms | % | events | kernel |\n|---|---|---:|---:|---:|---|")
    for op, kind, ms, count, kernel in summary["ops"][:top]:
        print(f"| {op[:60]} | {kind} | {ms:.2f} | {100 * ms / total:.1f} | {count} | {kernel[:50]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print_summary(summarize(args.trace_dir), args.top)


if __name__ == "__main__":
    main()
