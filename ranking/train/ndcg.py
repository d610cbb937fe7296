"""NDCG@k as LightGBM's `ndcg` metric computes it, for held-out reports and the demo model."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["ndcg_at_k"]


def ndcg_at_k(
    scores: npt.ArrayLike, labels: npt.ArrayLike, group_sizes: npt.ArrayLike, k: int = 10
) -> float:
    """Mean NDCG@k over queries, as LightGBM's `ndcg` metric defines it.

    Gain 2^label - 1, discount 1 / log2(2 + position); documents are ranked by descending score
    with ties kept in input order (LightGBM's stable sort); a query shorter than k counts all its
    documents; a query with no relevant document scores 1 (LightGBM's convention: no ranking
    could do better).
    """
    score_arr = np.asarray(scores, dtype=np.float64)
    gains = np.exp2(np.asarray(labels, dtype=np.float64)) - 1.0
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    total = 0.0
    start = 0
    for size in np.asarray(group_sizes, dtype=np.int64).tolist():
        end = start + size
        g, s = gains[start:end], score_arr[start:end]
        top = min(k, size)
        ideal = float(np.sort(g)[::-1][:top] @ discount[:top])
        if ideal <= 0.0:
            total += 1.0
        else:
            order = np.argsort(-s, kind="stable")[:top]
            total += float(g[order] @ discount[:top]) / ideal
        start = end
    n = int(np.size(group_sizes))
    return total / n if n else math.nan
