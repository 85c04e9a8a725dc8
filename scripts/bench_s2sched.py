"""Host time of one S2Sched update (observe + counts, without the probe forward), 3 and 10 tasks.

    JAX_PLATFORMS=cpu python scripts/bench_s2sched.py [--calls 1000]

Each timed call is past warmup, so it runs the jitted equations on the CPU device; the jit is
compiled and warmed before timing. Goal: a median under 1 ms.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from recfound_jax.tasks import EMBEDDING_TASKS, GENERATIVE_TASKS
from recfound_jax.train.s2sched import S2Sched, S2SchedConfig

_GOAL_MS = 1.0
_WARM_CALLS = 50


def _time_updates(task_ids: list[int], calls: int, batch_size: int) -> np.ndarray:
    """Seconds per observe + counts over `calls` scheduled steps, the jit already compiled."""
    n = len(task_ids)
    total = _WARM_CALLS + calls
    sched = S2Sched(S2SchedConfig.default(warmup_steps=2), task_ids, batch_size=batch_size, total_steps=total)
    rng = np.random.default_rng(0)
    losses = 2.0 + np.cumsum(rng.normal(-0.002, 0.01, size=(total, n)), axis=0)
    sched.set_normaliser(losses[0])
    for step in range(_WARM_CALLS):
        sched.observe(step, losses[step])
        sched.counts(step)
    times = np.empty(calls)
    for i, step in enumerate(range(_WARM_CALLS, total)):
        begin = time.perf_counter()
        sched.observe(step, losses[step])
        counts = sched.counts(step)
        times[i] = time.perf_counter() - begin
        assert counts.sum() == batch_size
    return times


def main() -> None:
    """Print a table of median and 90th-percentile update times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    branches = [
        ("embedding", [t.id for t in EMBEDDING_TASKS], 2048),
        ("generative", [t.id for t in GENERATIVE_TASKS], 1024),
    ]
    print(f"{'branch':<11} {'tasks':>5} {'calls':>6} {'median ms':>10} {'p90 ms':>8} {'goal ms':>8}  ok")
    for name, task_ids, batch_size in branches:
        times_ms = 1e3 * _time_updates(task_ids, args.calls, batch_size)
        median, p90 = np.median(times_ms), np.percentile(times_ms, 90)
        ok = "yes" if median < _GOAL_MS else "NO"
        print(f"{name:<11} {len(task_ids):>5} {args.calls:>6} {median:>10.3f} {p90:>8.3f} {_GOAL_MS:>8.1f}  {ok}")


if __name__ == "__main__":
    main()
