"""S2Sched's equations over a whole history at once (jax): the oracle the incremental scheduler is checked against.

`window_slopes` and `sample_ratios` recompute every slope of a history [T, n] from scratch, with the
scheduler's own jitted pieces (`s2sched._window_slope`, `s2sched._ratios_from_parts`) on padded buffers.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recfound_jax.train import s2sched


@functools.partial(jax.jit, static_argnames=("window",))
def _all_slopes(history: jax.Array, *, window: int) -> jax.Array:
    """α(s) for every row s of a padded history [C, n] (rows past the real count are meaningless)."""
    capacity = history.shape[0]
    rows_index = jnp.arange(capacity)
    window_index = rows_index[:, None] + jnp.arange(window)[None, :] - (window - 1)
    windows = history[jnp.clip(window_index, 0, capacity - 1)]
    return jax.vmap(s2sched._window_slope)(windows, rows_index + 1)


@functools.partial(jax.jit, static_argnames=("window",))
def ratios_core(history: jax.Array, num_rows: jax.Array, start: jax.Array, tau: jax.Array, *,
                window: int) -> jax.Array:
    """ω for row num_rows - 1 of a padded history [C, n], slopes kept from row `start` (< num_rows)."""
    slopes = _all_slopes(history, window=window)
    rows_index = jnp.arange(history.shape[0])
    slope_mask = (rows_index >= start) & (rows_index < num_rows)
    recent_mask = slope_mask & (rows_index >= num_rows - window)
    last = num_rows - 1
    return s2sched._ratios_from_parts(
        alpha=slopes[last],
        recent_abs_sum=jnp.sum(jnp.where(recent_mask[:, None], jnp.abs(slopes), 0.0), axis=0),
        recent_count=jnp.sum(recent_mask),
        peaks=jnp.max(slopes, axis=1),
        spreads=jnp.max(jnp.abs(slopes), axis=1),
        slope_mask=slope_mask,
        last_index=last,
        tau=tau,
    )


def _as_history(history: Any) -> np.ndarray:
    """A history as float32 numpy [T, n], checked."""
    array = np.asarray(history, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"history must be [T, n] with n >= 1, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("history holds non-finite values")
    return array


def _padded(history: np.ndarray) -> np.ndarray:
    """The history zero-padded to a power-of-two number of rows, so growing T rarely recompiles."""
    padded = np.zeros((s2sched._capacity_for(history.shape[0]), history.shape[1]), np.float32)
    padded[: history.shape[0]] = history
    return padded


def window_slopes(history: Any, *, window: int) -> np.ndarray:
    """α(s) for every row s of history [T, n]: the least-squares slope over the last `window` rows.

    Returns float32 [T, n]; a row with fewer than 2 rows of history (row 0) has slope 0.
    """
    array = _as_history(history)
    with s2sched._on_cpu():
        slopes = _all_slopes(_padded(array), window=window)
    return np.asarray(slopes)[: array.shape[0]]


def sample_ratios(history: Any, *, start: int, window: int, tau: float) -> np.ndarray:
    """S2Sched ratios ω [n] for the last row of history [T, n] (equations 3-6).

    Slopes are kept from row `start` (the first scheduled row) on; while start > T - 1 (warmup)
    the ratios are uniform. Returns float64 [n] summing to 1.
    """
    array = _as_history(history)
    num_rows, n = array.shape
    if start > num_rows - 1:
        return np.full(n, 1.0 / n)
    with s2sched._on_cpu():
        omega = ratios_core(_padded(array), np.int32(num_rows), np.int32(start), np.float32(tau), window=window)
    omega = np.asarray(omega, dtype=np.float64)
    return omega / omega.sum()
