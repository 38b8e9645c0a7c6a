"""Ranking metrics of top-K lists against sets of relevant items (binary relevance).

Vectorised over requests: a [R, K] matrix of recommended item codes and, per request, the
relevant codes. `tests/test_recommend.py` checks every metric against a brute-force loop.

  recall@K   |top K ∩ relevant| / |relevant|
  NDCG@K     sum over hits of 1 / log2(rank + 1), over the same for the ideal list
             (min(|relevant|, K) hits at the top)
  MRR        1 / rank of the first relevant item within the list (0 if none in it)
  hit@K      1 if any relevant item is in the top K

Requests without a relevant item are left out (their metrics are undefined); the count of
requests used is reported beside the means.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (5, 10, 20)


def hits_matrix(recommended: np.ndarray, relevant: list) -> np.ndarray:
    """[R, K] bool: whether the item at each rank is relevant to its request."""
    recommended = np.asarray(recommended, np.int64)
    rows = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    codes = np.concatenate([np.asarray(r, np.int64) for r in relevant]) if len(rows) else \
        np.zeros(0, np.int64)
    width = np.int64(max(int(recommended.max(initial=0)), int(codes.max(initial=0))) + 2)
    keys = np.unique(rows * width + codes)
    query = np.arange(len(recommended))[:, None] * width + recommended
    at = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    return (keys[at] == query) & (recommended >= 0) if len(keys) else np.zeros(
        recommended.shape, bool)


def ranking_metrics(recommended: np.ndarray, relevant: list, cutoffs=CUTOFFS) -> dict:
    """{"recall@K", "ndcg@K", "hit@K" for K in cutoffs, "mrr", "requests"} (means over the
    requests with at least one relevant item)."""
    recommended = np.asarray(recommended, np.int64)
    sizes = np.array([len(set(np.asarray(r).tolist())) for r in relevant], np.int64)
    use = sizes > 0
    out = {"requests": int(use.sum())}
    if not use.any():
        return out
    hits = hits_matrix(recommended[use], [r for r, u in zip(relevant, use) if u])
    sizes = sizes[use]
    k_max = recommended.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))
    for k in cutoffs:
        k_eff = min(k, k_max)
        h = hits[:, :k_eff]
        out[f"recall@{k}"] = float((h.sum(1) / sizes).mean())
        ideal = np.cumsum(discount)[np.minimum(sizes, k_eff) - 1]
        out[f"ndcg@{k}"] = float(((h * discount[:k_eff]).sum(1) / ideal).mean())
        out[f"hit@{k}"] = float(h.any(1).mean())
    first = np.where(hits.any(1), hits.argmax(1) + 1, 0)
    out["mrr"] = float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())
    return out
