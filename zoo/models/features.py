"""The raw feature and label contract shared by every model family.

A batch is a dict of dense tensors (B = batch, L = history length). History columns are
MOST RECENT FIRST (column 0 = latest event) and padded with "" / 0. Keys not listed here
(`event_id`, `timestamp`, the labels, ...) are ignored by the models.
"""

from __future__ import annotations

from zoo.data.log_features import CONTEXT

# The impression's context from the log before it (see `zoo.data.log_features`): float32
# values >= 0, -1 where undefined. Served beside the request, like the item's 7-day counts.
CONTEXT_FEATURES = tuple(CONTEXT)

# name -> (dtype, rank): rank 1 = [B], rank 2 = [B, L].
RAW_FEATURES = {
    # Who sees the impression: models with a user embedding look it up (users not seen in
    # training share OOV buckets); the others ignore it.
    "user_id": ("string", 1),
    "query": ("string", 1),
    "item_id": ("string", 1),
    "item_category": ("string", 1),
    "item_brand": ("string", 1),
    "item_title": ("string", 1),
    "item_price": ("float32", 1),
    "position": ("int64", 1),
    # The candidate item's activity by anyone in the 7 days before the impression (a shop's
    # feature store serves these beside the item).
    "item_clicks_7d": ("float32", 1),
    "item_purchases_7d": ("float32", 1),
    "hist_item_id": ("string", 2),
    "hist_category": ("string", 2),
    "hist_brand": ("string", 2),
    "hist_event": ("string", 2),
    "hist_price": ("float32", 2),
    "hist_gap": ("float32", 2),
    **{name: ("float32", 1) for name in CONTEXT_FEATURES},
}

HISTORY_EVENT_TYPES = ("click", "cart", "purchase")

LABELS = {
    "click": ("int64", 1),
    "purchase": ("int64", 1),
    "price_range": ("int64", 1),  # -1 when missing
    "price_range_mask": ("float32", 1),  # 1 present / 0 missing
    "demand": ("float32", 1),  # a count >= 0
    "demand_mask": ("float32", 1),  # 1 = a whole window / 0 = censored by the log's end
}

# The model outputs (and per-example losses) of the multi-task families.
TASKS = ("click", "purchase", "price_range", "demand")


def split_labels(batch: dict) -> tuple[dict, dict]:
    """(raw features, labels) of a batch dict holding both; other keys are dropped."""
    features = {k: batch[k] for k in RAW_FEATURES}
    labels = {k: batch[k] for k in LABELS if k in batch}
    return features, labels
