"""S2Sched against a plain float64 numpy transcription of the paper's equations 3-6, hand cases and state."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recfound_jax import config as config_lib
from recfound_jax.train import s2sched
from recfound_jax.train.s2sched import S2Sched, S2SchedConfig, counts_from_ratios
from tests import s2sched_history
from tests.s2sched_history import sample_ratios, window_slopes

# ----------------------------------------------------------------------------- the numpy reference


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def _fraction(num: float, den: float) -> float:
    return 0.0 if den == 0 else num / den


def _ref_slope(y: np.ndarray) -> float:
    """Least-squares slope of y over 0..m-1 (mean-centred closed form), 0 below two points."""
    if len(y) < 2:
        return 0.0
    x = np.arange(len(y), dtype=np.float64)
    dx = x - x.mean()
    return float(np.sum(dx * (y - y.mean())) / np.sum(dx * dx))


def _ref_ratios(history: np.ndarray, start: int, window: int, tau: float) -> np.ndarray:
    """Equations 3-6 for the last row of history, every term spelled out, in float64."""
    history = np.asarray(history, np.float64)
    num_rows, n = history.shape
    if start > num_rows - 1:
        return np.full(n, 1.0 / n)

    def alpha(s: int) -> np.ndarray:
        lo = max(0, s - window + 1)
        return np.array([_ref_slope(history[lo : s + 1, i]) for i in range(n)])

    slopes = [alpha(s) for s in range(start, num_rows)]
    k = len(slopes)
    a = slopes[-1]
    abs_sum = np.sum(np.abs(a))
    inter = -_softmax(np.array([n * _fraction(a[i], abs_sum) for i in range(n)]))
    k_recent = min(window, k)
    recent = np.array(slopes[-k_recent:])
    intra = _softmax(np.array([_fraction(-k_recent * a[i], np.sum(np.abs(recent[:, i]))) for i in range(n)]))
    spread = sum(np.max(np.abs(slope)) for slope in slopes)
    logits = np.array([_fraction(-tau * k * np.max(slope), spread) for slope in slopes])
    beta = min(k * _softmax(logits)[-1], 1.0)
    return _softmax(-beta * inter + (1.0 - beta) * intra)


def _random_walk(rng: np.random.Generator, num_rows: int, n: int) -> np.ndarray:
    """Normalised-loss-like curves: start at 1, fall with noise at task-specific speeds."""
    drift = -rng.uniform(0.001, 0.02, size=n)
    steps = drift + rng.normal(0.0, 0.01, size=(num_rows, n))
    steps[0] = 0.0
    return (1.0 + np.cumsum(steps, axis=0)).astype(np.float32)


def _scheduler(n: int, **config) -> S2Sched:
    sched = S2Sched(S2SchedConfig.default(**config), task_ids=list(range(3, 3 + n)), batch_size=64, total_steps=200)
    sched.set_normaliser(np.ones(n))
    return sched


# ----------------------------------------------------------------------------- slopes


def test_window_slopes_match_polyfit():
    history = _random_walk(np.random.default_rng(0), 40, 4)
    window = 7
    got = window_slopes(history, window=window)
    for s in range(1, 40):
        rows = history[max(0, s - window + 1) : s + 1].astype(np.float64)
        want = np.polyfit(np.arange(len(rows)), rows, 1)[0]
        np.testing.assert_allclose(got[s], want, rtol=1e-4, atol=1e-6)


def test_slope_below_two_rows_is_zero():
    history = np.array([[3.0, -1.0, 7.5]], np.float32)
    np.testing.assert_array_equal(window_slopes(history, window=64), np.zeros((1, 3)))
    two = np.array([[1.0, 1.0], [0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(window_slopes(two, window=64)[0], [0.0, 0.0])
    np.testing.assert_allclose(window_slopes(two, window=64)[1], [-0.5, 1.0])


def test_flat_series_has_exactly_zero_slope():
    history = np.full((20, 2), 0.1, np.float32)
    np.testing.assert_array_equal(window_slopes(history, window=8), np.zeros((20, 2)))


# ----------------------------------------------------------------------------- ratios


@pytest.mark.parametrize(
    "num_rows,n,start,window,tau",
    [
        (12, 3, 2, 64, 10.0),  # K < L, windows not yet full
        (40, 3, 4, 8, 10.0),  # K > L: the intra term uses only the last L slopes
        (70, 10, 7, 16, 1.0),  # the released τ, a generative-sized branch
        (30, 5, 29, 6, 10.0),  # the first scheduled row: K = 1
        (25, 2, 0, 4, 3.0),  # slopes from row 0 on (α(0) = 0)
    ],
)
def test_sample_ratios_match_reference(num_rows, n, start, window, tau):
    history = _random_walk(np.random.default_rng(num_rows * 100 + n), num_rows, n)
    got = sample_ratios(history, start=start, window=window, tau=tau)
    np.testing.assert_allclose(got, _ref_ratios(history, start, window, tau), rtol=2e-4, atol=1e-6)
    assert abs(got.sum() - 1.0) < 1e-12


def test_all_zero_history_gives_uniform_finite_ratios():
    for history in (np.zeros((30, 4)), np.ones((30, 4)), np.zeros((1, 4))):
        got = sample_ratios(history, start=0, window=8, tau=10.0)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, np.full(4, 0.25), rtol=0, atol=1e-7)


def test_flat_task_gets_the_largest_share_when_others_fall():
    # Tasks 0 and 1 fall linearly (slopes -0.01, -0.02), task 2 stays at 1.0. By hand, with every slope
    # constant over s: inter = -softmax(3 · (-1/3, -2/3, 0)) = -softmax(-1, -2, 0); intra = softmax(1, 1, 0)
    # (the flat task's 0/0 is 0); M(s) = 0 for every s, so β = min(K · 1/K, 1) = 1 and
    # ω = softmax(softmax(-1, -2, 0)).
    steps = np.arange(50, dtype=np.float64)[:, None]
    history = np.concatenate([1 - 0.01 * steps, 1 - 0.02 * steps, np.ones_like(steps)], axis=1)
    e = np.exp([-1.0, -2.0, 0.0])
    want = np.exp(e / e.sum()) / np.exp(e / e.sum()).sum()
    got = sample_ratios(history, start=5, window=16, tau=10.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[2] > got[0] > got[1]


def test_before_start_ratios_are_uniform():
    history = _random_walk(np.random.default_rng(1), 10, 3)
    np.testing.assert_array_equal(sample_ratios(history, start=10, window=8, tau=10.0), np.full(3, 1 / 3))


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "ratios,batch,want",
    [
        ([0.5, 0.3, 0.2], 7, [4, 2, 1]),  # 3.5, 2.1, 1.4: one left, to the largest fraction .5
        ([1 / 3, 1 / 3, 1 / 3], 10, [4, 3, 3]),  # a three-way tie: the lowest index
        ([1 / 3, 1 / 3, 1 / 3], 11, [4, 4, 3]),
        ([0.1, 0.2, 0.7], 10, [1, 2, 7]),  # 0.7 · 10 is 7.000000000000001 or 6.99...: still 7
        ([0.2, 0.2, 0.6], 0, [0, 0, 0]),
        ([2.0, 1.0, 1.0], 8, [4, 2, 2]),  # unnormalised ratios are normalised
    ],
)
def test_counts_by_largest_remainder(ratios, batch, want):
    got = counts_from_ratios(ratios, batch)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == batch


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
    batch=st.integers(0, 4096),
)
def test_counts_sum_to_batch_and_stay_within_one(weights, batch):
    got = counts_from_ratios(weights, batch)
    exact = batch * np.asarray(weights) / np.sum(weights)
    assert got.sum() == batch
    assert np.all(got >= 0)
    assert np.all(np.abs(got - exact) < 1.0 + 1e-9)


def test_counts_reject_bad_ratios():
    for bad in ([0.0, 0.0], [np.nan, 1.0], [-0.1, 1.1]):
        with pytest.raises(ValueError):
            counts_from_ratios(bad, 8)


# ----------------------------------------------------------------------------- the scheduler


def test_scheduler_matches_sample_ratios_on_the_same_history():
    n, warmup, window = 4, 6, 8
    history = _random_walk(np.random.default_rng(2), 60, n)
    sched = _scheduler(n, warmup_steps=warmup, window=window, tau=10.0)
    for step in range(60):
        sched.observe(step, history[step])
        want = sample_ratios(history[: step + 1], start=warmup, window=window, tau=10.0)
        np.testing.assert_allclose(sched.ratios(step), want, rtol=1e-5, atol=1e-7)
        if step >= warmup:
            np.testing.assert_allclose(
                sched.ratios(step), _ref_ratios(history[: step + 1], warmup, window, 10.0), rtol=2e-4, atol=1e-6
            )


def test_scheduler_divides_by_the_normaliser():
    rng = np.random.default_rng(3)
    normaliser = np.array([2.0, 0.5, 4.0])
    normalised = _random_walk(rng, 30, 3)
    sched = S2Sched(S2SchedConfig.default(warmup_steps=3, window=8), [0, 1, 2], batch_size=32, total_steps=30)
    sched.set_normaliser(normaliser)
    for step in range(30):
        sched.observe(step, normalised[step].astype(np.float64) * normaliser)
    want = _ref_ratios(normalised, 3, 8, 10.0)
    np.testing.assert_allclose(sched.ratios(29), want, rtol=2e-4, atol=1e-6)


def test_warmup_ratios_are_uniform_and_rows_still_recorded():
    n = 3
    history = _random_walk(np.random.default_rng(4), 40, n)
    sched = S2Sched(S2SchedConfig.default(warmup_ratio=0.25, window=8), [0, 1, 2], batch_size=30, total_steps=40)
    sched.set_normaliser(np.ones(n))
    assert sched.warmup_steps == 10
    for step in range(40):
        sched.observe(step, history[step])
        if step < 10:
            np.testing.assert_array_equal(sched.ratios(step), np.full(n, 1 / n))
            np.testing.assert_array_equal(sched.counts(step), [10, 10, 10])
    # The warmup rows feed the first windows after it.
    np.testing.assert_allclose(sched.ratios(39), _ref_ratios(history, 10, 8, 10.0), rtol=2e-4, atol=1e-6)


def test_warmup_steps_overrides_the_ratio():
    sched = S2Sched(S2SchedConfig.default(warmup_ratio=0.1, warmup_steps=32), [0, 1, 2], batch_size=8, total_steps=1000)
    assert sched.warmup_steps == 32
    assert S2Sched(S2SchedConfig.default(), [0, 1, 2], batch_size=8, total_steps=1000).warmup_steps == 100
    assert S2Sched(S2SchedConfig.default(warmup_ratio=0.29), [0, 1], batch_size=8, total_steps=100).warmup_steps == 29


def test_disabled_gives_uniform_ratios():
    n = 10
    history = _random_walk(np.random.default_rng(5), 30, n)
    sched = _scheduler(n, enabled=False, warmup_steps=2)
    for step in range(30):
        assert not sched.should_observe(step)
        sched.observe(step, history[step])
        np.testing.assert_array_equal(sched.ratios(step), np.full(n, 1 / n))
        assert sched.counts(step).sum() == 64


def test_update_every_keeps_ratios_between_updates():
    n = 3
    history = _random_walk(np.random.default_rng(6), 40, n)
    sched = _scheduler(n, warmup_steps=4, window=8, update_every=4)
    rows = []
    for step in range(40):
        if sched.should_observe(step):
            sched.observe(step, history[step])
            rows.append(history[step])
        # Rows are the observed steps only; the first scheduled row is step 4, row 1.
        if step >= 4:
            want = _ref_ratios(np.array(rows), 1, 8, 10.0)
            np.testing.assert_allclose(sched.ratios(step), want, rtol=2e-4, atol=1e-6)


def test_size_prior_then_floor_by_hand():
    # A flat branch gives ω = (1/2, 1/2); the prior 19:1 makes it (0.95, 0.05); 0.05 < 1/(5·2) = 0.1,
    # so the floor maps w -> 0.8 w + 0.1: (0.86, 0.14).
    config = {"warmup_steps": 0, "size_prior": {"QR": 19.0, "Sequential_Recommendation": 1.0, "U2I": 5.0}}
    sched = S2Sched(S2SchedConfig.default(**config), [3, 4], batch_size=100, total_steps=10)
    sched.set_normaliser([1.0, 1.0])
    sched.observe(0, [1.0, 1.0])
    sched.observe(1, [1.0, 1.0])
    np.testing.assert_allclose(sched.ratios(1), [0.95, 0.05])
    np.testing.assert_array_equal(sched.counts(1), [95, 5])
    floored = S2Sched(S2SchedConfig.default(**config, floor=True), [3, 4], batch_size=100, total_steps=10)
    floored.set_normaliser([1.0, 1.0])
    floored.observe(0, [1.0, 1.0])
    np.testing.assert_allclose(floored.ratios(0), [0.86, 0.14])
    np.testing.assert_array_equal(floored.counts(0), [86, 14])


def test_size_prior_must_cover_the_branch():
    with pytest.raises(ValueError, match="Product_Relation_Prediction"):
        S2Sched(S2SchedConfig.default(size_prior={"QR": 1.0}), [3, 5], batch_size=8, total_steps=10)


def test_state_dict_round_trip_gives_identical_ratios():
    n = 5
    history = _random_walk(np.random.default_rng(7), 80, n) * 3.0
    config = S2SchedConfig.default(warmup_steps=5, window=8, floor=True)
    first = S2Sched(config, [3, 4, 5, 6, 7], batch_size=100, total_steps=20)  # the capacity grows on the way
    first.set_normaliser(history[0] * 1.5)
    for step in range(40):
        first.observe(step, history[step])
    restored = S2Sched(config, [3, 4, 5, 6, 7], batch_size=100, total_steps=20)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    np.testing.assert_array_equal(restored.ratios(39), first.ratios(39))
    for step in range(40, 80):
        first.observe(step, history[step])
        restored.observe(step, history[step])
        np.testing.assert_array_equal(restored.ratios(step), first.ratios(step))
        np.testing.assert_array_equal(restored.counts(step), first.counts(step))


def test_load_state_dict_rejects_another_branch():
    state = _scheduler(3).state_dict()
    with pytest.raises(ValueError, match="tasks"):
        S2Sched(S2SchedConfig.default(), [0, 1, 2], batch_size=8, total_steps=10).load_state_dict(state)


def test_observe_checks_its_inputs():
    sched = S2Sched(S2SchedConfig.default(), [0, 1], batch_size=8, total_steps=10)
    with pytest.raises(RuntimeError):
        sched.observe(0, [1.0, 1.0])
    sched.set_normaliser([1.0, 2.0])
    with pytest.raises(ValueError, match="Emb_query"):
        sched.observe(0, [1.0, np.nan])
    with pytest.raises(ValueError):
        sched.observe(0, [1.0, 1.0, 1.0])
    sched.observe(3, [1.0, 1.0])
    with pytest.raises(ValueError, match="increase"):
        sched.observe(3, [1.0, 1.0])


# ----------------------------------------------------------------------------- compilation and device


def test_scheduler_update_compiles_once_as_history_grows():
    # n = 7 and L = 5 make shapes no other test uses, so the cache grows by exactly this test's compiles.
    before = s2sched._scheduled_update._cache_size()
    sched = _scheduler(7, warmup_steps=2, window=5)
    history = _random_walk(np.random.default_rng(8), 150, 7)
    for step in range(150):
        sched.observe(step, history[step])
    assert s2sched._scheduled_update._cache_size() - before == 1


def test_scheduler_capacity_doubling_recompiles_once_per_doubling():
    before = s2sched._scheduled_update._cache_size()
    sched = S2Sched(S2SchedConfig.default(warmup_steps=0, window=3), list(range(3, 9)), batch_size=8, total_steps=10)
    sched.set_normaliser(np.ones(6))
    history = _random_walk(np.random.default_rng(9), 70, 6)
    for step in range(70):  # capacity 16 -> 32 -> 64 -> 128
        sched.observe(step, history[step])
    assert s2sched._scheduled_update._cache_size() - before == 4


def test_sample_ratios_core_compiles_once_within_a_capacity():
    history = _random_walk(np.random.default_rng(10), 64, 6)
    before = s2sched_history.ratios_core._cache_size()
    for num_rows in range(33, 65):  # all padded to 64 rows
        sample_ratios(history[:num_rows], start=3, window=11, tau=10.0)
    assert s2sched_history.ratios_core._cache_size() - before == 1


def test_scheduler_update_runs_on_the_cpu_device():
    # Meaningful where the default device is an accelerator: host inputs must still land on the CPU.
    args = (
        np.ones((4, 2), np.float32), np.int32(4), np.zeros((4, 2), np.float32), np.zeros(16, np.float32),
        np.zeros(16, np.float32), np.int32(0), np.float32(10.0),
    )
    with s2sched._on_cpu():
        outputs = s2sched._scheduled_update(*args)
    cpu = jax.devices("cpu")[0]
    assert all(out.devices() == {cpu} for out in outputs)


# ----------------------------------------------------------------------------- config


def test_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ValueError, match="s2sched.window"):
        S2SchedConfig.default(window=1)
    with pytest.raises(ValueError, match="s2sched.warmup_ratio"):
        S2SchedConfig.default(warmup_ratio=1.5)
    with pytest.raises(ValueError, match="s2sched.temperature"):
        S2SchedConfig.default(temperature=1.0)


def test_config_from_config_dict():
    config = config_lib.base_config().s2sched
    config.update(window=32, tau=1.0, warmup_steps=32)
    parsed = S2SchedConfig.from_config(config, size_prior={"QR": 2.0})
    assert (parsed.window, parsed.tau, parsed.warmup_steps) == (32, 1.0, 32)
    assert dict(parsed.size_prior) == {"QR": 2.0}
    assert parsed.enabled and parsed.probe_size == 10 and parsed.update_every == 1 and not parsed.floor
