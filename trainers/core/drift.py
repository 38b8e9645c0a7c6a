"""How far a new day of the log has moved from the window a model was trained on.

The population stability index (PSI) is the drift measure credit-risk and ad teams already
track, with their thresholds: below 0.1 stable, 0.1-0.25 moderate, above 0.25 large. It is
computed per feature over the impressions of the training window (expected) and of the new
day (actual): the candidate's log price, its category, the length of the user's behaviour
history, whether a query was typed, and the model's predicted probabilities; beside them the
share of the new day's impressions whose ids the model trained on the window has never seen
(they fall into its OOV buckets). No library computes PSI over these log columns, and the formula is one line,
so it is written here; the bins are the training window's deciles (categories: its values,
with everything else as one bin).
"""

from __future__ import annotations

import numpy as np

PSI_MODERATE, PSI_LARGE = 0.1, 0.25
# A new day with more of its impressions on unseen items than this is flagged.
OOV_LARGE = 0.1
_FLOOR = 1e-4  # share given to an empty bin, so that the log stays finite


def psi_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), _FLOOR)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def psi_numeric(expected, actual, bins: int = 10) -> float:
    """PSI of a number over the deciles of `expected` (ties merge bins)."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    expected, actual = expected[np.isfinite(expected)], actual[np.isfinite(actual)]
    if not len(expected) or not len(actual):
        return float("nan")
    edges = np.unique(np.quantile(expected, np.arange(1, bins) / bins))
    count = lambda x: np.bincount(np.searchsorted(edges, x, side="right"),
                                  minlength=len(edges) + 1) / len(x)
    return psi_shares(count(expected), count(actual))


def psi_categorical(expected, actual) -> float:
    """PSI of a categorical column: the expected side's values, the rest as one bin."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if not len(expected) or not len(actual):
        return float("nan")
    values = np.unique(expected)
    code = lambda x: np.where(np.isin(x, values), np.searchsorted(values, x), len(values))
    count = lambda x: np.bincount(code(x), minlength=len(values) + 1) / len(x)
    return psi_shares(count(expected), count(actual))


def impression_features(tables, history_length: int) -> dict:
    """Per impression of a contract's tables: its timestamp, the candidate's log price,
    category and brand, its id and the user's, the user's behaviour events (click, cart,
    purchase) before it capped at `history_length`, and whether a query was typed."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from zoo.data.contract import EVENT_INDEX
    from zoo.data.labels import _codes

    ev, items = tables.events, tables.items
    kind, ts, code = ev["event_type"], ev["timestamp"], ev["item_code"]
    imp = np.flatnonzero(kind == EVENT_INDEX["impression"])
    user = _codes(ev["user_id"])
    behaviour = np.flatnonzero(np.isin(kind, [EVENT_INDEX[k] for k in
                                              ("click", "cart", "purchase")]))
    # Events of the same user strictly before each impression: one sort, two searches.
    span = int(ts.max()) + 1
    keys = np.sort(user[behaviour] * span + ts[behaviour])
    before = (np.searchsorted(keys, user[imp] * span + ts[imp], side="left")
              - np.searchsorted(keys, user[imp] * span, side="left"))
    as_str = lambda arr, rows: np.asarray(arr.take(pa.array(rows)).to_numpy(
        zero_copy_only=False), dtype=object).astype(str)
    query = pc.fill_null(ev["query"].take(pa.array(imp)), "")
    has_query = pc.not_equal(query, "").to_numpy(zero_copy_only=False)
    return {"timestamp": ts[imp], "log_price": np.log(items["price"][code[imp]]),
            "category": as_str(items["category"], code[imp]),
            "brand": as_str(items["brand"], code[imp]),
            "item_id": as_str(ev["item_id"], imp), "user_id": as_str(ev["user_id"], imp),
            "history_length": np.minimum(before, history_length),
            "has_query": has_query}


def report(features: dict, cut: int, vocabulary: dict | None = None,
           predictions: dict | None = None) -> dict:
    """The drift of the impressions at or after `cut` (the new day) against those before.

    vocabulary: the model's (`vocabulary.json`), for the OOV shares.
    predictions: {"window": {task: probabilities}, "day": {task: probabilities}}.
    Returns {"psi": {name: value}, "oov_share": {id: share}, "flags": [...],
    "impressions": {"window": n, "day": n}}."""
    old = features["timestamp"] < cut
    new = ~old
    psi = {"log_price": psi_numeric(features["log_price"][old], features["log_price"][new]),
           "category": psi_categorical(features["category"][old], features["category"][new]),
           "history_length": psi_categorical(features["history_length"][old],
                                             features["history_length"][new]),
           "has_query": psi_categorical(features["has_query"][old],
                                        features["has_query"][new])}
    for task, (window, day) in _pairs(predictions):
        psi[f"p_{task}"] = psi_numeric(window, day)
    oov = {}
    for key in ("item_id", "user_id", "brand", "category"):
        known = (vocabulary or {}).get(key)
        if known and new.any():
            oov[key] = float(np.mean(~np.isin(features[key][new], np.asarray(known, str))))
    flags = [f"PSI of {name} {value:.3f} > {PSI_LARGE}" for name, value in psi.items()
             if value > PSI_LARGE]
    if oov.get("item_id", 0.0) > OOV_LARGE:
        flags.append(f"{oov['item_id']:.1%} of the day's impressions are of items the model "
                     f"has not seen (> {OOV_LARGE:.0%})")
    return {"psi": psi, "oov_share": oov, "flags": flags,
            "impressions": {"window": int(old.sum()), "day": int(new.sum())}}


def _pairs(predictions):
    if not predictions:
        return []
    window, day = predictions.get("window", {}), predictions.get("day", {})
    return [(t, (np.asarray(window[t]), np.asarray(day[t]))) for t in ("click", "purchase")
            if t in window and t in day]
