"""Impression examples: features from the past, labels from the future, in column chunks.

`ExampleSource` is the one place that turns a contract folder into examples; the
TFDS builder and the benchmarks consume it. Chunks bound memory: only `chunk_size`
impressions x `history_length` history slots are materialised at a time.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from zoo.data import contract, labels as labels_lib, log_features

# Feature names and dtypes of one example (the history features are lists of length <= L,
# most recent event first). The parser in `zoo.data.pipeline` pads them to L.
SCALAR_FEATURES = {
    "event_id": np.bytes_, "user_id": np.bytes_, "query": np.bytes_,
    "item_id": np.bytes_, "item_category": np.bytes_, "item_brand": np.bytes_,
    "item_title": np.bytes_, "item_price": np.float32, "position": np.int64,
    "timestamp": np.int64, "item_clicks_7d": np.float32, "item_purchases_7d": np.float32,
}
# The impression's context from the whole log before it (`zoo.data.log_features.CONTEXT`:
# the session so far, the user's counts and recency with the candidate's item, category and
# brand, trailing item and query x category statistics, price against the user's past);
# what a feature store serves beside the request. Every value is >= 0; MISSING (-1) where
# it is undefined (a ratio over nothing, a time since an event that never happened).
CONTEXT_FEATURES = {name: np.float32 for name in log_features.CONTEXT}
MISSING = -1.0
SCALAR_FEATURES.update(CONTEXT_FEATURES)
SEQUENCE_FEATURES = {
    "hist_item_id": np.bytes_, "hist_category": np.bytes_, "hist_brand": np.bytes_,
    "hist_event": np.bytes_, "hist_price": np.float32, "hist_price_bucket": np.int64,
    "hist_gap": np.float32,
}
LABEL_FEATURES = {
    "click": np.int64, "purchase": np.int64, "price_range": np.int64,
    "price_range_mask": np.float32, "demand": np.float32, "demand_mask": np.float32,
}
# Targets of the next-event pretext of pre-training (from the future, like the labels, and
# written beside them): the item and category of the user's next behaviour event after the
# impression; "" when there is none (end of the log, or past the train/eval cut).
PRETEXT_FEATURES = {"next_item_id": np.bytes_, "next_category": np.bytes_}


def tf_dtype(np_dtype):
    """The TensorFlow dtype of a feature's numpy dtype above."""
    import tensorflow as tf

    return {np.bytes_: tf.string, np.float32: tf.float32, np.int64: tf.int64}[np_dtype]


def _take(arr: pa.Array, idx: np.ndarray) -> np.ndarray:
    return arr.take(pa.array(idx.ravel())).to_numpy(zero_copy_only=False).reshape(idx.shape)


class ExampleSource:
    """Labels and history index of one log, computed once; chunks gathered per split."""

    def __init__(self, tables: contract.Tables, config: labels_lib.LabelConfig | None = None,
                 shared=None):
        """shared: for a part of a log that holds whole users (`zoo.data.streaming`), the
        whole log's cut, price edges, end and shop counts, and `cross_columns(tables,
        impressions)`: the item-level labels, statistics and features computed over every
        user's events (`log_features.CROSS_USER`, "stat:" / "label:" columns)."""
        self.config = config or labels_lib.LabelConfig()
        self.tables = tables
        self.prep = labels_lib.Prepared(tables, self.config, shared)
        cross = (shared.cross_columns(tables, self.prep.impressions) if shared is not None
                 else None)
        self.labels = labels_lib.compute_labels(
            tables, self.config, prepared=self.prep,
            demand=None if cross is None else (cross["label:demand"],
                                               cross["label:demand_mask"]))
        self.history = labels_lib.HistoryIndex(self.prep)
        if cross is None:
            self.item_stats = labels_lib.item_trailing_stats(self.prep, self.labels["row"])
        else:
            self.item_stats = {name: cross["stat:" + name].astype(np.float32)
                               for name in ("item_clicks_7d", "item_purchases_7d")}
        built = log_features.build(tables, impressions=self.labels["row"],
                                   shop=None if shared is None else shared.shop, cross=cross)
        self.context = {name: np.nan_to_num(built[name], nan=MISSING).astype(np.float32)
                        for name in CONTEXT_FEATURES}

    def num_examples(self, split: str) -> int:
        is_eval = self.labels["is_eval"]
        return int(is_eval.sum() if split == "eval" else (~is_eval).sum())

    def chunks(self, split: str, chunk_size: int = 100_000, text: bool = True) -> Iterator[dict]:
        """Columns of the split's examples in time order, `chunk_size` at a time.

        Sequence features come as [n, L] arrays plus `hist_length` [n]; slots past the
        length are padding. With `text=False` the item and event-type strings stay codes
        (`item`, `hist_item`: rows of the items table; `hist_kind`: event type index; -1 on
        padding), which is what the batched serialiser wants: no Python string per value.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        lab = self.labels
        picked = np.flatnonzero(lab["is_eval"] if split == "eval" else ~lab["is_eval"])
        for start in range(0, len(picked), chunk_size):
            coded = self._coded(picked[start:start + chunk_size])
            yield self.to_text(coded) if text else coded

    def _coded(self, sel: np.ndarray) -> dict:
        lab = self.labels
        cols = gather(self.tables, self.prep, self.history, lab["row"][sel],
                      {name: values[sel] for name, values in self.item_stats.items()},
                      {name: values[sel] for name, values in self.context.items()},
                      self.config.history_length)
        for name in LABEL_FEATURES:
            cols[name] = lab[name][sel]
        return cols

    def to_text(self, coded: dict) -> dict:
        return to_text(self.tables, coded)


def gather(tables: contract.Tables, prep: labels_lib.Prepared, history: labels_lib.HistoryIndex,
           rows: np.ndarray, item_stats: dict, context: dict, history_length: int) -> dict:
    """The coded feature columns (no labels) of the event `rows`, each seen as an impression
    of its item: what the examples hold, and what a recommendation request's candidates
    get (`zoo.data.requests`). `item_stats` / `context`: those rows' trailing item counts
    and context features, already computed."""
    ev, items = tables.events, tables.items
    imp = rows
    item = prep.item[imp]
    rows, valid = history.gather(imp, history_length)
    h_item = np.where(valid, prep.item[rows], -1)
    cols = {
        "event_id": _take(ev["event_id"], imp),
        "user_id": _take(ev["user_id"], imp),
        "query": _take(ev["query"], imp),
        "item": item,
        "item_price": items["price"][item].astype(np.float32),
        "position": ev["position"][imp],
        "timestamp": prep.ts[imp],
        **item_stats,
        **context,
        "hist_length": valid.sum(axis=1).astype(np.int64),
        "hist_item": h_item,
        "hist_kind": np.where(valid, prep.kind[rows], -1).astype(np.int64),
        "hist_price": np.where(valid, items["price"][h_item], 0).astype(np.float32),
        "hist_price_bucket": np.where(valid, prep.item_bucket[h_item], 0),
        "hist_gap": np.where(valid, prep.ts[imp][:, None] - prep.ts[rows], 0).astype(
            np.float32),
    }
    nxt, has_next = history.next_event(imp)
    cols["next_item"] = np.where(has_next, prep.item[nxt], -1)
    return cols


def to_text(tables: contract.Tables, coded: dict) -> dict:
    """Coded chunk → the feature columns by name, strings as numpy object arrays."""
    items = tables.items
    cols = {k: v for k, v in coded.items()
            if k not in ("item", "hist_item", "hist_kind", "next_item")}
    for name, column in ITEM_TEXT.items():
        cols[name] = _take(items[column], coded["item"])
    for name, column in HIST_TEXT.items():
        values = _take(items[column], np.maximum(coded["hist_item"], 0))
        cols[name] = np.where(coded["hist_item"] >= 0, values, "")
    for name, column in NEXT_TEXT.items():
        values = _take(items[column], np.maximum(coded["next_item"], 0))
        cols[name] = np.where(coded["next_item"] >= 0, values, "")
    names = np.array(contract.EVENT_TYPES + ("",), dtype=object)
    cols["hist_event"] = names[coded["hist_kind"]]
    return cols


# Text features taken from the items table: example feature -> items column.
ITEM_TEXT = {"item_id": "item_id", "item_category": "category", "item_brand": "brand",
             "item_title": "title"}
HIST_TEXT = {"hist_item_id": "item_id", "hist_category": "category", "hist_brand": "brand"}
NEXT_TEXT = {"next_item_id": "item_id", "next_category": "category"}
