"""User profiles and segments: what each shopper wants, from the model beside plain counts.

For each user (all of them, or a seeded sample of `max_users`), a request at the end of the
log (a new session, no query) is scored against representative items of every category:
the `items_per_category` items of the category clicked most in the last 7 days. The raw
features of each (request, item) pair are the ones an impression at that moment would have
had (`zoo.data.requests.candidate_features`), so the model sees the user's whole past.
From those scores:

  model_top_categories   categories by the mean p(click) of their representative items
  price_range_model      the price-range head, averaged over the pairs (K probabilities)
  p_purchase_model       mean p(purchase) over the pairs: the model's purchase propensity
  representation         the backbone's `cls_output`, averaged over the pairs: the user as
                         the encoder sees them, whatever the candidate

beside the plain counts of the log (events, sessions, active days, clicks / carts /
purchases, the categories and brands engaged with, the median price paid and its range).

Segments are k-means clusters (scikit-learn, `n_init` restarts from a fixed seed: the same
users and seed give the same segments) of the standardised representations, each described
by its size, its members' top categories (plain counts), their price range by the model,
activity and purchase propensity.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data.contract import EVENT_INDEX, SECONDS_PER_DAY

TOP = 3  # categories / brands listed per user


@dataclasses.dataclass
class ProfileOptions:
    max_users: int = 2000
    items_per_category: int = 2
    num_segments: int = 6
    seed: int = 0
    batch_size: int = 4096


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(values.astype(str), return_inverse=True)
    return names, codes


def _shares(counts: np.ndarray, names: np.ndarray, top: int = TOP) -> list[str]:
    """Per row: "name:share;..." of the `top` largest counts (shares of the row's total)."""
    out = []
    for row in counts:
        total = row.sum()
        idx = [i for i in np.argsort(-row, kind="stable")[:top] if row[i] > 0]
        out.append(";".join(f"{names[i]}:{row[i] / total:.2f}" for i in idx))
    return out


def representative_items(tables, end: int, per_category: int) -> tuple[np.ndarray, list]:
    """(item codes [C * per_category], category names [C]): per category the items clicked
    most in the 7 days before `end` (then the most clicked ever, then the first listed)."""
    ev = tables.events
    n_items = len(tables.items["item_id"])
    clicks = (ev["event_type"] == EVENT_INDEX["click"]) & (ev["item_code"] >= 0)
    recent = clicks & (ev["timestamp"] >= end - 7 * SECONDS_PER_DAY)
    score = (np.bincount(ev["item_code"][recent], minlength=n_items) * 1e6
             + np.bincount(ev["item_code"][clicks], minlength=n_items))
    categories, cat = _codes(tables.items["category"].to_numpy(zero_copy_only=False))
    codes = []
    for c in range(len(categories)):
        members = np.flatnonzero(cat == c)
        best = members[np.argsort(-score[members], kind="stable")][:per_category]
        codes.append(np.resize(best, per_category))  # a small category repeats its items
    return np.concatenate(codes), list(categories)


def plain_profiles(tables, users: np.ndarray, price_edges) -> dict:
    """Counts per user of `users` (sorted) from the log."""
    ev = tables.events
    user = ev["user_id"].to_numpy(zero_copy_only=False).astype(str)
    row = np.minimum(np.searchsorted(users, user), len(users) - 1)
    keep = users[row] == user
    n = len(users)
    kind = ev["event_type"]
    out = {"events": np.bincount(row[keep], minlength=n)}
    for name in ("click", "cart", "purchase"):
        sel = keep & (kind == EVENT_INDEX[name])
        out[name + "s"] = np.bincount(row[sel], minlength=n)
    _, session = _codes(ev["session_id"].to_numpy(zero_copy_only=False))
    day = ev["timestamp"] // SECONDS_PER_DAY
    for name, key in (("sessions", session), ("active_days", day - day.min())):
        width = int(key.max(initial=0)) + 1
        pairs = np.unique(row[keep].astype(np.int64) * width + key[keep])
        out[name] = np.bincount(pairs // width, minlength=n)
    out["purchases_per_session"] = out["purchases"] / np.maximum(out["sessions"], 1)
    engaged = keep & np.isin(kind, [EVENT_INDEX[k] for k in ("click", "cart", "purchase")]) \
        & (ev["item_code"] >= 0)
    items = tables.items
    for field in ("category", "brand"):
        names, codes = _codes(items[field].to_numpy(zero_copy_only=False))
        counts = np.zeros((n, len(names)))
        np.add.at(counts, (row[engaged], codes[ev["item_code"][engaged]]), 1)
        out[f"top_{field}_history"] = _shares(counts, names)
        out[f"_{field}_counts"], out[f"_{field}_names"] = counts, names
    bought = keep & (kind == EVENT_INDEX["purchase"]) & (ev["item_code"] >= 0)
    price = np.asarray(items["price"], np.float64)[ev["item_code"][bought]]
    median = np.full(n, np.nan)
    order = np.argsort(row[bought], kind="stable")
    r, p = row[bought][order], price[order]
    bounds = np.searchsorted(r, np.arange(n + 1))
    for i in range(n):  # a median per user: a sort per slice, no per-event loop
        if bounds[i + 1] > bounds[i]:
            median[i] = float(np.median(p[bounds[i]:bounds[i + 1]]))
    out["median_price_paid"] = median
    out["price_range_history"] = np.where(np.isnan(median), -1,
                                          np.searchsorted(np.asarray(price_edges), median,
                                                          side="right"))
    return out


def build(model, tables, label_config, price_edges, options: ProfileOptions,
          progress=None, users=None) -> tuple[dict, dict]:
    """(profiles: column -> [U] values, plus "representation" [U, D]; segments summary) of
    `users` (sorted ids; default: the log's, or a seeded sample of `max_users`)."""
    import tensorflow as tf
    from zoo.data import requests as requests_lib
    from zoo.models.features import RAW_FEATURES

    ev = tables.events
    all_users = np.unique(ev["user_id"].to_numpy(zero_copy_only=False).astype(str))
    rng = np.random.default_rng(options.seed)
    if users is None:
        users = (np.sort(rng.choice(all_users, options.max_users, replace=False))
                 if 0 < options.max_users < len(all_users) else all_users)
    users = np.asarray(users).astype(str)
    end = int(ev["timestamp"].max()) + 1
    items, categories = representative_items(tables, end, options.items_per_category)
    reqs = requests_lib.Requests(
        user_id=users.astype(object), session_id=np.full(len(users), "\x00profile", object),
        timestamp=np.full(len(users), end, np.int64), query=np.full(len(users), "", object),
        clicked=[np.zeros(0, np.int64)] * len(users),
        purchased=[np.zeros(0, np.int64)] * len(users))

    def forward(raw):
        pre = model.preprocessor(raw)
        out = model(pre, training=False)
        return out, model.backbone(pre, training=False)["cls_output"]

    forward = tf.function(forward, autograph=False, reduce_retracing=True)
    C = len(items)
    per_chunk = max(1, options.batch_size // C)
    click = np.zeros((len(users), C))
    purchase = np.zeros((len(users), C))
    price = None
    rep = None
    for start in range(0, len(users), per_chunk):
        sel = np.arange(start, min(start + per_chunk, len(users)))
        raw = requests_lib.candidate_features(tables, reqs.take(sel),
                                              np.tile(items, (len(sel), 1)), label_config)
        out, cls = forward({k: tf.constant(raw[k]) if raw[k].dtype != object
                            else tf.constant(raw[k].astype(str)) for k in RAW_FEATURES})
        click[sel] = out["click"].numpy().reshape(len(sel), C)
        purchase[sel] = out["purchase"].numpy().reshape(len(sel), C)
        pr = out["price_range"].numpy().reshape(len(sel), C, -1).mean(axis=1)
        cl = cls.numpy().astype(np.float64).reshape(len(sel), C, -1).mean(axis=1)
        if price is None:
            price = np.zeros((len(users), pr.shape[1]))
            rep = np.zeros((len(users), cl.shape[1]))
        price[sel], rep[sel] = pr, cl
        if progress:
            progress(len(sel))

    per_cat = click.reshape(len(users), len(categories), options.items_per_category).mean(2)
    plain = plain_profiles(tables, users, price_edges)
    profiles = {
        "user_id": users,
        **{k: v for k, v in plain.items() if not k.startswith("_")},
        "model_top_categories": _shares(per_cat, np.array(categories)),
        "p_click_model": click.mean(1), "p_purchase_model": purchase.mean(1),
        "price_range_model": price.argmax(1),
        **{f"price_range_model_{k}": price[:, k] for k in range(price.shape[1])},
    }
    segments = segment(rep, options.num_segments, options.seed)
    profiles["segment"] = segments
    summary = describe_segments(profiles, plain, price, segments)
    summary.update({"users": int(len(users)), "users_in_log": int(len(all_users)),
                    "sampled": bool(len(users) < len(all_users)),
                    "categories": categories, "items_per_category": options.items_per_category,
                    "as_of_timestamp": end})
    profiles["representation"] = rep
    return profiles, summary


def user_recommendations(model, tables, label_config, user_id: str, k: int = 10) -> dict:
    """The user's top `k` items of the whole catalogue by p(purchase), for a new session at
    the end of the log (the ranker scores every item with the user's whole past), each with
    the two history events that raise its p(purchase) most beyond what they raise the other
    recommendations' (integrated gradients, `zoo.explain`, minus each event's mean over the
    k items: without the contrast every item names the same events, those that make the
    user a buyer at all; none for a model without an embedding sequence)."""
    import tensorflow as tf
    from zoo.data import requests as requests_lib
    from zoo.models.features import RAW_FEATURES

    end = int(tables.events["timestamp"].max()) + 1
    n_items = len(tables.items["item_id"])
    reqs = requests_lib.Requests(
        user_id=np.array([user_id], object), session_id=np.array(["\x00profile"], object),
        timestamp=np.array([end], np.int64), query=np.array([""], object),
        clicked=[np.zeros(0, np.int64)], purchased=[np.zeros(0, np.int64)])
    raw = requests_lib.candidate_features(tables, reqs, np.arange(n_items)[None, :],
                                          label_config)
    out = model(model.preprocessor({k2: tf.constant(raw[k2]) if raw[k2].dtype != object
                                    else tf.constant(raw[k2].astype(str))
                                    for k2 in RAW_FEATURES}), training=False)
    purchase, click = out["purchase"].numpy(), out["click"].numpy()
    top = np.argsort(-purchase, kind="stable")[:k]
    items = tables.items
    because = [[] for _ in top]
    try:
        from zoo.models.explain import reasons

        rows = {k2: v[top] for k2, v in raw.items()}
        because = reasons(model, {k2: rows[k2] for k2 in RAW_FEATURES}, len(top),
                          "purchase", steps=64)
    except ValueError:  # not a bert_mtl model: no attributions
        pass
    return {"item_id": [str(items["item_id"][i]) for i in top],
            "because": because,
            "category": [str(items["category"][i]) for i in top],
            "brand": [str(items["brand"][i]) for i in top],
            "price": [float(items["price"][i]) for i in top],
            "p_click": click[top].astype(float).tolist(),
            "p_purchase": purchase[top].astype(float).tolist()}


def recent_events(tables, user_id: str, limit: int = 40) -> list[dict]:
    """The user's last `limit` searches, clicks, carts and purchases (what the user did;
    impressions are what the shop showed), latest first, with the item's fields."""
    from zoo.data.contract import EVENT_TYPES

    ev = tables.events
    rows = np.flatnonzero((ev["user_id"].to_numpy(zero_copy_only=False).astype(str) == user_id)
                          & (ev["event_type"] != EVENT_INDEX["impression"]))
    rows = rows[np.lexsort((rows, ev["timestamp"][rows]))][::-1][:limit]
    items = tables.items
    out = []
    for r in rows:
        code = int(ev["item_code"][r])
        out.append({"timestamp": int(ev["timestamp"][r]),
                    "event": EVENT_TYPES[int(ev["event_type"][r])],
                    "session_id": str(ev["session_id"][r]), "query": str(ev["query"][r]),
                    "item_id": str(items["item_id"][code]) if code >= 0 else "",
                    "category": str(items["category"][code]) if code >= 0 else "",
                    "price": float(items["price"][code]) if code >= 0 else float("nan")})
    return out


def segment(representation: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels of the standardised rows (relabelled by size, largest first, so the
    numbering does not depend on the solver's order)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(representation)
    k = max(1, min(int(k), len(x)))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    rank = np.empty(k, np.int64)
    rank[np.lexsort((np.arange(k), -sizes))] = np.arange(k)
    return rank[labels]


def describe_segments(profiles: dict, plain: dict, price: np.ndarray, labels) -> dict:
    rows = []
    for s in range(int(labels.max()) + 1 if len(labels) else 0):
        m = labels == s
        cats = plain["_category_counts"][m].sum(0, keepdims=True)
        rows.append({
            "segment": s, "users": int(m.sum()), "share": float(m.mean()),
            "top_categories": _shares(cats, plain["_category_names"])[0],
            "price_range_model": int(price[m].mean(0).argmax()),
            "price_range_probs": [round(float(p), 3) for p in price[m].mean(0)],
            "median_events": float(np.median(plain["events"][m])),
            "median_sessions": float(np.median(plain["sessions"][m])),
            "purchases_per_session": float(plain["purchases_per_session"][m].mean()),
            "p_purchase_model": float(profiles["p_purchase_model"][m].mean()),
        })
    return {"segments": rows}


def write_parquet(profiles: dict, path: str) -> None:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: v for k, v in profiles.items() if k != "representation"}
    table = pa.table({k: pa.array(np.asarray(v).tolist() if np.asarray(v).dtype == object
                                  else np.asarray(v)) for k, v in cols.items()})
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
