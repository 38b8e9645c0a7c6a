"""What a real-time `recommend` call needs beside the two models, from the log or a store.

The rankers' context features (`zoo.data.log_features.CONTEXT`) are computed offline for
every (request, candidate) pair from the whole log. A served recommendation does not know
its candidates before retrieval, so the exported `recommend` signature splits them by what
they depend on:

  REQUEST_FEATURES  the user and the session only (session so far, the user's totals, the
                    clock): the caller sends them, one value per request; `request_inputs`
                    computes them from the user's own events by the examples' code.
  ITEM_FEATURES     the candidate only (its trailing counts and smoothed rates): a
                    `snapshot` of the log at export time, a table inside the graph. A new
                    snapshot is a new version (export again).
  PAIR_FEATURES     both: the graph computes them from the request's history (sent in full,
                    not only the model's last L events), the categories of the session's
                    impressions so far, and the snapshot's (query, category) table.

With the user's whole history sent and a request at the snapshot's time, the graph's
features equal the offline ones exactly (tested against `requests.candidate_features`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoo.data import contract, labels as labels_lib, log_features
from zoo.data import requests as requests_lib
from zoo.data.contract import EVENT_INDEX

REQUEST_FEATURES = (
    "session_seconds", "session_events", "session_searches", "session_impressions",
    "session_clicks", "session_carts", "user_impressions", "user_clicks", "user_purchases",
    "user_ctr", "user_cvr", "hour_of_day", "day_of_week")
ITEM_FEATURES = ("item_impressions_1d", "item_clicks_1d", "item_impressions_7d", "item_ctr",
                 "item_cvr")
# The raw per-item inputs of the models (not context features) that the snapshot serves too.
ITEM_RAW = ("item_clicks_7d", "item_purchases_7d")
PAIR_FEATURES = (
    "session_category_share", "user_item_clicks", "user_item_carts", "user_item_purchases",
    "user_item_seconds", "user_category_clicks", "user_category_purchases",
    "user_category_seconds", "user_brand_clicks", "user_brand_purchases",
    "query_category_impressions", "query_category_ctr", "price_vs_user_purchases",
    "price_vs_user_clicks", "relative_price_vs_user", "relative_price_sd_user",
    "relative_price_vs_user_category")
assert sorted(REQUEST_FEATURES + ITEM_FEATURES + PAIR_FEATURES) == sorted(
    log_features.CONTEXT), "every context feature must be served from exactly one place"
HISTORY_INPUTS = ("hist_item_id", "hist_category", "hist_brand", "hist_event", "hist_price",
                  "hist_gap")
# Separates the query from the category in the snapshot's (query, category) keys.
KEY_SEPARATOR = "\x1f"
# The user of the snapshot's pseudo-request: an id no log holds.
SNAPSHOT_USER = "\x00snapshot"


@dataclasses.dataclass
class Snapshot:
    """The candidate-only statistics of a log at `time` (every event strictly before it)."""

    time: int
    item: dict            # ITEM_FEATURES + ITEM_RAW -> [N] float32, items-table order
    query_category_keys: np.ndarray      # [P] object: query + KEY_SEPARATOR + category
    query_category_impressions: np.ndarray   # [P] float32
    query_category_clicks: np.ndarray        # [P] float32: clicks that have happened by then
    click_rate: float     # the shop's click rate: the prior of the smoothed rates
    # `log_features.category_levels` of the items table: the relative prices' levels.
    category_names: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))
    category_levels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


def snapshot(tables: contract.Tables, time: int | None = None) -> Snapshot:
    """The statistics at `time` (default: one second after the log's last event)."""
    ev = tables.events
    ts = ev["timestamp"].astype(np.int64)
    t = int(ts.max()) + 1 if time is None else int(time)
    n = len(tables.items["price"])
    pseudo = requests_lib.Requests(
        user_id=np.array([SNAPSHOT_USER], object), session_id=np.array([SNAPSHOT_USER], object),
        timestamp=np.array([t], np.int64), query=np.array([""], object), clicked=[np.zeros(0)],
        purchased=[np.zeros(0)])
    # Every item as a candidate of one request: the items' columns by the examples' code.
    cand = requests_lib.candidate_features(tables, pseudo, np.arange(n)[None, :],
                                           labels_lib.LabelConfig(history_length=1))
    item = {k: np.asarray(cand[k], np.float32) for k in ITEM_FEATURES + ITEM_RAW}

    kind = ev["event_type"]
    imp = np.flatnonzero((kind == EVENT_INDEX["impression"]) & (ts < t))
    session = labels_lib._codes(ev["user_id"], ev["session_id"])
    clicked_at = log_features._click_time(ts, kind, session, ev["item_code"], imp)
    queries = np.asarray(pc.fill_null(ev["query"].take(pa.array(imp)), "").to_numpy(
        zero_copy_only=False), object)
    categories = np.asarray(tables.items["category"].take(
        pa.array(np.maximum(ev["item_code"][imp], 0))).to_numpy(zero_copy_only=False), object)
    keys = np.array([q + KEY_SEPARATOR + c for q, c in zip(queries, categories)], object)
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    impressions = np.bincount(inverse, minlength=len(uniq))
    clicks = np.bincount(inverse, weights=(clicked_at < t), minlength=len(uniq))
    # The shop's click rate at t, as `log_features.build` smooths with it.
    n_imp = float(np.sum((kind == EVENT_INDEX["impression"]) & (ts < t)))
    n_click = float(np.sum((kind == EVENT_INDEX["click"]) & (ts < t)))
    rate = n_click / n_imp if n_imp > 0 else 0.0
    names, levels = log_features.category_levels(tables.items)
    return Snapshot(time=t, item=item, query_category_keys=uniq.astype(object),
                    query_category_impressions=impressions.astype(np.float32),
                    query_category_clicks=clicks.astype(np.float32), click_rate=rate,
                    category_names=names.astype(object), category_levels=levels)


def request_inputs(tables: contract.Tables, reqs: requests_lib.Requests,
                   history_limit: int, session_limit: int = 64) -> dict:
    """The `recommend` signature's inputs of each request (numpy; strings as object arrays):
    user_id, query, the user's behaviour events before it (up to `history_limit`, most
    recent first: all of them feed the counts, the first L the models), the categories of
    the session's impressions so far (up to `session_limit`, most recent first) and
    REQUEST_FEATURES. Computed by the examples' own code from `tables`, which need only hold
    the requesting users' events (an online store passes just those)."""
    if history_limit < 1 or session_limit < 1:
        raise ValueError("history_limit and session_limit must be >= 1")
    if not len(reqs):
        raise ValueError("no requests")
    cand = requests_lib.candidate_features(
        tables, reqs, np.zeros((len(reqs), 1), np.int64),
        labels_lib.LabelConfig(history_length=history_limit))
    out = {"user_id": np.asarray(reqs.user_id, object), "query": np.asarray(reqs.query, object)}
    # Columns past the longest history are padding for every request: cut them.
    width = max(1, int((cand["hist_item_id"] != "").sum(axis=1).max()))
    for name in HISTORY_INPUTS:
        out[name] = cand[name][:, :width]
    for name in REQUEST_FEATURES:
        out[name] = np.asarray(cand[name], np.float32)
    out["session_category"] = _session_categories(tables, reqs, session_limit)
    return out


def _session_categories(tables: contract.Tables, reqs, limit: int) -> np.ndarray:
    """[R, limit] categories of each request's session impressions before it, latest first."""
    ev = tables.events
    ts = ev["timestamp"].astype(np.int64)
    imp = np.flatnonzero(ev["event_type"] == EVENT_INDEX["impression"])
    users = np.asarray(ev["user_id"].take(pa.array(imp)).to_numpy(zero_copy_only=False), object)
    sessions = np.asarray(ev["session_id"].take(pa.array(imp)).to_numpy(zero_copy_only=False),
                          object)
    cats = np.asarray(tables.items["category"].take(pa.array(np.maximum(
        ev["item_code"][imp], 0))).to_numpy(zero_copy_only=False), object)
    by_session: dict = {}
    for r, key in enumerate(zip(users.tolist(), sessions.tolist())):
        by_session.setdefault(key, []).append(r)
    out = np.full((len(reqs), limit), "", object)
    for j, (u, s, t) in enumerate(zip(reqs.user_id, reqs.session_id, reqs.timestamp)):
        rows = np.asarray(by_session.get((u, s), []), np.int64)
        rows = rows[ts[imp[rows]] < t] if len(rows) else rows
        rows = rows[np.lexsort((-rows, -ts[imp[rows]]))][:limit]  # latest first
        out[j, :len(rows)] = cats[rows]
    return out
