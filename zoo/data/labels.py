"""Labels and behaviour histories for every impression, vectorised.

Events are put into one total order: timestamp, then file row. "Later" in a label means
after the impression in that order; features use only events with a timestamp strictly
before the impression's. Every step is a sort, a `searchsorted` or a gather over whole
columns, so 10 million events cost seconds, not a Python loop per event.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.compute as pc

from zoo.data import contract
from zoo.data.contract import EVENT_INDEX, SECONDS_PER_DAY


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    num_price_ranges: int = contract.DEFAULT_NUM_PRICE_RANGES
    price_horizon_days: float = contract.DEFAULT_PRICE_HORIZON_DAYS
    demand_horizon_days: float = contract.DEFAULT_DEMAND_HORIZON_DAYS
    eval_fraction: float = contract.DEFAULT_EVAL_FRACTION
    history_length: int = contract.DEFAULT_HISTORY_LENGTH
    price_labels_per_purchase: int = contract.DEFAULT_PRICE_LABELS_PER_PURCHASE

    def __post_init__(self):
        # Named like the flags that set them, so that the error points at the flag.
        checks = (("num_price_ranges", self.num_price_ranges >= 2, "an integer >= 2"),
                  ("price_horizon_days", self.price_horizon_days > 0, "> 0"),
                  ("demand_horizon_days", self.demand_horizon_days > 0, "> 0"),
                  ("eval_fraction", 0 <= self.eval_fraction < 1, "in [0, 1)"),
                  ("history_length", self.history_length >= 1, "an integer >= 1"),
                  ("price_labels_per_purchase", self.price_labels_per_purchase >= 0,
                   "an integer >= 0 (0: every impression)"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"--{name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "label_config") -> "LabelConfig":
        """A label config read back from a run's JSON; keys renamed since are accepted
        (with their new name) and unknown ones are an error naming them."""
        values = dict(values)
        for old, new in RENAMED_KEYS.items():
            if old in values and new not in values:
                values[new] = values.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected {sorted(known)}")
        return cls(**values)


# Keys of LabelConfig that were renamed: old name -> new name (old run specs still load).
RENAMED_KEYS = {"num_price_buckets": "num_price_ranges"}


def _codes(*columns) -> np.ndarray:
    """Dense int64 codes of the tuple of text columns (a hash-based group id)."""
    code = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        inv = pc.dictionary_encode(col).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        code = code * (int(inv.max()) + 1 if len(inv) else 1) + inv
        _, code = np.unique(code, return_inverse=True)
    return code.astype(np.int64)


# The draw that picks which training impressions keep a price-range label.
PRICE_LABEL_SEED = 20261205


class Prepared:
    """A validated log put in total order, with the lookups every label needs.

    `shared`: what a part of a log cannot see in its own events (`zoo.data.streaming`
    prepares a log by user buckets): the train/eval cut, the price edges and the last
    timestamp of the whole log. Absent, they come from `tables`.
    """

    def __init__(self, tables: contract.Tables, config: LabelConfig, shared=None):
        ev = tables.events
        self.tables = tables
        self.config = config
        n = tables.num_events
        # Total order: timestamp, then row in the file (stable sort).
        order = np.argsort(ev["timestamp"], kind="stable")
        self.order = order
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64)
        self.rank = rank  # position of each row in the total order
        self.ts = ev["timestamp"]
        self.kind = ev["event_type"]
        self.user = _codes(ev["user_id"])
        self.session = _codes(ev["user_id"], ev["session_id"])
        self.item = ev["item_code"]  # row in the items table; -1 on search rows
        self.quantity = ev["quantity"]
        if shared is not None:
            self.cut, self.edges, self.log_end = shared.cut, shared.edges, shared.log_end
        else:
            self.cut = contract.split_time(self.ts, config.eval_fraction)
            self.edges = contract.training_price_edges(tables, self.cut,
                                                       config.num_price_ranges)
            self.log_end = int(self.ts.max()) if n else 0
        self.item_bucket = contract.price_bucket(tables.items["price"], self.edges)
        self.impressions = np.flatnonzero(self.kind == EVENT_INDEX["impression"])
        # Impressions in total order, so chunks of examples come out time-sorted.
        self.impressions = self.impressions[np.argsort(rank[self.impressions], kind="stable")]

    def price_draws(self, rows: np.ndarray) -> np.ndarray:
        """The price-label draw of each event row: the row's number in one fixed stream,
        by its row in the whole log (a part of a log carries its rows' draws, `price_draw`)."""
        if "price_draw" in self.tables.events:
            return self.tables.events["price_draw"][rows]
        return np.random.default_rng(PRICE_LABEL_SEED).random(len(self.rank))[rows]


def _later_same_key(prep: Prepared, imp: np.ndarray, event: str) -> np.ndarray:
    """1 where an `event` row with the same (session, item) comes after the impression."""
    rows = np.flatnonzero(prep.kind == EVENT_INDEX[event])
    if len(rows) == 0:
        return np.zeros(len(imp), dtype=np.int64)
    num_items = int(prep.item.max()) + 2
    key_rows = prep.session[rows] * num_items + prep.item[rows]
    # Latest occurrence per key: sort by key then rank; take the last of each key.
    order = np.lexsort((prep.rank[rows], key_rows))
    keys = key_rows[order]
    last_rank = prep.rank[rows][order]
    is_last = np.r_[keys[1:] != keys[:-1], True]
    keys, last_rank = keys[is_last], last_rank[is_last]
    key_imp = prep.session[imp] * num_items + prep.item[imp]
    at = np.clip(np.searchsorted(keys, key_imp), 0, len(keys) - 1)
    hit = (keys[at] == key_imp) & (last_rank[at] > prep.rank[imp])
    return hit.astype(np.int64)


def _next_purchase(prep: Prepared, imp: np.ndarray) -> np.ndarray:
    """Row of the user's first purchase after the impression within H days; -1 if none.
    A training impression's purchase must come before the train/eval cut: no training label
    is made of eval events."""
    rows = np.flatnonzero(prep.kind == EVENT_INDEX["purchase"])
    out = np.full(len(imp), -1, dtype=np.int64)
    if len(rows) == 0:
        return out
    shift = np.int64(np.ceil(np.log2(len(prep.rank) + 1)))
    key_rows = (prep.user[rows] << shift) | prep.rank[rows]
    order = np.argsort(key_rows)
    keys, rows = key_rows[order], rows[order]
    key_imp = (prep.user[imp] << shift) | prep.rank[imp]
    at = np.searchsorted(keys, key_imp, side="right")
    valid = at < len(keys)
    at = np.minimum(at, len(keys) - 1)
    nxt = rows[at]
    horizon = np.int64(round(prep.config.price_horizon_days * SECONDS_PER_DAY))
    valid &= (prep.user[nxt] == prep.user[imp]) & (prep.ts[nxt] <= prep.ts[imp] + horizon)
    valid &= (prep.ts[imp] >= prep.cut) | (prep.ts[nxt] < prep.cut)
    out[valid] = nxt[valid]
    return out


def _price_label_mask(prep: Prepared, imp: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """1 where the price-range label counts: every eval impression with a next purchase; of
    the training impressions that share one next purchase (a user's impressions before it,
    often dozens with near-identical inputs), at most `price_labels_per_purchase` drawn at
    random (0: all). Repeated dozens of times a pass, one label is learnt by heart, and a
    head that has memorised who buys what next is confidently wrong on later days; the
    thinned set weighs each purchase about equally."""
    mask = (nxt >= 0).astype(np.float32)
    k = int(prep.config.price_labels_per_purchase)
    if k <= 0:
        return mask
    group = np.where((nxt >= 0) & (prep.ts[imp] < prep.cut), nxt, -1)
    # A draw per impression row, fixed by the log (not by the order of this call).
    draw = prep.price_draws(imp)
    order = np.lexsort((draw, group))
    g = group[order]
    start = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, bool)
    first = np.flatnonzero(start)
    rank_in_group = np.arange(len(g)) - first[np.cumsum(start) - 1]
    thinned = np.zeros(len(imp), bool)
    thinned[order[(g >= 0) & (rank_in_group >= k)]] = True
    mask[thinned] = 0.0
    return mask


def _item_window_sums(prep, imp: np.ndarray, event: str, start: int, end,
                      weights: np.ndarray | None = None, past: bool = False) -> np.ndarray:
    """Sum of `weights` (default 1) over `event` rows of the impressed item in a window.

    Future windows are (t + start, t + end]; past windows (`past=True`) are
    [t + start, t + end) so that they end strictly before the impression. `prep`: a
    `Prepared`, or any log with its `ts`, `kind`, `item` (and `quantity`, `cut`, `log_end`,
    `config` for demand): the item-level labels need only the items' events.
    """
    rows = np.flatnonzero(prep.kind == EVENT_INDEX[event])
    if len(rows) == 0:
        return np.zeros(len(imp), dtype=np.float32)
    t0 = int(prep.ts.min()) + min(start, 0)
    # `end` may be one per impression (windows that stop at a boundary).
    span = np.int64(int(prep.ts.max()) - t0 + abs(start) + int(np.max(np.abs(end), initial=0)) + 2)
    key_rows = prep.item[rows] * span + (prep.ts[rows] - t0)
    order = np.argsort(key_rows, kind="stable")
    keys = key_rows[order]
    w = np.ones(len(rows)) if weights is None else weights[rows]
    cum = np.r_[0, np.cumsum(w[order])]
    base = prep.item[imp] * span + (prep.ts[imp] - t0)
    side = "left" if past else "right"
    lo = np.searchsorted(keys, base + start, side=side)
    hi = np.searchsorted(keys, base + end, side=side)
    return (cum[hi] - cum[lo]).astype(np.float32)


def future_item_demand(prep, imp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quantity of the impressed item bought by anyone in (t, t + D days], mask).

    The window of a training impression stops before the train/eval cut (no training label
    is made of eval events), an eval impression's at the end of the log. A window that
    stops early is censored: its count is low by an unknown amount, so its mask is 0 and
    neither the loss nor the metrics read it."""
    horizon = int(round(prep.config.demand_horizon_days * SECONDS_PER_DAY))
    t = prep.ts[imp]
    is_train = t < prep.cut
    boundary = np.where(is_train, prep.cut - 1, prep.log_end)
    end = np.minimum(horizon, boundary - t)
    demand = _item_window_sums(prep, imp, "purchase", 0, end, weights=prep.quantity)
    return demand, (t + horizon <= boundary).astype(np.float32)


def item_trailing_stats(prep, imp: np.ndarray) -> dict:
    """The impressed item's clicks and purchased quantity by anyone in [t - 7 days, t).

    Item-level features a shop's feature store has at serving time; the demand head needs
    them to see an item's trend, which ids alone cannot carry.
    """
    week = 7 * SECONDS_PER_DAY
    return {
        "item_clicks_7d": _item_window_sums(prep, imp, "click", -week, 0, past=True),
        "item_purchases_7d": _item_window_sums(
            prep, imp, "purchase", -week, 0, weights=prep.quantity, past=True),
    }


def compute_labels(tables: contract.Tables, config: LabelConfig | None = None,
                   prepared: Prepared | None = None, demand: tuple | None = None) -> dict:
    """The four labels (and the price-range mask) for every impression, in time order.

    demand: (demand, demand_mask) of the impressions when computed elsewhere (the item's
    purchases by every user, which a user bucket of `zoo.data.streaming` does not hold)."""
    config = config or LabelConfig()
    prep = prepared or Prepared(tables, config)
    imp = prep.impressions
    nxt = _next_purchase(prep, imp)
    bucket = np.where(nxt >= 0, prep.item_bucket[prep.item[np.maximum(nxt, 0)]],
                      -1).astype(np.int64)
    demand, demand_mask = demand if demand is not None else future_item_demand(prep, imp)
    return {
        "row": imp,
        "event_id": tables.events["event_id"].take(imp).to_numpy(zero_copy_only=False),
        "timestamp": prep.ts[imp],
        "is_eval": prep.ts[imp] >= prep.cut,
        "click": _later_same_key(prep, imp, "click"),
        "purchase": _later_same_key(prep, imp, "purchase"),
        "price_range": bucket,
        "price_range_mask": _price_label_mask(prep, imp, nxt),
        "demand": demand,
        "demand_mask": demand_mask,
    }


class HistoryIndex:
    """Each user's behaviour events (click/cart/purchase) sorted by time, for gathers."""

    def __init__(self, prep: Prepared):
        kinds = [EVENT_INDEX[e] for e in contract.HISTORY_EVENTS]
        rows = np.flatnonzero(np.isin(prep.kind, kinds))
        shift = np.int64(34)  # timestamps are < 2**34 s (year 2514)
        key = (prep.user[rows] << shift) | prep.ts[rows]
        order = np.lexsort((prep.rank[rows], key))
        self.rows = rows[order]
        self.keys = key[order]
        self.shift = shift
        self.prep = prep
        # First index of each user's block.
        users = prep.user[self.rows]
        self.user_start = np.full(int(prep.user.max()) + 1, len(self.rows), dtype=np.int64)
        if len(users):
            first = np.r_[True, users[1:] != users[:-1]]
            self.user_start[users[first]] = np.flatnonzero(first)

    def gather(self, imp: np.ndarray, length: int):
        """Rows of the last `length` history events strictly before each impression.

        Returns (rows [n, length] most recent first, valid mask [n, length]).
        """
        prep = self.prep
        key = (prep.user[imp] << self.shift) | prep.ts[imp]
        end = np.searchsorted(self.keys, key, side="left")  # strictly earlier timestamps
        start = self.user_start[prep.user[imp]]
        idx = end[:, None] - 1 - np.arange(length)[None, :]
        valid = idx >= start[:, None]
        idx = np.where(valid, idx, 0)
        rows = self.rows[idx] if len(self.rows) else np.zeros_like(idx)
        return rows, valid

    def next_event(self, imp: np.ndarray):
        """Row of each impression's user's first history event strictly after it, and
        whether there is one. A training impression's next event must also come before the
        train/eval cut, so that pre-training on the training split never sees the eval
        period."""
        prep = self.prep
        key = (prep.user[imp] << self.shift) | prep.ts[imp]
        at = np.searchsorted(self.keys, key, side="right")  # strictly later timestamps
        valid = at < len(self.rows)
        rows = self.rows[np.minimum(at, max(len(self.rows) - 1, 0))] if len(self.rows) \
            else np.zeros(len(imp), dtype=np.int64)
        valid &= prep.user[rows] == prep.user[imp]
        is_train = prep.ts[imp] < prep.cut
        valid &= ~is_train | (prep.ts[rows] < prep.cut)
        return rows, valid
