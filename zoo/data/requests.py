"""Recommendation requests replayed from a log, and the raw features of their candidates.

A request is what a shop asks when a session opens: one per (user_id, session_id), at the
time of the session's first event, with that session's first query when the session opens
with a search ("" otherwise). What the session then clicked and bought is what a good
answer would have shown (`Requests.clicked` / `purchased`).

`candidate_features` gives each (request, candidate item) pair the raw features an
impression of that item at that moment would have had — the user's history, the session so
far, the item's trailing counts and every context feature of the examples — computed by the
same code as the examples (`examples.gather`, `log_features.build`), from the events
strictly before the request. The pairs enter the log as rows of a kind of their own
(`REQUEST_KIND`): no count of the log's events (impressions, clicks, ...) includes them, so
one request cannot see another.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from zoo.data import contract, examples as examples_lib, labels as labels_lib, log_features
from zoo.data.contract import EVENT_INDEX

# The event-type code of the request rows: no event type's, so no count selects them.
REQUEST_KIND = len(contract.EVENT_TYPES)


@dataclasses.dataclass
class Requests:
    """One row per request; `clicked` / `purchased`: per request the item codes (rows of
    the items table) the session clicked / bought, distinct."""

    user_id: np.ndarray
    session_id: np.ndarray
    timestamp: np.ndarray
    query: np.ndarray
    clicked: list
    purchased: list

    def __len__(self):
        return len(self.timestamp)

    def take(self, index) -> "Requests":
        index = np.asarray(index)
        return Requests(self.user_id[index], self.session_id[index], self.timestamp[index],
                        self.query[index], [self.clicked[i] for i in index],
                        [self.purchased[i] for i in index])


def _text(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)


def session_requests(tables: contract.Tables, start: int, end: int | None = None) -> Requests:
    """The requests of the sessions whose first event falls in [start, end), in time order.
    A session that began before `start` is not one of them (its opening is not there)."""
    ev = tables.events
    ts = ev["timestamp"].astype(np.int64)
    session = labels_lib._codes(ev["user_id"], ev["session_id"])
    order = np.lexsort((np.arange(len(ts)), ts, session))  # by session, time, file row
    first = order[np.r_[True, session[order][1:] != session[order][:-1]]]
    keep = ts[first] >= start
    if end is not None:
        keep &= ts[first] < end
    first = first[keep]
    first = first[np.argsort(ts[first], kind="stable")]
    kind = ev["event_type"]
    query = np.where(kind[first] == EVENT_INDEX["search"], _text(ev["query"].take(
        pa.array(first))), "").astype(object)
    slot = np.full(int(session.max(initial=0)) + 1, -1, np.int64)
    slot[session[first]] = np.arange(len(first))

    def items_of(event: str) -> list:
        rows = np.flatnonzero((kind == EVENT_INDEX[event]) & (slot[session] >= 0))
        req, item = slot[session[rows]], ev["item_code"][rows]
        pairs = np.unique(np.stack([req, item], 1), axis=0) if len(rows) else np.zeros(
            (0, 2), np.int64)
        bounds = np.searchsorted(pairs[:, 0], np.arange(len(first) + 1))
        return [pairs[bounds[i]:bounds[i + 1], 1] for i in range(len(first))]

    return Requests(user_id=_text(ev["user_id"].take(pa.array(first))),
                    session_id=_text(ev["session_id"].take(pa.array(first))),
                    timestamp=ts[first], query=query, clicked=items_of("click"),
                    purchased=items_of("purchase"))


def events_before(tables: contract.Tables, end: int) -> contract.Tables:
    """The log cut at `end`: its events with a timestamp before it (the items table whole),
    so that nothing after a split's end reaches what is drawn from it."""
    ev = tables.events
    keep = np.asarray(ev["timestamp"]) < end
    mask = pa.array(keep)
    events = {name: values.filter(mask) if isinstance(values, (pa.Array, pa.ChunkedArray))
              else np.asarray(values)[keep] for name, values in ev.items()}
    return dataclasses.replace(tables, events=events)


def _with_rows(tables: contract.Tables, requests: Requests, request_index: np.ndarray,
               items: np.ndarray) -> tuple[contract.Tables, np.ndarray]:
    """The log with one request row per (request, item) pair appended; their row numbers."""
    ev = tables.events
    n, m = len(ev["timestamp"]), len(items)
    ids = np.array([f"request:{i}:{j}" for i, j in zip(request_index, range(m))], object)
    added = {
        "event_id": pa.array(ids, pa.string()),
        "user_id": pa.array(requests.user_id[request_index], pa.string()),
        "session_id": pa.array(requests.session_id[request_index], pa.string()),
        "timestamp": requests.timestamp[request_index].astype(ev["timestamp"].dtype),
        "event": pa.array(np.full(m, "request", object), pa.string()),
        "query": pa.array(requests.query[request_index], pa.string()),
        "item_id": tables.items["item_id"].take(pa.array(items)),
        "position": np.full(m, -1, ev["position"].dtype),
        "quantity": np.ones(m, ev["quantity"].dtype),
        "event_type": np.full(m, REQUEST_KIND, ev["event_type"].dtype),
        "item_code": items.astype(np.int64),
    }
    events = {}
    for name, values in ev.items():
        extra = added[name]
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            events[name] = pa.concat_arrays([values, extra.cast(values.type)])
        else:
            events[name] = np.concatenate([values, extra])
    return dataclasses.replace(tables, events=events), np.arange(n, n + m)


def candidate_features(tables: contract.Tables, requests: Requests, candidates: np.ndarray,
                       label_config: labels_lib.LabelConfig) -> dict:
    """Raw feature columns (`zoo.models.features.RAW_FEATURES`, strings as object arrays)
    of every (request, candidate) pair, request-major: row r * C + c is request r's c-th
    candidate. `candidates` [R, C] item codes (rows of the items table, >= 0)."""
    candidates = np.asarray(candidates, np.int64)
    if candidates.ndim != 2 or candidates.shape[0] != len(requests):
        raise ValueError(f"candidates: expected [{len(requests)}, C] item codes, got shape "
                         f"{candidates.shape}")
    if (candidates < 0).any() or (candidates >= len(tables.items["price"])).any():
        raise ValueError("candidates: item codes must be rows of the items table")
    num_candidates = candidates.shape[1]
    request_index = np.repeat(np.arange(len(requests)), num_candidates)
    aug, rows = _with_rows(tables, requests, request_index, candidates.ravel())
    prep = labels_lib.Prepared(aug, label_config)
    history = labels_lib.HistoryIndex(prep)
    item_stats = labels_lib.item_trailing_stats(prep, rows)
    built = log_features.build(aug, impressions=rows)
    context = {name: np.nan_to_num(built[name], nan=examples_lib.MISSING).astype(np.float32)
               for name in examples_lib.CONTEXT_FEATURES}
    coded = examples_lib.gather(aug, prep, history, rows, item_stats, context,
                                label_config.history_length)
    return examples_lib.to_text(aug, coded)


def catalogue(tables: contract.Tables) -> dict:
    """The raw item fields of every item of the items table, in table order."""
    items = tables.items
    return {"item_id": _text(items["item_id"]), "item_category": _text(items["category"]),
            "item_brand": _text(items["brand"]), "item_title": _text(items["title"]),
            "item_price": np.asarray(items["price"], np.float32)}


def next_session_candidates(tables: contract.Tables, requests: Requests, start: int,
                            end: int, num_negatives: int, seed: int
                            ) -> tuple[Requests, np.ndarray]:
    """The self-supervised ranking task of `trainers.pretrain --pretext next_session`:
    (the requests whose session clicked an item, candidates [R, 1 + num_negatives]).

    Column 0 is one item the session clicked (drawn at random among its clicks); the
    others are items it did not click, half of the same category as that item (the
    shop's result lists hold one category's items: negatives a category alone cannot
    tell apart) and half drawn by how often the shop showed each item in [start, end)
    (an exposure-shaped catalogue sample, not the session's own impressions: which of
    those went unclicked is the click label, which pre-training must not read)."""
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero([len(c) > 0 for c in requests.clicked])
    requests = requests.take(keep)
    num_requests = len(requests)
    num_items = len(tables.items["price"])
    if num_requests == 0:
        return requests, np.zeros((0, 1 + num_negatives), np.int64)
    positive = np.array([c[rng.integers(len(c))] for c in requests.clicked], np.int64)
    _, category = np.unique(np.asarray(_text(tables.items["category"]), str),
                            return_inverse=True)
    by_category = np.argsort(category, kind="stable")
    bounds = np.searchsorted(category[by_category], np.arange(category.max() + 2))
    lo, size = bounds[category[positive]], np.diff(bounds)[category[positive]]
    half = num_negatives // 2
    ev = tables.events
    ts = np.asarray(ev["timestamp"], np.int64)
    shown = (ev["event_type"] == EVENT_INDEX["impression"]) & (ts >= start) & (ts < end)
    exposure = np.bincount(ev["item_code"][shown], minlength=num_items) + 1.0
    exposure /= exposure.sum()
    same_column = np.arange(num_negatives) < half

    def draw(rows, columns, uniform=False):
        """Items for cells (rows, columns) of the negatives, each by its column's rule."""
        out = rng.choice(num_items, size=len(rows), p=exposure)
        near = same_column[columns]
        if uniform:
            out[near] = rng.integers(0, num_items, size=int(near.sum()))
        else:
            out[near] = by_category[lo[rows[near]] + (
                rng.random(int(near.sum())) * size[rows[near]]).astype(np.int64)]
        return out

    rows, columns = np.divmod(np.arange(num_requests * num_negatives), num_negatives)
    negatives = draw(rows, columns).reshape(num_requests, num_negatives)
    # A drawn item the session clicked is no negative: drawn again by the same rule (a
    # category the session clicked through is left for a uniform draw after 20 tries).
    clicked = np.concatenate([i * num_items + np.asarray(c, np.int64)
                              for i, c in enumerate(requests.clicked)])
    for attempt in range(100):
        bad = np.isin(np.arange(num_requests)[:, None] * num_items + negatives, clicked)
        if not bad.any():
            break
        rows, columns = np.nonzero(bad)
        negatives[rows, columns] = draw(rows, columns, uniform=attempt >= 20)
    else:
        raise ValueError("next_session_candidates: the catalogue is too small for "
                         f"{num_negatives} negatives that the sessions did not click")
    candidates = np.concatenate([positive[:, None], negatives], axis=1)
    return requests, candidates
