"""Retrieval metrics against hand-computed cases and plain numpy references."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recfound_jax.evaluate import retrieval


def _np_reciprocal_rank(scores: np.ndarray, positive: int, k: int) -> float:
    """As the released script: positive moved to the front, stable argsort reversed (ties last)."""
    order = [positive] + [j for j in range(len(scores)) if j != positive]
    ranking = np.argsort(scores[order], kind="stable")[::-1]
    rank = int(np.where(ranking == 0)[0][0]) + 1
    return 1.0 / rank if rank <= k else 0.0


def _np_ndcg(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Binary NDCG@k with ties ordered non-relevant first, by a Python sort."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], bool(relevant[j])))
    dcg = sum(1.0 / math.log2(pos + 2) for pos, j in enumerate(order[:k]) if relevant[j])
    n_rel = int(relevant.sum())
    ideal = sum(1.0 / math.log2(pos + 2) for pos in range(min(n_rel, k)))
    return dcg / ideal if n_rel else 0.0


# ---------------------------------------------------------------- MRR, NDCG


def test_mrr_ties_are_pessimistic():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3], [0.9, 0.1, 0.2, 0.3]])
    rr = np.asarray(retrieval.mrr_at_k(scores, np.array([0, 3, 0]), k=20))
    # Row 0: after 0.9 and the tied 0.5 -> rank 3 (the mean rank would be 2.5).
    np.testing.assert_allclose(rr, [1 / 3, 1 / 4, 1.0])
    assert np.asarray(retrieval.mrr_at_k(scores, np.array([0, 3, 0]), k=2))[0] == 0.0


def test_mrr_matches_numpy_reference_with_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, 20)).astype(np.float32)
    positive = rng.integers(0, 20, size=64)
    for k in (1, 5, 20):
        got = np.asarray(retrieval.mrr_at_k(scores, positive, k=k))
        want = [_np_reciprocal_rank(s, p, k) for s, p in zip(scores, positive)]
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ndcg_hand_case():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1]])
    relevance = np.array([[0, 1, 0, 1], [0, 0, 0, 0]], dtype=bool)
    got = np.asarray(retrieval.ndcg_at_k(scores, relevance, k=3))
    # Order 0, 2, 1 (tied: non-relevant first), 3: DCG@3 = 1/log2(4); ideal = 1 + 1/log2(3).
    np.testing.assert_allclose(got, [0.5 / (1 + 1 / math.log2(3)), 0.0], rtol=1e-6)


def test_ndcg_matches_numpy_reference_and_mrr_with_one_positive():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(48, 12)).astype(np.float32)
    relevance = rng.random((48, 12)) < 0.25
    for k in (1, 5, 20):
        got = np.asarray(retrieval.ndcg_at_k(scores, relevance, k=k))
        want = [_np_ndcg(s, r, k) for s, r in zip(scores, relevance)]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # One positive: NDCG = 1 / log2(rank + 1), with the same pessimistic rank as MRR.
    positive = rng.integers(0, 12, size=48)
    one_hot = np.eye(12, dtype=bool)[positive]
    rank = 1.0 / np.asarray(retrieval.mrr_at_k(scores, positive, k=12))
    np.testing.assert_allclose(np.asarray(retrieval.ndcg_at_k(scores, one_hot, k=12)),
                               1.0 / np.log2(rank + 1), rtol=1e-6)


# ---------------------------------------------------------------- sampled protocol


def test_sample_negatives_same_source_seeded_and_skips():
    pool_sources = ["a"] * 6 + ["b"] * 3
    query_sources = ["a", "b", "c", "a"]
    kept, neg = retrieval.sample_negatives(query_sources, pool_sources, 3, seed=7,
                                           exclude=[[0, 1], [], [], []])
    np.testing.assert_array_equal(kept, [0, 1, 3])  # source "c" has no pool entries
    assert set(neg[0]) <= {2, 3, 4, 5} and set(neg[1]) == {6, 7, 8} and set(neg[2]) <= set(range(6))
    assert all(len(set(row)) == 3 for row in neg)  # without replacement
    kept2, neg2 = retrieval.sample_negatives(query_sources, pool_sources, 3, seed=7,
                                             exclude=[[0, 1], [], [], []])
    np.testing.assert_array_equal(neg, neg2)
    # A query's set depends only on the seed and its row, not on the other queries.
    _, neg_first = retrieval.sample_negatives(query_sources[:1], pool_sources, 3, seed=7,
                                              exclude=[[0, 1]])
    np.testing.assert_array_equal(neg_first[0], neg[0])
    draws = {tuple(retrieval.sample_negatives(["a"], pool_sources, 3, seed=s)[1][0])
             for s in range(20)}
    assert len(draws) > 1
    kept, neg = retrieval.sample_negatives(["b"], pool_sources, 4, seed=0)
    assert kept.shape == (0,) and neg.shape == (0, 4)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sampled_mrr_matches_numpy_reference():
    rng = np.random.default_rng(2)
    n, m, d = 12, 40, 8
    queries, positives = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    pool = rng.normal(size=(m, d)) * rng.uniform(0.5, 3.0, size=(m, 1))  # cosine ignores norms
    query_sources = rng.choice(["s1", "s2", "s3"], size=n).tolist()
    pool_sources = rng.choice(["s1", "s2"], size=m).tolist()
    out = retrieval.sampled_mrr(queries, positives, query_sources, pool, pool_sources,
                                num_negatives=5, k=4, seed=3)
    kept, neg = retrieval.sample_negatives(query_sources, pool_sources, 5, seed=3)
    want = []
    for i, negatives in zip(kept, neg):
        sims = np.array([_cos(queries[i], positives[i])] + [_cos(queries[i], pool[j])
                                                            for j in negatives])
        want.append(_np_reciprocal_rank(sims, 0, 4))
    assert out["n"] == len(kept) and out["skipped"] == n - len(kept) == query_sources.count("s3")
    np.testing.assert_allclose(out["per_query"], want, rtol=1e-5)
    assert out["score"] == pytest.approx(np.mean(want), rel=1e-5)


def test_sampled_mrr_perfect_and_all_skipped():
    queries = np.eye(4, 8)
    pool = np.eye(8)[4:]
    out = retrieval.sampled_mrr(queries, 2 * queries, ["x"] * 4, pool, ["x"] * 4, num_negatives=3)
    assert out["score"] == 1.0 and out["n"] == 4
    none = retrieval.sampled_mrr(queries, queries, ["y"] * 4, pool, ["x"] * 4, num_negatives=3)
    assert (none["n"], none["skipped"], none["score"]) == (0, 4, 0.0)


def test_sampled_ndcg_matches_numpy_reference():
    rng = np.random.default_rng(4)
    n, m, d = 6, 30, 8
    queries = rng.normal(size=(n, d))
    positives = [rng.normal(size=(p, d)) for p in (1, 3, 0, 2, 5, 1)]
    pool = rng.normal(size=(m, d))
    out = retrieval.sampled_ndcg(queries, positives, ["s"] * n, pool, ["s"] * m,
                                 num_negatives=5, k=4, seed=5)
    kept, neg = retrieval.sample_negatives(["s"] * n, ["s"] * m, 5, seed=5)
    assert list(out["queries"]) == [0, 1, 3, 4, 5] and out["skipped"] == 1  # row 2: no positives
    want = []
    for i in out["queries"]:
        sims = [_cos(queries[i], p) for p in positives[i]] + [_cos(queries[i], pool[j])
                                                               for j in neg[list(kept).index(i)]]
        relevant = np.arange(len(sims)) < len(positives[i])
        want.append(_np_ndcg(np.array(sims), relevant, 4))
    np.testing.assert_allclose(out["per_query"], want, rtol=1e-5)


# ---------------------------------------------------------------- full catalog


def _np_top_k(queries: np.ndarray, catalog: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ catalog.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(
    "m, chunk, k, block",
    [(37, 8, 5, 16), (37, 8, 12, 7), (20, 64, 20, 40), (64, 16, 3, 64)],
    ids=["m-not-multiple", "k-over-chunk", "chunk-over-m", "exact-chunks"],
)
def test_exact_top_k_equals_full_argsort(m, chunk, k, block):
    rng = np.random.default_rng(m + k)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    catalog = rng.normal(size=(m, 16)).astype(np.float32)
    scores, ids = retrieval.exact_top_k(queries, catalog, k, chunk_size=chunk, query_block=block)
    np.testing.assert_array_equal(ids, _np_top_k(queries, catalog, k))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ catalog.T, ids, axis=1),
                               rtol=1e-5, atol=1e-5)


def test_exact_top_k_ties_keep_lower_index_and_rejects_large_k():
    catalog = np.repeat(np.eye(3, 4, dtype=np.float32), 4, axis=0)  # rows 0-3, 4-7, 8-11 equal
    queries = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0]], np.float32)
    _, ids = retrieval.exact_top_k(queries, catalog, 6, chunk_size=5)
    np.testing.assert_array_equal(ids, [[4, 5, 6, 7, 0, 1], [0, 1, 2, 3, 8, 9]])
    with pytest.raises(ValueError, match="catalog size"):
        retrieval.exact_top_k(queries, catalog, 13)


def test_catalog_metrics_hand_case():
    catalog = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)  # scores 1, .8, 0, -1
    out = retrieval.catalog_metrics(np.array([[1, 0], [0, 1]], np.float32), catalog,
                                    [[1, 2, 2], []], ks=(1, 2, 3), chunk_size=3)
    assert (out["n"], out["skipped"]) == (1, 1)
    assert (out["recall@1"], out["recall@2"], out["recall@3"]) == (0.0, 0.5, 1.0)
    ideal = 1 + 1 / math.log2(3)
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3)) / ideal)
    assert out["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5) / ideal)


def test_catalog_metrics_match_numpy_reference():
    rng = np.random.default_rng(6)
    n, m, d = 30, 53, 16
    queries = rng.normal(size=(n, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    catalog = rng.normal(size=(m, d)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    relevant = [rng.choice(m, size=rng.integers(1, 6), replace=False).tolist() for _ in range(n)]
    out = retrieval.catalog_metrics(queries, catalog, relevant, chunk_size=10, query_block=8)
    order = _np_top_k(queries, catalog, m)
    for k in retrieval.CATALOG_KS:
        recall = [len(set(order[i, :k]) & set(rel)) / len(rel) for i, rel in enumerate(relevant)]
        mask = np.zeros((n, m), bool)
        for i, rel in enumerate(relevant):
            mask[i, rel] = True
        ndcg = [_np_ndcg(queries[i] @ catalog.T, mask[i], k) for i in range(n)]
        assert out[f"recall@{k}"] == pytest.approx(np.mean(recall), rel=1e-5)
        assert out[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg), rel=1e-5)
    assert (out["n"], out["skipped"]) == (n, 0)


def test_catalog_metrics_never_rank_an_excluded_item():
    """A user's history masked as sequential recommendation's full ranking does: numpy with the excluded
    items' scores at -inf; a relevant item listed as excluded still counts."""
    rng = np.random.default_rng(7)
    n, m, d = 24, 41, 8
    queries = rng.normal(size=(n, d)).astype(np.float32)
    catalog = rng.normal(size=(m, d)).astype(np.float32)
    relevant = [rng.choice(m, size=rng.integers(1, 4), replace=False).tolist() for _ in range(n)]
    scores_all = queries @ catalog.T
    # even queries: every item scoring above their best relevant one masked (so they hit at rank 1); odd: random
    above = [np.flatnonzero(scores_all[i] > scores_all[i, rel].max()).tolist() for i, rel in enumerate(relevant)]
    exclude = [(above[i] if i % 2 == 0 else rng.choice(m, size=rng.integers(0, 7), replace=False).tolist()) + rel[:1]
               for i, rel in enumerate(relevant)]
    out = retrieval.catalog_metrics(queries, catalog, relevant, exclude=exclude, chunk_size=9, query_block=5)
    for k in retrieval.CATALOG_KS:
        recall, ndcg = [], []
        for i, rel in enumerate(relevant):
            scores = (queries[i] @ catalog.T).astype(np.float64)
            scores[list(set(exclude[i]) - set(rel))] = -np.inf
            order = np.argsort(-scores, kind="stable")
            recall.append(len(set(order[:k]) & set(rel)) / len(rel))
            mask = np.zeros(m, bool)
            mask[rel] = True
            ndcg.append(_np_ndcg(scores, mask, k))
        assert out[f"recall@{k}"] == pytest.approx(np.mean(recall), rel=1e-5)
        assert out[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg), rel=1e-5)
    unmasked = retrieval.catalog_metrics(queries, catalog, relevant, chunk_size=9, query_block=5)
    assert out["recall@1"] > unmasked["recall@1"] and out["recall@1"] >= 0.5 / 3  # the even half hits at rank 1
