"""Random raw batches for tests (shapes and dtypes of `zoo.models.features`).

    batch = random_raw_batch(batch_size=8, history_length=50, seed=0)
    features, labels = split_labels(batch)

Ids are drawn from the same namespace as `placeholder_vocabulary` ("item_3", "brand_7",
...), so a placeholder-vocabulary model sees mostly known ids; `oov_fraction` of them are
replaced by ids no vocabulary holds.
"""

from __future__ import annotations

import numpy as np

from zoo.models.features import CONTEXT_FEATURES, HISTORY_EVENT_TYPES, split_labels  # noqa: F401

WORDS = ("red", "blue", "running", "shoes", "phone", "case", "wireless", "headphones",
         "coffee", "maker", "kids", "toy", "organic", "tea", "laptop", "stand", "usb",
         "cable", "summer", "dress", "garden", "chair")


def _ids(rng, prefix, n, size, oov_fraction):
    ids = np.array([f"{prefix}_{i}" for i in rng.integers(0, n, size=size).ravel()],
                   dtype=object).reshape(size)
    oov = rng.random(size) < oov_fraction
    ids[oov] = [f"unseen_{prefix}_{i}" for i in rng.integers(0, 10**9, size=int(oov.sum()))]
    return ids


def _texts(rng, size, empty_fraction):
    out = np.empty(size, dtype=object)
    for i in range(size):
        if rng.random() < empty_fraction:
            out[i] = ""
        else:
            out[i] = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
    return out


def random_raw_batch(batch_size: int = 8, history_length: int = 50, seed: int = 0,
                     num_items: int = 500, num_categories: int = 20, num_brands: int = 50,
                     oov_fraction: float = 0.05, empty_query_fraction: float = 0.3,
                     with_labels: bool = True, num_price_ranges: int = 5) -> dict:
    """A dict of numpy arrays: raw features (+ labels and a few ignored keys)."""
    rng = np.random.default_rng(seed)
    B, L = batch_size, history_length
    lengths = rng.integers(0, L + 1, size=B)
    lengths[0] = L  # one full row, and (when B > 1) one empty history
    if B > 1:
        lengths[1] = 0
    valid = np.arange(L)[None, :] < lengths[:, None]  # most recent first: left-aligned

    def hist_strings(values):
        values = values.astype(object)
        values[~valid] = ""
        return values

    hist_gap = np.cumsum(rng.exponential(3600.0, size=(B, L)), axis=1) + 1.0
    batch = {
        "query": _texts(rng, B, empty_query_fraction),
        "item_id": _ids(rng, "item", num_items, (B,), oov_fraction),
        "item_category": _ids(rng, "category", num_categories, (B,), oov_fraction),
        "item_brand": _ids(rng, "brand", num_brands, (B,), oov_fraction),
        "item_title": _texts(rng, B, 0.05),
        "item_price": rng.lognormal(3.0, 1.0, size=B).astype(np.float32),
        "position": rng.integers(-1, 40, size=B).astype(np.int64),
        "item_clicks_7d": rng.poisson(5.0, size=B).astype(np.float32),
        "item_purchases_7d": rng.poisson(1.0, size=B).astype(np.float32),
        "hist_item_id": hist_strings(_ids(rng, "item", num_items, (B, L), oov_fraction)),
        "hist_category": hist_strings(_ids(rng, "category", num_categories, (B, L),
                                           oov_fraction)),
        "hist_brand": hist_strings(_ids(rng, "brand", num_brands, (B, L), oov_fraction)),
        "hist_event": hist_strings(rng.choice(HISTORY_EVENT_TYPES, size=(B, L))),
        "hist_price": np.where(valid, rng.lognormal(3.0, 1.0, size=(B, L)), 0.0
                               ).astype(np.float32),
        "hist_gap": np.where(valid, hist_gap, 0.0).astype(np.float32),
        # Models with a user embedding read user_id; event_id and timestamp are ignored.
        "user_id": np.array([f"u{i % 3}" for i in range(B)], dtype=object),
        "event_id": np.array([f"e{seed}_{i}" for i in range(B)], dtype=object),
        "timestamp": rng.integers(1_700_000_000, 1_700_100_000, size=B).astype(np.int64),
    }
    # Context features: counts and rates >= 0, with some undefined (-1).
    for name in CONTEXT_FEATURES:
        batch[name] = np.where(rng.random(B) < 0.15, -1.0, rng.poisson(3.0, size=B) * (
            rng.random(B) if name.endswith(("ctr", "cvr", "share")) else 1.0)
        ).astype(np.float32)
    if with_labels:
        click = (rng.random(B) < 0.3).astype(np.int64)
        purchase = click * (rng.random(B) < 0.3).astype(np.int64)
        present = rng.random(B) < 0.5
        batch.update({
            "click": click,
            "purchase": purchase,
            "price_range": np.where(present, rng.integers(0, num_price_ranges, size=B), -1
                                    ).astype(np.int64),
            "price_range_mask": present.astype(np.float32),
            "demand": rng.poisson(2.0, size=B).astype(np.float32),
            "demand_mask": (rng.random(B) < 0.8).astype(np.float32),
        })
    return batch

