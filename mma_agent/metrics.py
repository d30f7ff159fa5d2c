"""Ranking metrics with binary relevance, as pure NumPy functions.

A *ranking* is a sequence of item ids, best first; *relevant* is the set of held-out positives.
The per-list functions are the reference; `hits_matrix` + `batch_metrics` are their vectorised
form for full-sort evaluation (tests check that both agree, and both against `ranx`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def _check(relevant: Iterable, k: int | None) -> set:
    rel = set(relevant)
    if not rel:
        msg = "relevant is empty: a ranking metric needs at least one relevant item (skip users without targets)"
        raise ValueError(msg)
    if k is not None and k < 1:
        msg = f"k must be >= 1, got {k}"
        raise ValueError(msg)
    return rel


def _gains(ranking: Sequence, rel: set, k: int | None) -> np.ndarray:
    top = list(ranking)[:k] if k is not None else list(ranking)
    return np.fromiter((x in rel for x in top), dtype=np.float64, count=len(top))


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def ndcg_at_k(ranking: Sequence, relevant: Iterable, k: int) -> float:
    """NDCG@k = DCG@k / IDCG@k with gain 1 for a relevant item at rank i (1-based): 1/log2(i+1)."""
    rel = _check(relevant, k)
    g = _gains(ranking, rel, k)
    dcg = float(g @ _discounts(len(g)))
    idcg = float(_discounts(min(k, len(rel))).sum())
    return dcg / idcg


def ndcg_of_scores(scores: np.ndarray, candidates: Sequence, relevant: Iterable, k: int = 10) -> float:
    """NDCG@k of `candidates` ranked by `scores`, highest first (ties keep pool order)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return ndcg_at_k([candidates[i] for i in order], relevant, k)


def hr_at_k(ranking: Sequence, relevant: Iterable, k: int) -> float:
    """Hit rate@k: 1 if any relevant item is in the top k, else 0."""
    rel = _check(relevant, k)
    return float(_gains(ranking, rel, k).any())


def recall_at_k(ranking: Sequence, relevant: Iterable, k: int) -> float:
    """Recall@k: the fraction of relevant items found in the top k."""
    rel = _check(relevant, k)
    return float(_gains(ranking, rel, k).sum() / len(rel))


def mrr(ranking: Sequence, relevant: Iterable, k: int | None = None) -> float:
    """Reciprocal rank of the first relevant item (within the top k if given), 0 if none."""
    rel = _check(relevant, k)
    g = _gains(ranking, rel, k)
    hit = np.flatnonzero(g)
    return float(1.0 / (hit[0] + 1)) if len(hit) else 0.0


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the k largest scores per row, best first; ties broken by index."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)  # make tie order deterministic before the stable sort below
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def batch_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Mean Recall/NDCG/HR@k over rows. hits: (n, K) bool, relevance of each top-K position;
    n_relevant: (n,) number of relevant items per row (> 0)."""
    hits = np.asarray(hits, dtype=np.float64)
    n_relevant = np.asarray(n_relevant).astype(np.int64)
    if (n_relevant <= 0).any():
        msg = "every row needs at least one relevant item; drop users without targets first"
        raise ValueError(msg)
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        disc = _discounts(h.shape[1])
        idcg = np.cumsum(_discounts(k))[np.minimum(n_relevant, k) - 1]
        out[f"recall@{k}"] = float((h.sum(1) / n_relevant).mean())
        out[f"ndcg@{k}"] = float(((h @ disc) / idcg).mean())
        out[f"hr@{k}"] = float((h.sum(1) > 0).mean())
    first = np.where(hits.any(1), hits.argmax(1) + 1, np.inf)
    out[f"mrr@{hits.shape[1]}"] = float((1.0 / first).mean())
    return out
