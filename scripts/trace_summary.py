"""Device time per op kind and per op, from a `jax.profiler.trace(..., create_perfetto_trace=True)` folder.

    python scripts/trace_summary.py TRACE_DIR [--top 25]

Reads the newest perfetto_trace.json.gz under TRACE_DIR (or TRACE_DIR itself when it is such a file) and
sums the durations of the device's events (GPU kernels and copies; on CPU, the XLA thunks) by phase
(forward, or backward: an autodiff-transposed computation) and kind, and by HLO op. Kinds come from the
kernel names: gemm (cuBLAS/cuBLASLt/XLA dots), attention (cuDNN fused
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
    if Path(trace_dir).is_file():
        return Path(trace_dir)
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
    """The op kind of a kernel (or op) name."""
    for kind, pattern in KINDS:
        if pattern.search(label):
            return kind
    return "fusion"


def phase_of(event: dict) -> str:
    """"backward" for events of a transposed (autodiff) computation, else "forward"."""
    return "backward" if "transpose(" in event.get("args", {}).get("name", "") else "forward"


def summarize(trace_dir: Path) -> dict:
    """Device time (ms) per (phase, kind) and per op, largest first.

    {"total_ms", "kinds": [(phase, kind, ms, events)], "ops": [(op, phase, kind, ms, events, kernel)]}.
    Each event is classified by its own kernel name (one HLO op can launch a memset and a gemm); an op
    row takes the kind and name of its longest kernel; the copies XLA makes of a loop body when it
    unrolls it twice (".double_buffer_clone") count as the op they copy.
    """
    raw = json.load(gzip.open(trace_file(trace_dir)))
    events = device_events(raw["traceEvents"] if isinstance(raw, dict) else raw)
    kinds: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0.0, 0])
    ops: dict[tuple[str, str], dict] = {}
    for e in events:
        ms, phase, kind = e["dur"] / 1e3, phase_of(e), kind_of(e["name"])
        kinds[(phase, kind)][0] += ms
        kinds[(phase, kind)][1] += 1
        name = re.sub(r"\.double_buffer_clone(\.\d+)?$", "", e.get("args", {}).get("hlo_op") or e["name"])
        op = ops.setdefault((name, phase),
                            {"ms": 0.0, "events": 0, "kernels": collections.Counter()})
        op["ms"] += ms
        op["events"] += 1
        op["kernels"][e["name"]] += ms
    op_rows = []
    for (name, phase), op in ops.items():
        kernel = op["kernels"].most_common(1)[0][0]
        op_rows.append((name, phase, kind_of(kernel), op["ms"], op["events"], kernel))
    op_rows.sort(key=lambda row: -row[3])
    kind_rows = sorted(((p, k, ms, n) for (p, k), (ms, n) in kinds.items()), key=lambda r: -r[2])
    return {"total_ms": sum(r[2] for r in kind_rows), "kinds": kind_rows, "ops": op_rows}


def print_summary(summary: dict, top: int = 25) -> None:
    """Two markdown tables: device time per phase and kind, then the ``top`` ops."""
    total = summary["total_ms"] or 1.0
    print(f"device time {summary['total_ms']:.1f} ms (all streams)\n")
    print("| phase | kind | ms | % | events |\n|---|---|---:|---:|---:|")
    for phase, kind, ms, count in summary["kinds"]:
        print(f"| {phase} | {kind} | {ms:.1f} | {100 * ms / total:.1f} | {count} |")
    print("\n| op | phase | kind | ms | % | events | longest kernel |\n|---|---|---|---:|---:|---:|---|")
    for op, phase, kind, ms, count, kernel in summary["ops"][:top]:
        print(f"| {op[:48]} | {phase} | {kind} | {ms:.2f} | {100 * ms / total:.1f} | {count} | {kernel[:48]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print_summary(summarize(args.trace_dir), args.top)


if __name__ == "__main__":
    main()
