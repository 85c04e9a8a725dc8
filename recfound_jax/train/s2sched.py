"""S2Sched: the step-wise convergence-oriented sample scheduler (paper §4.3, docs/method.md "S2Sched").

One scheduler per branch (embedding tasks, generative tasks). At every update step the probe losses of
the branch's tasks, divided by their losses before training, form one row of `history` [T, n]. From it:

    α_i(t)   least-squares slope of history[max(0, t-L+1) : t+1, i] over the row index (0 below 2 rows)
    inter_i  = -softmax_i(n · α_i(t) / Σ_j |α_j(t)|)                                   (eq. 3)
    intra_i  = softmax_i(-K' · α_i(t) / Σ_{last K' slopes s} |α_i(s)|),  K' = min(L, K) (eq. 4)
    β        = min(K · softmax_s(-τ · K · M(s) / D)[last], 1),                          (eq. 5)
               M(s) = max_i α_i(s), D = Σ_s max_i |α_i(s)|, over the K slopes since `start`
    ω_i      = softmax_i(-β · inter_i + (1 - β) · intra_i)                              (eq. 6)

A fraction whose denominator is 0 is 0, so a branch where nothing moves gets uniform ratios, never NaN.
Counts are floor(B · ω_i) plus the remainder by largest fraction, so they always sum to B.

The equations run as jitted functions pinned to the host CPU device, on fixed-capacity buffers with
masks and counts, so they compile once (the slope buffer of `S2Sched` doubles when full: a compile per
doubling, none when its capacity covers the run, which is the default).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from recfound_jax import config as config_lib
from recfound_jax import tasks as tasks_lib
from recfound_jax.data.batching import largest_remainder

_MIN_CAPACITY = 16


@functools.cache
def _cpu() -> jax.Device:
    """The host CPU device every S2Sched computation is pinned to."""
    return jax.local_devices(backend="cpu")[0]  # this process's own: another process's is not addressable


def _on_cpu() -> Any:
    """A context in which host (numpy) inputs land on the CPU device, and jitted calls run there.

    Cheaper per call than committing each input with jax.device_put (docs/benchmarks.md).
    """
    return jax.default_device(_cpu())


# ----------------------------------------------------------------------------- the equations (jax)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 wherever den == 0."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def _window_slope(rows: jax.Array, count: jax.Array) -> jax.Array:
    """Least-squares slope over the row index of the newest min(count, L) rows of rows [L, n].

    Rows are stored oldest first, the newest last. Returns [n]; 0 where fewer than 2 rows are valid.
    """
    window = rows.shape[0]
    valid_count = jnp.minimum(count, window).astype(jnp.float32)
    x = jnp.arange(window, dtype=jnp.float32)
    valid = x >= window - valid_count
    # Half-integers: exact in float32, like every dx below.
    x_mean = window - (valid_count + 1.0) / 2.0
    dx = jnp.where(valid, x - x_mean, 0.0)
    # Σ dx = 0, so any constant may be taken from y; the newest row makes a flat series exactly 0.
    dy = jnp.where(valid[:, None], rows - rows[-1], 0.0)
    num = jnp.sum(dx[:, None] * dy, axis=0)
    den = jnp.sum(dx * dx)
    return _safe_div(num, den)


def _ratios_from_parts(
    alpha: jax.Array,
    recent_abs_sum: jax.Array,
    recent_count: jax.Array,
    peaks: jax.Array,
    spreads: jax.Array,
    slope_mask: jax.Array,
    last_index: jax.Array,
    tau: jax.Array,
) -> jax.Array:
    """Equations 3-6 from the current slopes and the slope history.

    alpha [n]: α_i(t). recent_abs_sum [n]: Σ |α_i(s)| over the last K' slopes; recent_count: K'.
    peaks, spreads [C]: M(s) and max_i |α_i(s)| per slot; slope_mask [C]: the K valid slots;
    last_index: the slot of slope t. Returns ω [n].
    """
    n = alpha.shape[0]
    num_slopes = jnp.sum(slope_mask).astype(jnp.float32)
    inter = -jax.nn.softmax(n * _safe_div(alpha, jnp.sum(jnp.abs(alpha))))
    intra = jax.nn.softmax(_safe_div(-recent_count.astype(jnp.float32) * alpha, recent_abs_sum))
    spread_sum = jnp.sum(jnp.where(slope_mask, spreads, 0.0))
    logits = jnp.where(slope_mask, _safe_div(-tau * num_slopes * peaks, spread_sum), -jnp.inf)
    beta = jnp.minimum(num_slopes * jax.nn.softmax(logits)[last_index], 1.0)
    return jax.nn.softmax(-beta * inter + (1.0 - beta) * intra)


@jax.jit
def _scheduled_update(
    rows: jax.Array,
    num_rows: jax.Array,
    slopes: jax.Array,
    peaks: jax.Array,
    spreads: jax.Array,
    num_slopes: jax.Array,
    tau: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One scheduled update of the incremental state.

    rows [L, n]: the newest L history rows (newest last), num_rows of them real so far.
    slopes [L, n]: the newest L slopes (newest last); peaks, spreads [C]: M(s) and max_i |α_i(s)| of
    the num_slopes slopes so far, slot k for the k-th. Returns (slopes, peaks, spreads, ω) after the
    slope of the newest window is appended.
    """
    window, capacity = rows.shape[0], peaks.shape[0]
    alpha = _window_slope(rows, num_rows)
    slopes = jnp.concatenate([slopes[1:], alpha[None]])
    peaks = peaks.at[num_slopes].set(jnp.max(alpha))
    spreads = spreads.at[num_slopes].set(jnp.max(jnp.abs(alpha)))
    count = num_slopes + 1
    recent_count = jnp.minimum(count, window)
    recent = jnp.arange(window) >= window - recent_count
    omega = _ratios_from_parts(
        alpha=alpha,
        recent_abs_sum=jnp.sum(jnp.where(recent[:, None], jnp.abs(slopes), 0.0), axis=0),
        recent_count=recent_count,
        peaks=peaks,
        spreads=spreads,
        slope_mask=jnp.arange(capacity) < count,
        last_index=num_slopes,
        tau=tau,
    )
    return slopes, peaks, spreads, omega


# ----------------------------------------------------------------------------- public functions


def _capacity_for(count: int) -> int:
    """The power of two (at least _MIN_CAPACITY) that holds `count` entries."""
    return max(_MIN_CAPACITY, 1 << max(count - 1, 0).bit_length())


def _normalised(weights: np.ndarray) -> np.ndarray:
    """Weights divided by their sum."""
    return weights / weights.sum()


def counts_from_ratios(ratios: Any, batch_size: int) -> np.ndarray:
    """Per-task counts: floor(B · ω_i), plus the remainder one each by largest fraction.

    Ties go to the lower task index. The counts sum to batch_size exactly. Returns int64 [n].
    """
    weights = np.asarray(ratios, dtype=np.float64)
    if weights.ndim != 1 or weights.size < 1:
        raise ValueError(f"ratios must be a non-empty vector, got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"ratios must be finite, non-negative and not all zero, got {weights}")
    if int(batch_size) != batch_size or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative integer, got {batch_size}")
    return largest_remainder(int(batch_size) * _normalised(weights), int(batch_size))


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class S2SchedConfig:
    """S2Sched settings: the ``s2sched`` block of a run config (its keys, defaults and checks are in
    recfound_jax.config), plus the released code's size prior, which is not a run key.

    enabled: False gives uniform ratios (the ablation). window: L. tau: τ. warmup_ratio: ζ, the share
    of the steps with uniform ratios; warmup_steps, when >= 0, a fixed step count instead (released: 32).
    probe_size: probe samples per task (read by the trainer). update_every: steps between probes.
    floor: when any weight is below 1/(5n), every w <- 0.8 w + 1/(5n) (released).
    size_prior: task (name, short name or id) -> weight, multiplied in and renormalised (released).
    """

    enabled: bool
    window: int
    tau: float
    warmup_ratio: float
    warmup_steps: int
    probe_size: int
    update_every: int
    floor: bool
    size_prior: Mapping[str | int, float] | None = None

    @classmethod
    def from_config(cls, s: ConfigDict, *, size_prior: Mapping[str | int, float] | None = None) -> S2SchedConfig:
        """The S2SchedConfig of a run config's checked ``s2sched`` block."""
        return cls(enabled=s.enabled, window=s.window, tau=s.tau, warmup_ratio=s.warmup_ratio,
                   warmup_steps=s.warmup_steps, probe_size=s.probe_size, update_every=s.update_every,
                   floor=s.floor, size_prior=size_prior)

    @classmethod
    def default(cls, *, size_prior: Mapping[str | int, float] | None = None, **overrides) -> S2SchedConfig:
        """The schema's ``s2sched`` defaults with ``overrides`` (run-config keys), checked as a run config's."""
        return cls.from_config(config_lib.section_defaults("s2sched", **overrides), size_prior=size_prior)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ratio_of(ratio: float, total: int) -> int:
    """floor(ratio · total), immune to binary rounding (0.29 · 100 is 28.999999999999996)."""
    return math.floor(round(ratio * total, 9))


def _prior_vector(size_prior: Mapping[str | int, float], task_ids: Sequence[int],
                  table: tasks_lib.TaskTable) -> np.ndarray:
    """The size prior as a vector over the branch's tasks; keys of other branches are ignored."""
    by_id = {table.get(key).id: float(weight) for key, weight in size_prior.items()}
    missing = [table.get(task_id).name for task_id in task_ids if task_id not in by_id]
    if missing:
        raise ValueError(f"s2sched.size_prior has no weight for {', '.join(missing)}")
    prior = np.array([by_id[task_id] for task_id in task_ids], dtype=np.float64)
    if not np.all(np.isfinite(prior)) or np.any(prior <= 0):
        raise ValueError(f"s2sched.size_prior weights must be finite and > 0, got {prior}")
    return prior


# ----------------------------------------------------------------------------- the scheduler


class S2Sched:
    """The scheduler of one branch: probe losses in, per-task ratios and batch counts out.

    Usage per training step: `if sched.should_observe(step): sched.observe(step, probe_losses(model))`,
    then `sched.counts(step)`. Call `set_normaliser(losses)` once before training with the probe
    losses of the initial model.

    ``table``: the run's task table (`config.task_table`; default: the released 13), which ``task_ids`` and
    the size prior's keys name.
    """

    def __init__(self, config: S2SchedConfig, task_ids: Sequence[int], batch_size: int, total_steps: int, *,
                 table: tasks_lib.TaskTable | None = None):
        self.config = config
        self.table = table or tasks_lib.RELEASED
        self.task_ids = tuple(int(task_id) for task_id in task_ids)
        if not self.task_ids or len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"task_ids must be non-empty and distinct, got {task_ids}")
        for task_id in self.task_ids:
            self.table.get(task_id)
        if not _is_int(batch_size) or batch_size < 0:
            raise ValueError(f"batch_size must be an integer >= 0, got {batch_size}")
        if not _is_int(total_steps) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps}")
        self.batch_size = int(batch_size)
        self.total_steps = int(total_steps)
        cfg = self.config
        self.warmup_steps = (
            int(cfg.warmup_steps) if cfg.warmup_steps >= 0 else _ratio_of(cfg.warmup_ratio, total_steps)
        )
        self._prior = None if cfg.size_prior is None else _prior_vector(cfg.size_prior, self.task_ids, self.table)
        scheduled = math.ceil(max(total_steps - self.warmup_steps, 0) / cfg.update_every) + 1
        self._reset(_capacity_for(scheduled))

    @property
    def num_tasks(self) -> int:
        """n, the number of tasks in this branch."""
        return len(self.task_ids)

    def _reset(self, capacity: int) -> None:
        """Empty state with a slope-history capacity."""
        n, window = self.num_tasks, self.config.window
        self._normaliser: np.ndarray | None = None
        self._rows = np.zeros((window, n), np.float32)
        self._num_rows = 0
        self._slopes = np.zeros((window, n), np.float32)
        self._peaks = np.zeros(capacity, np.float32)
        self._spreads = np.zeros(capacity, np.float32)
        self._num_slopes = 0
        self._last_step = -1
        self._omega = np.full(n, 1.0 / n)

    def set_normaliser(self, losses: Sequence[float]) -> None:
        """Each task's probe loss before training: the divisor of all later probe losses."""
        self._normaliser = self._checked_losses(losses).astype(np.float64)

    def _checked_losses(self, losses: Sequence[float]) -> np.ndarray:
        array = np.asarray(losses, dtype=np.float64)
        if array.shape != (self.num_tasks,):
            raise ValueError(f"expected {self.num_tasks} probe losses (tasks {self.task_ids}), got {array.shape}")
        bad = [self.table.get(t).name for t, value in zip(self.task_ids, array) if not np.isfinite(value)]
        if bad:
            raise ValueError(f"non-finite probe loss for {', '.join(bad)}")
        return array

    def should_observe(self, step: int) -> bool:
        """Whether probe losses are wanted at this step (every update_every steps; never when disabled)."""
        return self.config.enabled and step % self.config.update_every == 0

    def observe(self, step: int, probe_losses: Sequence[float]) -> None:
        """Record the probe losses of this step; past warmup, update the ratios."""
        if self._normaliser is None:
            raise RuntimeError("S2Sched.set_normaliser must be called before observe")
        if step <= self._last_step:
            raise ValueError(f"steps must increase: got {step} after {self._last_step}")
        losses = self._checked_losses(probe_losses)
        nonzero = self._normaliser != 0
        row = np.where(nonzero, losses / np.where(nonzero, self._normaliser, 1.0), 0.0)
        self._rows = np.concatenate([self._rows[1:], row.astype(np.float32)[None]])
        self._num_rows += 1
        self._last_step = int(step)
        if self.config.enabled and step >= self.warmup_steps:
            self._update()

    def _update(self) -> None:
        """Append the slope of the newest window and recompute ω (on the CPU device)."""
        if self._num_slopes == self._peaks.shape[0]:
            self._peaks = np.concatenate([self._peaks, np.zeros_like(self._peaks)])
            self._spreads = np.concatenate([self._spreads, np.zeros_like(self._spreads)])
        with _on_cpu():
            outputs = _scheduled_update(
                self._rows, np.int32(self._num_rows), self._slopes, self._peaks, self._spreads,
                np.int32(self._num_slopes), np.float32(self.config.tau),
            )
        slopes, peaks, spreads, omega = jax.device_get(outputs)
        self._slopes, self._peaks, self._spreads = slopes, peaks, spreads
        self._omega = np.asarray(omega, dtype=np.float64)
        self._num_slopes += 1

    def ratios(self, step: int) -> np.ndarray:
        """ω [n] (float64, sums to 1) for this step: uniform when disabled or in warmup."""
        n = self.num_tasks
        if not self.config.enabled or step < self.warmup_steps or self._num_slopes == 0:
            return np.full(n, 1.0 / n)
        weights = _normalised(self._omega)
        if self._prior is not None:
            weights = _normalised(weights * self._prior)
        if self.config.floor and np.any(weights < 1.0 / (5 * n)):
            weights = 0.8 * weights + 1.0 / (5 * n)
        return weights

    def counts(self, step: int) -> np.ndarray:
        """Samples per task at this step (int64 [n], summing to batch_size)."""
        return counts_from_ratios(self.ratios(step), self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Everything a restored scheduler needs to continue identically, as JSON-able values."""
        return {
            "task_ids": list(self.task_ids),
            "window": self.config.window,
            "normaliser": None if self._normaliser is None else self._normaliser.tolist(),
            "rows": self._rows.tolist(),
            "num_rows": self._num_rows,
            "slopes": self._slopes.tolist(),
            "capacity": int(self._peaks.shape[0]),
            "peaks": self._peaks[: self._num_slopes].tolist(),
            "spreads": self._spreads[: self._num_slopes].tolist(),
            "num_slopes": self._num_slopes,
            "last_step": self._last_step,
            "omega": self._omega.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()` output (also after a JSON round trip)."""
        if list(state["task_ids"]) != list(self.task_ids):
            raise ValueError(f"state is for tasks {state['task_ids']}, this scheduler has {list(self.task_ids)}")
        if int(state["window"]) != self.config.window:
            raise ValueError(f"state has window {state['window']}, config has {self.config.window}")
        n, window, num_slopes = self.num_tasks, self.config.window, int(state["num_slopes"])
        self._reset(int(state["capacity"]))
        if num_slopes > self._peaks.shape[0]:
            raise ValueError(f"state has {num_slopes} slopes for capacity {self._peaks.shape[0]}")
        if state["normaliser"] is not None:
            self._normaliser = np.asarray(state["normaliser"], np.float64).reshape(n)
        self._rows = np.asarray(state["rows"], np.float32).reshape(window, n)
        self._num_rows = int(state["num_rows"])
        self._slopes = np.asarray(state["slopes"], np.float32).reshape(window, n)
        self._peaks[:num_slopes] = np.asarray(state["peaks"], np.float32).reshape(num_slopes)
        self._spreads[:num_slopes] = np.asarray(state["spreads"], np.float32).reshape(num_slopes)
        self._num_slopes = num_slopes
        self._last_step = int(state["last_step"])
        self._omega = np.asarray(state["omega"], np.float64).reshape(n)
