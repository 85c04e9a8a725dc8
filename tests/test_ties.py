"""TIES merging against peft's merge_utils and numpy references."""
from __future__ import annotations

import warnings

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft.utils import merge_utils

from recfound_jax.merge import ties_merge, ties_merge_leaf, ties_merge_stream
from recfound_jax.merge.ties import keep_count, top_magnitude_mask

SHAPES = [(6, 24, 4), (37,), (5, 3)]


def _models(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    init = rng.standard_normal(shape).astype(np.float32)
    return init, [init + rng.standard_normal(shape).astype(np.float32) for _ in range(k)]


def _peft_ties(init: np.ndarray, finetuned: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    """peft's TIES on the task vectors, all weights 1, scaled by lam and added to init."""
    tau = [torch.from_numpy(f - init) for f in finetuned]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that density 1 prunes nothing
        merged = merge_utils.ties(tau, torch.ones(len(tau)), density).numpy()
    return init + lam * merged


def _np_top_mask(x: np.ndarray, keep: int) -> np.ndarray:
    """Top-`keep` magnitudes of flat x, ties to the lower index (stable sort of -|x|)."""
    mask = np.zeros(x.size, dtype=bool)
    mask[np.argsort(-np.abs(x), kind="stable")[:keep]] = True
    return mask


def _np_ties(init: np.ndarray, finetuned: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    """Published TIES written from the paper: trim, elect (zero sum elects +), disjoint mean."""
    keep = keep_count(init.size, density)
    tau = np.stack([(f - init).ravel() for f in finetuned]).astype(np.float64)
    trimmed = np.stack([np.where(_np_top_mask(t, keep), t, 0.0) for t in tau])
    elected = np.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(trimmed) == elected
    merged = np.where(agree, trimmed, 0.0).sum(0) / np.maximum(agree.sum(0), 1)
    return (init.ravel() + lam * merged).reshape(init.shape)


def _np_released(init: np.ndarray, finetuned: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    """The released order (docs/method.md, "TIES"): elect on untrimmed, zero disagreeing, trim, mean over agreeing."""
    keep = keep_count(init.size, density)
    tau = np.stack([(f - init).ravel() for f in finetuned]).astype(np.float64)
    elected = np.sign(tau.sum(0))
    agree = np.sign(tau) == elected
    kept = np.where(agree, tau, 0.0)
    trimmed = np.stack([np.where(_np_top_mask(t, keep), t, 0.0) for t in kept])
    merged = trimmed.sum(0) / np.maximum(agree.sum(0), 1)
    return (init.ravel() + lam * merged).reshape(init.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density,lam", [(0.8, 1.0), (0.3, 0.7)])
def test_leaf_matches_peft_ties(shape: tuple[int, ...], density: float, lam: float) -> None:
    init, finetuned = _models(np.random.default_rng(0), shape, k=3)
    got = ties_merge_leaf(init, finetuned, density=density, lam=lam)
    np.testing.assert_allclose(np.asarray(got), _peft_ties(init, finetuned, density, lam), rtol=1e-6, atol=1e-6)


def test_mask_matches_peft_prune() -> None:
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    for density in (0.0, 0.25, 0.8, 0.999):
        pruned = merge_utils.prune(torch.from_numpy(x), density, method="magnitude").numpy()
        mask = np.asarray(top_magnitude_mask(jnp.asarray(x), keep_count(x.size, density)))
        np.testing.assert_array_equal(mask, pruned != 0)


def test_elected_sign_and_disjoint_mean_match_peft() -> None:
    rng = np.random.default_rng(2)
    init, finetuned = _models(rng, (200,), k=4)
    tau = torch.from_numpy(np.stack(finetuned) - init)
    sign_mask = merge_utils.calculate_majority_sign_mask(tau)
    expected = init + merge_utils.disjoint_merge(tau, sign_mask).numpy()
    got = ties_merge_leaf(init, finetuned, density=1.0)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_density_one_is_peft_without_trimming(k: int) -> None:
    init, finetuned = _models(np.random.default_rng(3), (6, 24, 4), k=k)
    got = ties_merge_leaf(init, finetuned, density=1.0)
    np.testing.assert_allclose(np.asarray(got), _peft_ties(init, finetuned, 1.0, 1.0), rtol=1e-6, atol=1e-6)


def test_ties_with_tied_magnitudes_and_zero_sums() -> None:
    rng = np.random.default_rng(4)
    init = np.zeros((8, 16), np.float32)
    finetuned = [rng.integers(-2, 3, size=(8, 16)).astype(np.float32) for _ in range(3)]
    for density in (0.8, 0.5):
        got = ties_merge_leaf(init, finetuned, density=density)
        np.testing.assert_allclose(np.asarray(got), _np_ties(init, finetuned, density, 1.0), atol=1e-6)


@pytest.mark.parametrize("density,lam", [(0.8, 1.0), (0.5, 0.6), (1.0, 1.0)])
def test_released_order_matches_numpy(density: float, lam: float) -> None:
    init, finetuned = _models(np.random.default_rng(5), (6, 24, 4), k=3)
    got = ties_merge_leaf(init, finetuned, density=density, lam=lam, order="released")
    expected = _np_released(init, finetuned, density, lam)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)


def test_released_order_with_ties_and_zero_sums() -> None:
    rng = np.random.default_rng(6)
    init = np.zeros((8, 16), np.float32)
    finetuned = [rng.integers(-2, 3, size=(8, 16)).astype(np.float32) for _ in range(4)]
    got = ties_merge_leaf(init, finetuned, density=0.6, order="released")
    np.testing.assert_allclose(np.asarray(got), _np_released(init, finetuned, 0.6, 1.0), atol=1e-6)


def test_released_differs_from_published() -> None:
    init, finetuned = _models(np.random.default_rng(7), (300,), k=3)
    published = ties_merge_leaf(init, finetuned, density=0.5)
    released = ties_merge_leaf(init, finetuned, density=0.5, order="released")
    assert not np.allclose(np.asarray(published), np.asarray(released))


def test_linear_is_mean_of_task_vectors() -> None:
    init, finetuned = _models(np.random.default_rng(8), (5, 3), k=3)
    got = ties_merge_leaf(init, finetuned, method="linear", lam=0.5)
    expected = init + 0.5 * np.mean(np.stack(finetuned) - init, axis=0)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
    plain = ties_merge_leaf(init, finetuned, method="linear")
    np.testing.assert_allclose(np.asarray(plain), np.mean(finetuned, axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order", ["ties", "released"])
def test_all_zero_leaf(order: str) -> None:
    zeros = np.zeros((6, 24, 4), np.float32)
    got = ties_merge_leaf(zeros, [zeros, zeros, zeros], order=order)
    np.testing.assert_array_equal(np.asarray(got), zeros)
    init = np.full((37,), 0.5, np.float32)
    unchanged = ties_merge_leaf(init, [init, init], order=order)
    np.testing.assert_array_equal(np.asarray(unchanged), init)


def test_mask_keeps_exactly_keep_with_ties_lowest_index_first() -> None:
    x = jnp.asarray(np.array([1.0, -3.0, 3.0, 1.0, -1.0, 0.0, 3.0, 1.0], np.float32))
    np.testing.assert_array_equal(np.asarray(top_magnitude_mask(x, 4)), [1, 1, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(top_magnitude_mask(x, 5)), [1, 1, 1, 1, 0, 0, 1, 0])
    assert int(top_magnitude_mask(jnp.zeros(10), 7).sum()) == 7


@pytest.mark.parametrize("order", ["ties", "released"])
def test_batch_dims_trim_each_tensor_separately(order: str) -> None:
    rng = np.random.default_rng(13)
    init, finetuned = _models(rng, (3, 6, 8, 4), k=3)  # [layers, experts, d_in, r]
    reference = _peft_ties if order == "ties" else _np_released
    for batch_dims in (1, 2):
        got = np.asarray(ties_merge_leaf(init, finetuned, density=0.5, order=order, batch_dims=batch_dims))
        tensors = init.reshape(-1, *init.shape[batch_dims:])
        tuned = [f.reshape(tensors.shape) for f in finetuned]
        expected = np.stack([reference(t, [f[i] for f in tuned], 0.5, 1.0) for i, t in enumerate(tensors)])
        np.testing.assert_allclose(got, expected.reshape(init.shape), rtol=1e-6, atol=1e-6)
    whole = np.asarray(ties_merge_leaf(init, finetuned, density=0.5, order=order))
    assert not np.allclose(whole, got)


def test_batch_dims_by_path() -> None:
    init, finetuned = _models(np.random.default_rng(14), (6, 10), k=2)
    def experts_first(path: tuple) -> int:
        return 1 if path[0].key == "A" else 0

    trees = [{"A": f, "emb": f} for f in finetuned]
    by_path = ties_merge({"A": init, "emb": init}, trees, density=0.5, batch_dims=experts_first)
    per_expert = ties_merge_leaf(init, finetuned, density=0.5, batch_dims=1)
    whole = ties_merge_leaf(init, finetuned, density=0.5)
    np.testing.assert_array_equal(np.asarray(by_path["A"]), np.asarray(per_expert))
    np.testing.assert_array_equal(np.asarray(by_path["emb"]), np.asarray(whole))


def test_mask_rows_with_and_without_ties() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, -2.0, 2.0, 1.0, 2.0, 0.5]], np.float32)
    mask = np.asarray(top_magnitude_mask(jnp.asarray(x), 3))
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


def test_pytree_merge_leaf_by_leaf_matches_peft() -> None:
    rng = np.random.default_rng(9)
    shapes = {"A": (6, 24, 4), "B": (6, 4, 8), "emb": (14, 8)}

    def tree(values: dict[str, np.ndarray]) -> dict:
        return {"layers": [{"A": values["A"], "B": values["B"]}], "emb": values["emb"]}

    init_values, tuned_values = {}, [{}, {}, {}]
    for name, shape in shapes.items():
        init_values[name], tuned = _models(rng, shape, k=3)
        for values, leaf in zip(tuned_values, tuned):
            values[name] = leaf
    init = tree(init_values)
    got = ties_merge(init, [tree(values) for values in tuned_values], density=0.8, lam=0.9)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, init)
    got_values = {"A": got["layers"][0]["A"], "B": got["layers"][0]["B"], "emb": got["emb"]}
    for name in shapes:
        expected = _peft_ties(init_values[name], [values[name] for values in tuned_values], 0.8, 0.9)
        np.testing.assert_allclose(np.asarray(got_values[name]), expected, rtol=1e-6, atol=1e-6)


def test_lazy_leaves_give_the_same_result() -> None:
    init, finetuned = _models(np.random.default_rng(10), (5, 3), k=2)
    eager = ties_merge({"w": init}, [{"w": f} for f in finetuned])
    lazy = ties_merge({"w": lambda: init}, [{"w": (lambda f=f: f)} for f in finetuned])
    np.testing.assert_array_equal(np.asarray(eager["w"]), np.asarray(lazy["w"]))


def test_stream_loads_one_leaf_at_a_time() -> None:
    rng = np.random.default_rng(11)
    shapes = {"a": (4, 3), "b": (7,), "c": (2, 2, 2)}
    values = {(k, p): rng.standard_normal(s).astype(np.float32) for k in range(-1, 3) for p, s in shapes.items()}
    loads: list[str] = []

    def load_leaf(k: int, path: str) -> np.ndarray:
        loads.append(path)
        return values[(k, path)]

    merged = dict(ties_merge_stream(list(shapes), lambda p: values[(-1, p)], load_leaf, num_models=3))
    assert loads == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    for path in shapes:
        expected = _peft_ties(values[(-1, path)], [values[(k, path)] for k in range(3)], 0.8, 1.0)
        np.testing.assert_allclose(np.asarray(merged[path]), expected, rtol=1e-6, atol=1e-6)


def test_keeps_bfloat16_dtype() -> None:
    init, finetuned = _models(np.random.default_rng(12), (37,), k=2)
    got = ties_merge_leaf(jnp.asarray(init, jnp.bfloat16), [jnp.asarray(f, jnp.bfloat16) for f in finetuned])
    assert got.dtype == jnp.bfloat16


def test_shape_mismatch_names_the_leaf() -> None:
    init = {"layers": {"q": {"A": np.zeros((6, 8, 4), np.float32)}}}
    bad = {"layers": {"q": {"A": np.zeros((6, 8, 5), np.float32)}}}
    with pytest.raises(ValueError, match=r"\['layers'\]\['q'\]\['A'\].*finetuned\[1\].*\(6, 8, 5\)"):
        ties_merge(init, [init, bad])


def test_structure_mismatch_names_the_leaf() -> None:
    init = {"q": np.zeros(3, np.float32), "k": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"finetuned\[0\] has no leaf at \['k'\]"):
        ties_merge(init, [{"q": np.zeros(3, np.float32)}])
    with pytest.raises(ValueError, match=r"finetuned\[1\] has an extra leaf at \['v'\]"):
        ties_merge(init, [init, {**init, "v": np.zeros(3, np.float32)}])


def test_bad_arguments() -> None:
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="at least one"):
        ties_merge({"w": x}, [])
    with pytest.raises(ValueError, match="density"):
        ties_merge_leaf(x, [x], density=1.5)
    with pytest.raises(ValueError, match="order"):
        ties_merge_leaf(x, [x], order="elect_first")
    with pytest.raises(ValueError, match="method"):
        ties_merge_leaf(x, [x], method="slerp")
    with pytest.raises(ValueError, match="batch_dims"):
        ties_merge_leaf(x, [x], batch_dims=2)
    with pytest.raises(ValueError, match="non-float"):
        ties_merge_leaf(np.zeros(3, np.int32), [np.zeros(3, np.int32)])
