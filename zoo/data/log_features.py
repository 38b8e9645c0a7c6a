"""The standard hand-built features of an impression, from the event log.

What a practitioner computes first for a (user, query, candidate) impression, every value
from events with a timestamp STRICTLY before the impression's (the rule of the examples'
histories, `zoo.data.labels.HistoryIndex`), so cutting the log at any time leaves the
features of the impressions before it unchanged (tested). All of it is vectorised: each
"count before" is one sort of the events by (key, time) and one binary search per
impression, no loop over events in Python.

The gradient-boosted tree (`zoo.models.gbdt`) reads all of them; the examples carry the
ones a neural model cannot compute from its own inputs (`CONTEXT`: session so far, the
user's counts and recency with the candidate's item, category and brand, the item's
trailing statistics, query x category rates, price against the user's whole past), which is
what a shop's feature store serves beside a request.

Features (NaN where undefined, e.g. a ratio over nothing; LightGBM handles NaN):
  position, price, log_price, category (categorical code of the items table)
  has_query, query_tokens, title_coverage        share of the query's tokens in the title
  session_seconds                                time since the session's first event
  session_events, session_searches, session_impressions, session_clicks   so far
  session_category_share                         share of the session's impressions so far
                                                 in the candidate's category
  user_impressions, user_clicks, user_purchases, user_ctr
  user_item_clicks, user_item_carts, user_item_purchases, user_item_seconds
                                                 (since the user last touched the item)
  user_category_clicks, user_category_purchases, user_category_seconds (since last click)
  user_brand_clicks, user_brand_purchases
  item_impressions_1d, item_clicks_1d, item_impressions_7d, item_clicks_7d,
  item_purchases_7d, item_ctr (all impressions and clicks of the item so far),
  item_cvr (purchases per click of the item so far), session_carts, user_cvr,
  hour_of_day, day_of_week (UTC)
  query_category_impressions, query_category_ctr  impressions of this (query, category)
                                                 so far and the share clicked (a click counts
                                                 once it has happened)
  price_vs_user_purchases, price_vs_user_clicks  price / the user's mean price so far
  relative_price                                 r = log price - its category's level
                                                 (`category_levels`: mean log price of the
                                                 category's items in the items table)
  relative_price_vs_user                         exp(r - the mean r of the user's clicks,
                                                 carts and purchases so far): a ratio, >= 0
  relative_price_sd_user                         the standard deviation of those r
  relative_price_vs_user_category                exp(r - the mean r of the user's events of
                                                 the candidate's category so far)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoo.data import contract, labels as labels_lib
from zoo.data.contract import EVENT_INDEX, SECONDS_PER_DAY

NAMES = (
    "position", "price", "log_price", "category",
    "has_query", "query_tokens", "title_coverage",
    "session_seconds", "session_events", "session_searches", "session_impressions",
    "session_clicks", "session_category_share",
    "user_impressions", "user_clicks", "user_purchases", "user_ctr",
    "user_item_clicks", "user_item_carts", "user_item_purchases", "user_item_seconds",
    "user_category_clicks", "user_category_purchases", "user_category_seconds",
    "user_brand_clicks", "user_brand_purchases",
    "item_impressions_1d", "item_clicks_1d", "item_impressions_7d", "item_clicks_7d",
    "item_purchases_7d", "item_ctr", "item_cvr", "session_carts", "user_cvr",
    "hour_of_day", "day_of_week",
    "query_category_impressions", "query_category_ctr",
    "price_vs_user_purchases", "price_vs_user_clicks",
    "relative_price", "relative_price_vs_user", "relative_price_sd_user",
    "relative_price_vs_user_category",
)
CATEGORICAL = ("category",)
# What the neural models read as context features (`zoo.data.examples.CONTEXT_FEATURES`):
# every name but those already raw inputs (position, price, category, the item's 7-day
# clicks and purchases), the query/title match and the candidate's own relative price,
# which the models compute in-graph from the raw query, title and price (with the history
# window's relative prices: `RankerPreprocessor`'s RELATIVE_PRICE_FEATURES). The user's
# relative prices over the whole past are context: the window does not hold all of it.
IN_GRAPH = ("position", "price", "log_price", "category", "has_query", "query_tokens",
            "title_coverage", "item_clicks_7d", "item_purchases_7d", "relative_price")
CONTEXT = tuple(n for n in NAMES if n not in IN_GRAPH)
# Pseudo-impressions at the global rate that smooth a CTR of few impressions.
CTR_PRIOR_STRENGTH = 20.0


class Before:
    """Events keyed by an integer key, for "how many / which last, strictly before t"."""

    def __init__(self, keys: np.ndarray, times: np.ndarray, t0: int, span: int,
                 values: np.ndarray | None = None):
        self.t0, self.span = t0, np.int64(span)
        composite = keys.astype(np.int64) * self.span + (times.astype(np.int64) - t0)
        order = np.argsort(composite, kind="stable")
        self.composite = composite[order]
        self.times = times[order]
        self.keys = keys[order]
        values = np.ones(len(keys)) if values is None else np.asarray(values, np.float64)
        self.cum = np.r_[0.0, np.cumsum(values[order])]

    def _at(self, keys, times):
        return keys.astype(np.int64) * self.span + (times.astype(np.int64) - self.t0)

    def total(self, keys, times, window: int | None = None) -> np.ndarray:
        """Sum of values of events with the key in [t - window, t) (window None: all)."""
        hi = np.searchsorted(self.composite, self._at(keys, times), side="left")
        if window is None:
            lo = np.searchsorted(self.composite, self._at(keys, np.full_like(times, self.t0)),
                                 side="left")
        else:
            lo = np.searchsorted(self.composite, self._at(keys, times - window), side="left")
        return self.cum[hi] - self.cum[lo]

    def last_time(self, keys, times) -> np.ndarray:
        """Time of the latest event with the key before t; NaN if none."""
        at = np.searchsorted(self.composite, self._at(keys, times), side="left") - 1
        ok = at >= 0
        at = np.maximum(at, 0)
        ok &= (self.keys[at] == keys) if len(self.keys) else False
        return np.where(ok, self.times[at] if len(self.times) else 0, np.nan)


def _codes(*columns) -> np.ndarray:
    return labels_lib._codes(*columns)


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _token_coverage(queries: pa.Array, item: np.ndarray,
                    titles: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(number of query tokens, share of them found in the title), lower-cased, of each
    impression (its query, its item's row of `titles`). Text is split once per distinct
    query and title, and each distinct (query, item) pair checked once: impressions repeat
    both many times over."""
    def tokens(texts):
        split = pc.utf8_split_whitespace(pc.utf8_lower(pc.fill_null(texts, "")))
        row = pc.list_parent_indices(split).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(split)
        keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
        return row[keep].astype(np.int64), flat.filter(pa.array(keep))

    encoded = pc.dictionary_encode(pc.fill_null(queries, ""))
    q_code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    distinct_items, i_code = np.unique(item, return_inverse=True)
    q_row, q_flat = tokens(encoded.dictionary)
    t_row, t_flat = tokens(titles.take(pa.array(distinct_items)))
    vocab = pc.unique(pa.chunked_array([q_flat, t_flat], type=pa.string()))
    q_tok = pc.index_in(q_flat, value_set=vocab).to_numpy(zero_copy_only=False)
    t_tok = pc.index_in(t_flat, value_set=vocab).to_numpy(zero_copy_only=False)
    width = np.int64(len(vocab) + 1)
    per_query = np.bincount(q_row, minlength=len(encoded.dictionary))
    first_token = np.cumsum(per_query) - per_query  # q_row is sorted
    # Each distinct (query, item) pair, expanded to its query's tokens.
    num_items = np.int64(max(len(distinct_items), 1))
    pairs, pair_of = np.unique(q_code * num_items + i_code, return_inverse=True)
    p_query, p_item = pairs // num_items, pairs % num_items
    reps = per_query[p_query]
    p_index = np.repeat(np.arange(len(pairs)), reps)
    step = np.arange(int(reps.sum()), dtype=np.int64)
    token = q_tok[np.repeat(first_token[p_query] - (np.cumsum(reps) - reps), reps) + step]
    in_title = np.isin(p_item[p_index] * width + token, t_row * width + t_tok)
    found = np.bincount(p_index, weights=in_title, minlength=len(pairs))[pair_of]
    q_tokens = per_query[q_code].astype(np.float64)
    return q_tokens, _ratio(found, q_tokens)


# The features that count other users' events: the impressed item's (by anyone) and the
# (query, category)'s; everything else is the user's own, or the row's.
ITEM_LEVEL = ("item_impressions_1d", "item_clicks_1d", "item_impressions_7d",
              "item_clicks_7d", "item_purchases_7d", "item_ctr", "item_cvr")
QUERY_CATEGORY = ("query_category_impressions", "query_category_ctr")
CROSS_USER = ITEM_LEVEL + QUERY_CATEGORY


class ShopCounts:
    """How many impressions, clicks and purchases the whole shop logged strictly before a
    time: the prior of the smoothed rates. Kept as counts per distinct second, so that a
    log read in parts merges them exactly and holds no more than one value per second."""

    KINDS = ("impression", "click", "purchase")

    def __init__(self, per_second: dict):
        self.seconds, self.cum = {}, {}
        for name in self.KINDS:
            secs, counts = per_second.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            self.seconds[name] = np.asarray(secs, np.int64)
            self.cum[name] = np.r_[0.0, np.cumsum(counts, dtype=np.float64)]

    @staticmethod
    def count(ts: np.ndarray, kind: np.ndarray) -> dict:
        """{event: (distinct seconds, events in each)} of one part of a log."""
        return {name: np.unique(ts[kind == EVENT_INDEX[name]], return_counts=True)
                for name in ShopCounts.KINDS}

    @staticmethod
    def merge(parts: list) -> dict:
        """The per-second counts of several parts' `count`s, as one."""
        out = {}
        for name in ShopCounts.KINDS:
            secs = np.concatenate([p[name][0] for p in parts]).astype(np.int64)
            counts = np.concatenate([p[name][1] for p in parts]).astype(np.int64)
            uniq, inverse = np.unique(secs, return_inverse=True)
            out[name] = (uniq, np.bincount(inverse, weights=counts,
                                           minlength=len(uniq)).astype(np.int64))
        return out

    @classmethod
    def from_log(cls, ts: np.ndarray, kind: np.ndarray) -> "ShopCounts":
        return cls(cls.count(np.asarray(ts, np.int64), kind))

    def before(self, event: str, t: np.ndarray) -> np.ndarray:
        return self.cum[event][np.searchsorted(self.seconds[event], t, side="left")]

    def click_rate(self, t):
        return np.nan_to_num(_ratio(self.before("click", t), self.before("impression", t)),
                             nan=0.0)

    def purchase_rate(self, t):
        return np.nan_to_num(_ratio(self.before("purchase", t), self.before("click", t)),
                             nan=0.0)


class _ItemLog:
    def __init__(self, ts, kind, item):
        self.ts, self.kind, self.item = ts, kind, item


def _frame(*times) -> tuple[int, int]:
    """(t0, span) of `Before` keys over these times, with room for 8 days of look-back."""
    lo = min((int(np.min(x)) for x in times if len(x)), default=0)
    hi = max((int(np.max(x)) for x in times if len(x)), default=0)
    t0 = lo - 8 * SECONDS_PER_DAY
    return t0, hi - t0 + 2


def item_features(log, imp: np.ndarray, shop: ShopCounts) -> dict:
    """ITEM_LEVEL of the impression rows `imp` of `log` (`ts`, `kind`, `item` arrays): the
    item's impressions, clicks and purchases by anyone before each impression. `log` needs
    only every event of the impressed items (`zoo.data.streaming` passes a bucket of items)."""
    ts, kind, item = log.ts.astype(np.int64), log.kind, log.item
    t0, span = _frame(ts)
    t, it = ts[imp], item[imp]

    def before(event):
        r = np.flatnonzero(kind == EVENT_INDEX[event])
        return Before(item[r], ts[r], t0, span)

    f = {}
    day, week = SECONDS_PER_DAY, 7 * SECONDS_PER_DAY
    item_imps, item_clicks, item_buys = before("impression"), before("click"), before("purchase")
    f["item_impressions_1d"] = item_imps.total(it, t, day)
    f["item_clicks_1d"] = item_clicks.total(it, t, day)
    f["item_impressions_7d"] = item_imps.total(it, t, week)
    f["item_clicks_7d"] = item_clicks.total(it, t, week)
    f["item_purchases_7d"] = item_buys.total(it, t, week)
    all_imps, all_clicks = item_imps.total(it, t), item_clicks.total(it, t)
    # The prior of the smoothed rates: the shop's rates so far.
    f["item_ctr"] = ((all_clicks + CTR_PRIOR_STRENGTH * shop.click_rate(t))
                     / (all_imps + CTR_PRIOR_STRENGTH))
    f["item_cvr"] = ((item_buys.total(it, t) + CTR_PRIOR_STRENGTH * shop.purchase_rate(t))
                     / (all_clicks + CTR_PRIOR_STRENGTH))
    return f


def query_category_features(keys, times, clicked_at, at_keys, at_times,
                            shop: ShopCounts) -> dict:
    """QUERY_CATEGORY at (at_keys, at_times): the (query, category)'s impressions so far and
    those whose click has happened by then. keys / times / clicked_at: every impression
    with one of those keys (integer keys; `clicked_at` NaN where never clicked)."""
    times = np.asarray(times, np.int64)
    done = np.isfinite(clicked_at)
    t0, span = _frame(times, np.asarray(clicked_at[done], np.int64), at_times)
    impressions = Before(keys, times, t0, span).total(at_keys, at_times)
    clicked = Before(keys[done], clicked_at[done].astype(np.int64), t0, span)
    return {"query_category_impressions": impressions,
            "query_category_ctr": ((clicked.total(at_keys, at_times)
                                    + CTR_PRIOR_STRENGTH * shop.click_rate(at_times))
                                   / (impressions + CTR_PRIOR_STRENGTH))}


def build(tables: contract.Tables, impressions: np.ndarray | None = None,
          shop: "ShopCounts | None" = None, cross: dict | None = None) -> dict:
    """{"row": impression rows, "event_id": their ids, "timestamp", **features} for every
    impression of the log (or the given event rows), each feature a float64 array.

    A part of a log that holds whole users (`zoo.data.streaming`) passes what its own
    events cannot give: `shop`, the whole log's counts, and `cross`, the CROSS_USER
    features of `impressions` computed over every user's events of their items and
    (query, category)s."""
    ev, items = tables.events, tables.items
    ts = ev["timestamp"].astype(np.int64)
    kind = ev["event_type"]
    item = ev["item_code"]
    imp = (np.flatnonzero(kind == EVENT_INDEX["impression"]) if impressions is None
           else np.asarray(impressions))
    t = ts[imp]
    t0 = int(ts.min()) - 8 * SECONDS_PER_DAY if len(ts) else 0
    span = int(ts.max()) - t0 + 2 if len(ts) else 2
    user = _codes(ev["user_id"])
    session = _codes(ev["user_id"], ev["session_id"])
    safe_item = np.maximum(item, 0)
    category = _codes(items["category"])[safe_item]
    brand = _codes(items["brand"])[safe_item]
    price = items["price"][safe_item]
    n_items = np.int64(len(items["price"]) + 1)
    n_cat, n_brand = np.int64(category.max(initial=0) + 1), np.int64(brand.max(initial=0) + 1)

    def rows(*names):
        return np.flatnonzero(np.isin(kind, [EVENT_INDEX[n] for n in names]))

    def before(keys_all, event_names, values=None):
        r = rows(*event_names)
        return Before(keys_all[r], ts[r], t0, span,
                      None if values is None else values[r])

    shop = shop if shop is not None else ShopCounts.from_log(ts, kind)
    out = {"row": imp, "event_id": ev["event_id"].take(pa.array(imp)).to_numpy(
        zero_copy_only=False), "timestamp": t}
    f = {}
    f["position"] = ev["position"][imp].astype(np.float64)
    f["price"] = price[imp]
    f["log_price"] = np.log(price[imp])
    f["category"] = category[imp].astype(np.float64)
    queries = ev["query"].take(pa.array(imp))
    q_tokens, coverage = _token_coverage(queries, safe_item[imp], items["title"])
    f["has_query"] = (q_tokens > 0).astype(np.float64)
    f["query_tokens"] = q_tokens
    f["title_coverage"] = coverage

    # Session so far.
    first = np.full(int(session.max(initial=0)) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, session, ts)
    f["session_seconds"] = (t - first[session[imp]]).astype(np.float64)
    s_imp = session[imp]
    f["session_events"] = Before(session, ts, t0, span).total(s_imp, t)
    f["session_searches"] = before(session, ["search"]).total(s_imp, t)
    f["session_impressions"] = before(session, ["impression"]).total(s_imp, t)
    f["session_clicks"] = before(session, ["click"]).total(s_imp, t)
    sess_cat = session * n_cat + category
    f["session_category_share"] = _ratio(
        before(sess_cat, ["impression"]).total(sess_cat[imp], t), f["session_impressions"])

    # The user so far: overall, with this item, category and brand.
    u = user[imp]
    f["user_impressions"] = before(user, ["impression"]).total(u, t)
    f["user_clicks"] = before(user, ["click"]).total(u, t)
    f["user_purchases"] = before(user, ["purchase"]).total(u, t)
    f["user_ctr"] = _ratio(f["user_clicks"], f["user_impressions"])
    user_item = user * n_items + item
    ui = user_item[imp]
    f["user_item_clicks"] = before(user_item, ["click"]).total(ui, t)
    f["user_item_carts"] = before(user_item, ["cart"]).total(ui, t)
    f["user_item_purchases"] = before(user_item, ["purchase"]).total(ui, t)
    f["user_item_seconds"] = t - before(user_item, contract.HISTORY_EVENTS).last_time(ui, t)
    user_cat = user * n_cat + category
    uc = user_cat[imp]
    clicks_cat = before(user_cat, ["click"])
    f["user_category_clicks"] = clicks_cat.total(uc, t)
    f["user_category_purchases"] = before(user_cat, ["purchase"]).total(uc, t)
    f["user_category_seconds"] = t - clicks_cat.last_time(uc, t)
    user_brand = user * n_brand + brand
    ub = user_brand[imp]
    f["user_brand_clicks"] = before(user_brand, ["click"]).total(ub, t)
    f["user_brand_purchases"] = before(user_brand, ["purchase"]).total(ub, t)

    # What crosses users: the item's and the (query, category)'s statistics, by anyone.
    if cross is None:
        f.update(item_features(_ItemLog(ts, kind, item), imp, shop))
        query_code = _codes(ev["query"])
        qc = query_code * n_cat + category
        all_imp = rows("impression")
        clicked_at = _click_time(ts, kind, session, item, all_imp)
        f.update(query_category_features(qc[all_imp], ts[all_imp], clicked_at, qc[imp], t,
                                         shop))
    else:
        f.update({name: np.asarray(cross[name], np.float64) for name in CROSS_USER})
    f["session_carts"] = before(session, ["cart"]).total(s_imp, t)
    f["hour_of_day"] = ((t % SECONDS_PER_DAY) // 3600).astype(np.float64)
    f["day_of_week"] = ((t // SECONDS_PER_DAY + 3) % 7).astype(np.float64)  # 0 = Monday

    # The candidate's price against what the user paid for / clicked on so far.
    purchases = before(user, ["purchase"], price)
    f["price_vs_user_purchases"] = _ratio(price[imp], _ratio(purchases.total(u, t),
                                                              f["user_purchases"]))
    click_prices = before(user, ["click"], price)
    f["price_vs_user_clicks"] = _ratio(price[imp], _ratio(click_prices.total(u, t),
                                                           f["user_clicks"]))
    f["user_cvr"] = _ratio(f["user_purchases"], f["user_clicks"])

    # The same against a budget per category: prices of different categories are not
    # comparable (a watch and a phone case), so each is taken against its category's level.
    names, levels = category_levels(items)
    item_level = levels[np.searchsorted(names, _text(items["category"]))]
    relative = np.log(price) - item_level[safe_item]
    r = relative[imp]
    f["relative_price"] = r
    n_seen = before(user, contract.HISTORY_EVENTS).total(u, t)
    mean = _ratio(before(user, contract.HISTORY_EVENTS, relative).total(u, t), n_seen)
    square = _ratio(before(user, contract.HISTORY_EVENTS, relative ** 2).total(u, t), n_seen)
    f["relative_price_vs_user"] = np.exp(r - mean)
    # Differences of running sums: a variance under 1e-10 is rounding, not spread.
    variance = square - mean ** 2
    f["relative_price_sd_user"] = np.sqrt(np.where(variance > 1e-10, variance, 0.0))
    f["relative_price_vs_user_category"] = np.exp(r - _ratio(
        before(user_cat, contract.HISTORY_EVENTS, relative).total(uc, t),
        before(user_cat, contract.HISTORY_EVENTS).total(uc, t)))
    missing = sorted(set(NAMES) - set(f))
    assert not missing, missing
    out.update({k: np.asarray(f[k], np.float64) for k in NAMES})
    return out


def _text(column) -> np.ndarray:
    return np.asarray(pc.fill_null(column, "").to_numpy(zero_copy_only=False), object).astype(str)


def category_levels(items: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sorted category names, the mean log price of each one's items in the items table):
    the level the relative prices are taken against (the serving graph holds the same
    table, `serving_features.Snapshot.category_levels`)."""
    names, inverse = np.unique(_text(items["category"]), return_inverse=True)
    logs = np.log(np.asarray(items["price"], np.float64))
    return names, (np.bincount(inverse, weights=logs, minlength=len(names))
                   / np.maximum(np.bincount(inverse, minlength=len(names)), 1))


def _click_time(ts, kind, session, item, imp_rows) -> np.ndarray:
    """Time of the first click on the same (session, item) at or after each impression
    (NaN if none): when the impression becomes a known click."""
    clicks = np.flatnonzero(kind == EVENT_INDEX["click"])
    out = np.full(len(imp_rows), np.nan)
    if not len(clicks):
        return out
    n_items = np.int64(item.max() + 2)
    key_c = session[clicks] * n_items + item[clicks]
    order = np.lexsort((ts[clicks], key_c))
    key_c, t_c = key_c[order], ts[clicks][order]
    key_i = session[imp_rows] * n_items + item[imp_rows]
    # First click of the key at or after the impression's time.
    span = np.int64(ts.max() - ts.min() + 2)
    comp_c = key_c * span + (t_c - ts.min())
    comp_i = key_i * span + (ts[imp_rows] - ts.min())
    at = np.searchsorted(comp_c, comp_i, side="left")
    ok = at < len(comp_c)
    at = np.minimum(at, len(comp_c) - 1)
    ok &= key_c[at] == key_i
    out[ok] = t_c[at[ok]]
    return out


def matrix(features: dict) -> np.ndarray:
    """The features as a [n, len(NAMES)] float64 matrix, in NAMES order."""
    return np.stack([features[k] for k in NAMES], axis=1)
