"""Retrieval metrics of the embedding tasks (docs/method.md, "Evaluation"), in JAX.

- `mrr_at_k`, `ndcg_at_k`: per-query metrics of a score matrix [n_queries, n_candidates].
- `sampled_mrr` (U2I, Q2I: 1 positive + 19 negatives, MRR@20) and `sampled_ndcg` (I2I: the
  positives + 5 negatives, NDCG@20): the released protocol, negatives drawn (seeded) from a pool of
  the same task and source.
- `exact_top_k` and `catalog_metrics`: exact retrieval over a whole item catalog, chunked so that
  memory stays bounded, with Recall@k and NDCG@k.

Ties are pessimistic everywhere: a candidate ranks after every candidate with a higher score and
after every tied non-relevant candidate, so a model that scores everything alike earns nothing.
(The released script, reversing a stable ascending argsort with the positive first, does the same.)
"""
from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CATALOG_KS = (1, 5, 10, 20)


def _discounts(k: int) -> jax.Array:
    return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


@functools.partial(jax.jit, static_argnames=("k",))
def mrr_at_k(scores: jax.Array, positive: jax.Array, k: int) -> jax.Array:
    """Reciprocal rank of each query's positive, 0 beyond rank k: [n_q, n_c], [n_q] -> [n_q].

    rank = 1 + (number of other candidates scoring >= the positive): the pessimistic rank.
    """
    pos_score = jnp.take_along_axis(scores, positive[:, None], axis=1)
    others = jnp.arange(scores.shape[1])[None, :] != positive[:, None]
    rank = 1 + jnp.sum((scores >= pos_score) & others, axis=1)
    return jnp.where(rank <= k, 1.0 / rank, 0.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("k",))
def ndcg_at_k(scores: jax.Array, relevance: jax.Array, k: int) -> jax.Array:
    """Binary NDCG@k of each query: [n_q, n_c] scores, [n_q, n_c] bool relevance -> [n_q].

    Candidates are ordered by score, tied ones non-relevant first (pessimistic). DCG sums
    1 / log2(position + 1) over relevant candidates in the first k positions; the ideal DCG puts
    min(k, #relevant) relevant candidates first. A query without relevant candidates scores 0.
    Candidates scored -inf sort last, so -inf can pad rows of unequal length.
    """
    k = min(k, scores.shape[1])
    rel = relevance.astype(jnp.int32)
    _, ordered_rel = jax.lax.sort((-scores, rel), dimension=1, num_keys=2)
    discounts = _discounts(k)
    dcg = ordered_rel[:, :k].astype(jnp.float32) @ discounts
    n_rel = rel.sum(axis=1)
    ideal = jnp.cumsum(discounts)[jnp.clip(jnp.minimum(n_rel, k) - 1, 0)]
    return jnp.where(n_rel > 0, dcg / ideal, 0.0)


# ---------------------------------------------------------------- the released sampled protocol


def sample_negatives(
    query_sources: Sequence[Hashable],
    pool_sources: Sequence[Hashable],
    num_negatives: int,
    seed: int,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw each query's negatives from the pool entries of its source, without replacement.

    The pool must hold one task's candidates only. Query i draws with
    `np.random.default_rng([seed, i])`, so its set depends only on the seed, its row and the pool;
    `exclude[i]` lists pool indices it never draws (e.g. its own positive). A query whose source has
    fewer than `num_negatives` eligible entries is skipped, as in the released script.
    Returns (kept query rows [n_kept], negative pool indices [n_kept, num_negatives]).
    """
    by_source: dict[Hashable, list[int]] = {}
    for j, source in enumerate(pool_sources):
        by_source.setdefault(source, []).append(j)
    kept, negatives = [], []
    for i, source in enumerate(query_sources):
        eligible = np.asarray(by_source.get(source, []), dtype=np.int64)
        if exclude is not None:
            eligible = np.setdiff1d(eligible, np.asarray(exclude[i], dtype=np.int64))
        if len(eligible) < num_negatives:
            continue
        rng = np.random.default_rng([seed, i])
        kept.append(i)
        negatives.append(rng.choice(eligible, size=num_negatives, replace=False))
    return (
        np.asarray(kept, dtype=np.int64),
        np.asarray(negatives, dtype=np.int64).reshape(len(kept), num_negatives),
    )


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sampled_mrr(
    query_emb: np.ndarray,
    positive_emb: np.ndarray,
    query_sources: Sequence[Hashable],
    pool_emb: np.ndarray,
    pool_sources: Sequence[Hashable],
    *,
    num_negatives: int = 19,
    k: int = 20,
    seed: int = 42,
    exclude: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """U2I / Q2I: MRR@k of each query's positive among it and `num_negatives` sampled negatives.

    query_emb, positive_emb: [n, d] (row i's positive is positive_emb[i]); pool_emb: [m, d] with
    pool_sources[j] the source of pool row j. Scores are cosine similarities. Returns ``score``
    (the mean), ``n`` (queries scored), ``skipped`` (queries whose source had too few negatives),
    ``per_query`` and ``queries`` (the rows scored).
    """
    kept, negatives = sample_negatives(query_sources, pool_sources, num_negatives, seed, exclude)
    if not len(kept):
        return _summary(np.zeros(0, np.float32), kept, len(query_sources))
    q = _normalize(query_emb)[kept]
    pos = _normalize(positive_emb)[kept]
    pool = _normalize(pool_emb)
    pos_scores = np.einsum("nd,nd->n", q, pos)[:, None]
    neg_scores = np.einsum("nd,ncd->nc", q, pool[negatives])
    scores = np.concatenate([pos_scores, neg_scores], axis=1)
    per_query = np.asarray(mrr_at_k(scores, np.zeros(len(kept), dtype=np.int32), k))
    return _summary(per_query, kept, len(query_sources))


def sampled_ndcg(
    query_emb: np.ndarray,
    positives: Sequence[np.ndarray],
    query_sources: Sequence[Hashable],
    pool_emb: np.ndarray,
    pool_sources: Sequence[Hashable],
    *,
    num_negatives: int = 5,
    k: int = 20,
    seed: int = 42,
    exclude: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """I2I: binary NDCG@k over each query's positives plus `num_negatives` sampled negatives.

    positives[i]: [p_i, d], the positives of query i (p_i may differ; a query without positives is
    skipped). Otherwise as `sampled_mrr`.
    """
    kept, negatives = sample_negatives(query_sources, pool_sources, num_negatives, seed, exclude)
    has_pos = np.array([len(positives[i]) > 0 for i in kept], dtype=bool)
    kept, negatives = kept[has_pos], negatives[has_pos]
    if not len(kept):
        return _summary(np.zeros(0, np.float32), kept, len(query_sources))
    q = _normalize(query_emb)[kept]
    pool = _normalize(pool_emb)
    width = max(len(positives[i]) for i in kept)
    pos_scores = np.full((len(kept), width), -np.inf, dtype=np.float32)
    for row, i in enumerate(kept):
        pos_scores[row, : len(positives[i])] = _normalize(positives[i]) @ q[row]
    neg_scores = np.einsum("nd,ncd->nc", q, pool[negatives])
    scores = np.concatenate([pos_scores, neg_scores], axis=1)
    relevance = np.concatenate(
        [np.isfinite(pos_scores), np.zeros_like(neg_scores, dtype=bool)], axis=1
    )
    per_query = np.asarray(ndcg_at_k(scores, relevance, k))
    return _summary(per_query, kept, len(query_sources))


def _summary(per_query: np.ndarray, kept: np.ndarray, total: int) -> dict[str, Any]:
    return {
        "score": float(per_query.mean()) if len(per_query) else 0.0,
        "n": int(len(kept)),
        "skipped": int(total - len(kept)),
        "per_query": per_query,
        "queries": kept,
    }


# ---------------------------------------------------------------- full-catalog retrieval


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _chunked_top_k(queries: jax.Array, catalog: jax.Array, k: int, chunk: int):
    """Exact top-k of queries @ catalog.T, scanning the catalog `chunk` rows at a time.

    The last chunk starts at m - chunk (no padded copy of the catalog); the rows it shares with
    the previous chunk are masked so each item is seen once.
    """
    n, m = queries.shape[0], catalog.shape[0]
    n_chunks = -(-m // chunk)

    def step(carry, i):
        best_scores, best_ids = carry
        start = jnp.minimum(i * chunk, m - chunk)
        block = jax.lax.dynamic_slice_in_dim(catalog, start, chunk, axis=0)
        scores = jnp.matmul(queries, block.T, precision=jax.lax.Precision.HIGHEST)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        scores = jnp.where(ids[None, :] >= i * chunk, scores, -jnp.inf)
        # The running best (lower catalog ids) comes first: ties keep the lower id, as top_k does.
        all_scores = jnp.concatenate([best_scores, scores], axis=1)
        all_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, (n, chunk))], axis=1)
        top_scores, where = jax.lax.top_k(all_scores, k)
        return (top_scores, jnp.take_along_axis(all_ids, where, axis=1)), None

    init = (jnp.full((n, k), -jnp.inf, jnp.float32), jnp.full((n, k), -1, jnp.int32))
    (scores, ids), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
    return scores, ids


def exact_top_k(
    queries: np.ndarray,
    catalog: np.ndarray,
    k: int,
    *,
    chunk_size: int = 8192,
    query_block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k catalog items per query by dot product (cosine for L2-normalised inputs).

    queries: [n, d] float32, catalog: [m, d] float32, k <= m. Scores a block of `query_block`
    queries against `chunk_size` catalog rows at a time (the last query block is padded, so one
    compile serves every block). Ties rank the lower catalog index first. Returns (scores [n, k],
    catalog indices [n, k]), best first.
    """
    queries = np.asarray(queries, dtype=np.float32)
    catalog_dev = jnp.asarray(catalog, dtype=jnp.float32)
    m = catalog_dev.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k={k} must be between 1 and the catalog size {m}")
    chunk = min(chunk_size, m)
    block = min(query_block, max(len(queries), 1))
    out_scores, out_ids = [], []
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        padded = np.zeros((block, queries.shape[1]), np.float32)
        padded[: len(q)] = q
        scores, ids = _chunked_top_k(jnp.asarray(padded), catalog_dev, k, chunk)
        out_scores.append(np.asarray(scores)[: len(q)])
        out_ids.append(np.asarray(ids)[: len(q)])
    if not out_ids:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return np.concatenate(out_scores), np.concatenate(out_ids)


@functools.partial(jax.jit, static_argnames=("ks",))
def _recall_ndcg(top_ids: jax.Array, relevant: jax.Array, ks: tuple[int, ...]):
    """Per-query Recall@k and NDCG@k from top ids [n, K] and -1-padded relevant ids [n, R]."""
    hits = jnp.any(top_ids[:, :, None] == relevant[:, None, :], axis=-1).astype(jnp.float32)
    n_rel = jnp.sum(relevant >= 0, axis=1)
    discounts = _discounts(top_ids.shape[1])
    ideal_prefix = jnp.cumsum(discounts)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = hits[:, :k].sum(axis=1) / n_rel
        ideal = ideal_prefix[jnp.minimum(n_rel, k) - 1]
        out[f"ndcg@{k}"] = (hits[:, :k] @ discounts[:k]) / ideal
    return out


def catalog_metrics(
    queries: np.ndarray,
    catalog: np.ndarray,
    relevant: Sequence[Sequence[int]],
    *,
    ks: Sequence[int] = CATALOG_KS,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk_size: int = 8192,
    query_block: int = 1024,
) -> dict[str, Any]:
    """Recall@k and NDCG@k (binary) of exact retrieval over the whole catalog, for each k in ks.

    relevant[i] lists the catalog indices relevant to query i (duplicates are counted once).
    exclude[i] lists indices query i never ranks (a user's history, as sequential recommendation's full
    ranking masks it); a relevant index is never excluded. Recall@k = |top-k ∩ relevant| / |relevant|;
    NDCG@k as `ndcg_at_k`. Queries with no relevant item are left out of the means and counted in
    ``skipped``. Returns the means under "recall@k" / "ndcg@k", plus ``n`` and ``skipped``.
    """
    ks = tuple(sorted(set(int(k) for k in ks)))
    m = len(catalog)
    rel_sets = [sorted(set(int(j) for j in r)) for r in relevant]
    if len(rel_sets) != len(queries):
        raise ValueError(f"{len(rel_sets)} relevant lists for {len(queries)} queries")
    for i, rel in enumerate(rel_sets):
        if rel and not (0 <= rel[0] and rel[-1] < m):
            raise ValueError(f"query {i} has relevant indices outside 0..{m - 1}")
    kept = [i for i, rel in enumerate(rel_sets) if rel]
    result: dict[str, Any] = {"n": len(kept), "skipped": len(rel_sets) - len(kept)}
    if not kept:
        result.update({f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg")})
        return result
    masked = [sorted(set(int(j) for j in exclude[i]) - set(rel_sets[i])) if exclude else [] for i in kept]
    depth = min(ks[-1], m)
    _, fetched = exact_top_k(
        np.asarray(queries)[kept], catalog, min(depth + max(map(len, masked), default=0), m),
        chunk_size=chunk_size, query_block=query_block,
    )
    # each query's excluded indices dropped, its best ``depth`` others kept in score order (-2 pads a query
    # left with fewer: it matches no item and not the -1 padding of ``rel``)
    top_ids = np.full((len(kept), depth), -2, np.int32)
    for row, (ids, drop) in enumerate(zip(fetched, masked)):
        ranked = ids[~np.isin(ids, drop)][:depth]
        top_ids[row, :len(ranked)] = ranked
    m = depth
    width = max(len(rel_sets[i]) for i in kept)
    rel = np.full((len(kept), width), -1, dtype=np.int32)
    for row, i in enumerate(kept):
        rel[row, : len(rel_sets[i])] = rel_sets[i]
    per_query = _recall_ndcg(jnp.asarray(top_ids), jnp.asarray(rel), tuple(min(k, m) for k in ks))
    for k, k_eff in zip(ks, (min(k, m) for k in ks)):
        result[f"recall@{k}"] = float(per_query[f"recall@{k_eff}"].mean())
        result[f"ndcg@{k}"] = float(per_query[f"ndcg@{k_eff}"].mean())
    return result
