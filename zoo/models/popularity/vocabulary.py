"""Statistics of `popularity`, counted on TRAINING examples (features and labels).

The "vocabulary" holds every number the model uses (it has nothing to train): a
JSON-serialisable dict that the trainer saves as vocabulary.json and the builder turns
into the model's non-trainable tables.

    {"format": "popularity.vocabulary/1", "num_examples": N, "num_labelled": n,
     "item_id": [...],                 # candidate items, most impressions first
     "item_impressions": [...],        # labelled impressions (the rates' denominators)
     "item_click_factor": [...],
     "item_purchase_factor": [...], "item_demand": [...],
     "category": [...], "category_prior": [...],   # global share of history events
     "position_click_rate": [...], "position_purchase_rate": [...],   # [1 + max_position]
     "price_edges": [...], "price_prior": [...],                      # K - 1, K
     "click": {"rate", "scale", "exponent"}, "purchase": {...},
     "demand": {"mean", "intercept", "purchases_7d", "item_mean"},
     "price_fit": {"smoothing", "candidate_weight"}}  # optional (config `price_fit`)

`reference_outputs` computes the model's outputs in numpy from the same dict, with the
helpers the fit uses for the lift exponents; the tests hold the TensorFlow model to it.
"""

from __future__ import annotations

import numpy as np

from zoo.data import contract
from zoo.models.features import HISTORY_EVENT_TYPES
from zoo.models.strings import arrow_strings, lookup, most_frequent, nonempty  # noqa: F401

FORMAT = "popularity.vocabulary/1"
LABEL_KEYS = ("click", "purchase", "price_range", "demand")
PROB_CLIP = 1e-4           # click / purchase stay in (1e-4, 1 - 1e-4)
MIN_RATE = 1e-6            # demand floor
EXPONENTS = np.round(np.arange(0.0, 2.0001, 0.1), 2)  # grid of the lift exponent
ITEM_KEYS = ("item_impressions", "item_click_factor", "item_purchase_factor", "item_demand")


def _config(config) -> dict:
    if isinstance(config, str):
        from zoo.models.popularity.presets import PRESETS

        return {**PRESETS[config], "preset": config}
    return dict(config)


# ---- strings -> indices ---------------------------------------------------------------------
# ---- shared definitions (the preprocessor and the model do the same in TensorFlow) ----------
def position_bucket(position, max_position: int) -> np.ndarray:
    """0 = unknown rank (-1), else 1 + min(rank, max_position - 1)."""
    p = np.asarray(position, np.int64)
    return np.where(p < 0, 0, np.minimum(p, max_position - 1) + 1)


def event_weights(config) -> np.ndarray:
    """Weight of each `HISTORY_EVENT_TYPES` event, in that order."""
    return np.array([float(config[f"{e}_weight"]) for e in HISTORY_EVENT_TYPES])


def history(features: dict, config: dict) -> dict:
    """The first max_history history columns: mask and per-event weights (0 on padding).

    A missing or unknown event type weighs like a click (the weakest engagement)."""
    H = int(config["max_history"])
    items = np.asarray(features["hist_item_id"])[:, :H]
    n = items.shape[0]
    mask = nonempty(items)
    kind = lookup(np.asarray(features["hist_event"])[:, :H], list(HISTORY_EVENT_TYPES))
    ew = event_weights(config)
    weight = np.where(kind >= 0, ew[np.maximum(kind, 0)], ew[0]) * mask

    def pad(x, value):
        return np.pad(x, [(0, 0), (0, H - x.shape[1])], constant_values=value)

    return {"mask": pad(mask, False).reshape(n, H), "weight": pad(weight, 0.0).reshape(n, H)}


def affinity_lift(cand_category, hist_category, hist_weight, category_prior, alpha):
    """User-category lift (exponent 1): the user's smoothed share of history weight in the
    candidate's category over that category's global share. 1 without history or for an
    unknown candidate category; indices are into `category_prior`, -1 unknown."""
    g_all = np.asarray(category_prior, np.float64)
    known = cand_category >= 0
    g = np.where(known, g_all[np.maximum(cand_category, 0)], 1.0)
    match = (hist_category == cand_category[:, None]) & known[:, None]
    w_c = (hist_weight * match).sum(axis=1)
    w = hist_weight.sum(axis=1)
    denom = (w + alpha) * g
    lift = np.divide(w_c + alpha * g, denom, out=np.ones_like(denom), where=denom > 0)
    return np.where(known, lift, 1.0)


def price_distribution(hist_bucket, hist_weight, cand_bucket, prior, alpha, cand_weight):
    """The user's event-weighted histogram over the K buckets (+ the candidate's own price
    as one more event) blended with the label prior: (h + alpha prior) / (sum h + alpha)."""
    K = len(prior)
    h = np.stack([(hist_weight * (hist_bucket == k)).sum(axis=1) for k in range(K)], axis=1)
    h = h + cand_weight * (cand_bucket[:, None] == np.arange(K))
    total = h.sum(axis=1, keepdims=True) + alpha
    num = h + alpha * np.asarray(prior)[None, :]
    return np.divide(num, total, out=np.tile(np.asarray(prior, np.float64), (len(h), 1)),
                     where=total > 0)


def encode(vocabulary: dict, config: dict, features: dict, hist: dict | None = None) -> dict:
    """Raw feature arrays -> the numbers the model looks up (numpy; -1 = unknown id).
    hist: `history(features, config)` when the caller has it already."""
    hist = history(features, config) if hist is None else hist
    H = int(config["max_history"])
    n = hist["mask"].shape[0]
    hist_cat = lookup(np.asarray(features["hist_category"])[:, :H], vocabulary["category"])
    hist_cat = np.pad(hist_cat, [(0, 0), (0, H - hist_cat.shape[1])], constant_values=-1)
    edges = np.asarray(vocabulary["price_edges"], np.float32)
    hist_price = np.asarray(features["hist_price"], np.float32)[:, :H]
    hist_price = np.pad(hist_price, [(0, 0), (0, H - hist_price.shape[1])])
    position = features.get("position", np.full(n, -1))
    return {
        "item": lookup(features["item_id"], vocabulary["item_id"]),
        "category": lookup(features["item_category"], vocabulary["category"]),
        "position": position_bucket(position, int(config["max_position"])),
        "price_bucket": contract.price_bucket(np.asarray(features["item_price"], np.float32),
                                              edges),
        "purchases_7d": np.asarray(features.get("item_purchases_7d", np.zeros(n)), np.float64),
        "hist_category": hist_cat,
        "hist_weight": hist["weight"],
        "hist_price_bucket": contract.price_bucket(hist_price, edges),
    }


def _gather(values, index, fallback):
    values = np.asarray(values, np.float64)
    return np.where(index >= 0, values[np.maximum(index, 0)] if values.size else fallback,
                    fallback)


def base_rate(vocabulary: dict, enc: dict, task: str) -> np.ndarray:
    """Position rate x item factor (the item factor of an unknown item is 1)."""
    rates = np.asarray(vocabulary[f"position_{task}_rate"], np.float64)
    return rates[enc["position"]] * _gather(vocabulary[f"item_{task}_factor"], enc["item"], 1.0)


def reference_outputs(vocabulary: dict, config, features: dict) -> dict:
    """The model's outputs computed in numpy (float64) from raw feature arrays."""
    config = _config(config)
    enc = encode(vocabulary, config, features)
    lift = affinity_lift(enc["category"], enc["hist_category"], enc["hist_weight"],
                         vocabulary["category_prior"], float(config["affinity_smoothing"]))
    out = {}
    for task in ("click", "purchase"):
        fit = vocabulary[task]
        p = fit["scale"] * base_rate(vocabulary, enc, task) * lift ** fit["exponent"]
        out[task] = np.clip(p, PROB_CLIP, 1 - PROB_CLIP)
    out["price_range"] = price_distribution(
        enc["hist_price_bucket"], enc["hist_weight"], enc["price_bucket"],
        vocabulary["price_prior"], *price_knobs(vocabulary, config))
    d = vocabulary["demand"]
    item_mean = _gather(vocabulary["item_demand"], enc["item"], d["mean"])
    out["demand"] = np.maximum(d["intercept"] + d["purchases_7d"] * enc["purchases_7d"]
                               + d["item_mean"] * item_mean, MIN_RATE)
    return out


# ---- the fit ----------------------------------------------------------------------------------
def position_rates(y, bucket, num_buckets: int, strength: float, prior: float) -> np.ndarray:
    """Smoothed rate per position bucket. Bucket 0 (unknown rank) and bucket 1 (rank 0)
    shrink toward the global rate, every deeper rank toward the rank above it, so a rank
    never seen in training inherits the deepest seen rank's rate, not the global one."""
    n = np.bincount(bucket, minlength=num_buckets).astype(np.float64)
    c = np.bincount(bucket, weights=y, minlength=num_buckets)
    rates = np.empty(num_buckets)
    for b in range(num_buckets):
        anchor = prior if b <= 1 else rates[b - 1]
        rates[b] = (c[b] + strength * anchor) / (n[b] + strength) if n[b] + strength > 0 \
            else anchor
    return rates


def _price_edges(features: dict, num_buckets: int) -> np.ndarray:
    """Edges of the price_range label's buckets.

    Estimated like `contract.training_price_edges` (quantiles of the distinct training
    items' prices); when the examples carry `hist_price_bucket` (the label's bucket of
    each history item), each edge is then moved into the interval those buckets allow,
    so the training items land in exactly the label's buckets.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    ids, prices = [arrow_strings(features["item_id"])], [np.asarray(features["item_price"]).ravel()]
    if "hist_item_id" in features and "hist_price" in features:
        ids.append(arrow_strings(features["hist_item_id"]))
        prices.append(np.asarray(features["hist_price"]).ravel())
    table = pa.table({"id": pa.concat_arrays(ids),
                      "price": np.concatenate(prices).astype(np.float64)})
    table = table.filter(pc.not_equal(table["id"], ""))
    distinct = table.group_by("id").aggregate([("price", "min")])["price_min"].to_numpy()
    if distinct.size == 0:
        return np.geomspace(1.0, 1000.0, num_buckets + 1)[1:-1]
    edges = contract.price_edges(distinct, num_buckets)
    if "hist_price_bucket" not in features:
        return edges
    mask = nonempty(features["hist_item_id"]).ravel()
    price = np.asarray(features["hist_price"], np.float32).ravel()[mask]
    bucket = np.asarray(features["hist_price_bucket"]).ravel()[mask]
    if price.size == 0 or bucket.min() < 0 or bucket.max() >= num_buckets:
        return edges  # another K, or no history: keep the estimate
    for j in range(num_buckets - 1):  # edge j separates buckets <= j from buckets > j
        below, above = price[bucket <= j], price[bucket > j]
        lo = float(below.max()) if below.size else -np.inf
        hi = float(above.min()) if above.size else np.inf
        if not lo < np.float32(edges[j]) <= hi:
            edges[j] = hi if not np.isfinite(lo) else (lo if not np.isfinite(hi) else
                                                       (lo + hi) / 2.0)
            if not lo < np.float32(edges[j]) <= hi:  # float32 rounding: hi is exact
                edges[j] = hi
    return np.maximum.accumulate(edges)


def _fit_exponent(y, base, lift) -> tuple[float, float]:
    """(scale, exponent) of p = scale * base * lift**exponent: for each exponent of the grid
    the scale matches the mean rate; the exponent with the least training log-loss wins."""
    best = None
    log_lift = np.log(np.maximum(lift, 1e-12))
    for e in EXPONENTS:
        s_raw = base * np.exp(e * log_lift)
        total = s_raw.sum()
        scale = float(y.sum() / total) if total > 0 else 1.0
        p = np.clip(scale * s_raw, PROB_CLIP, 1 - PROB_CLIP)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, scale, float(e))
    return best[1], best[2]


def nonnegative_poisson(X, y, iterations: int = 500) -> np.ndarray:
    """Coefficients a >= 0 maximising the Poisson likelihood of y ~ X a (identity link,
    X >= 0): the EM / Richardson-Lucy multiplicative update, which keeps a >= 0."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    colsum = X.sum(axis=0)
    usable = colsum > 0
    a = np.zeros(X.shape[1])
    a[usable] = max(y.mean(), 1e-9) / (usable.sum() * X[:, usable].mean(axis=0))
    for _ in range(iterations):
        mu = np.maximum(X @ a, 1e-12)
        a[usable] *= (X[:, usable].T @ (y / mu)) / colsum[usable]
    return a


def _item_means(index, y, num_items, strength, prior):
    n = np.bincount(index[index >= 0], minlength=num_items).astype(np.float64)
    s = np.bincount(index[index >= 0], weights=y[index >= 0], minlength=num_items)
    return (s + strength * prior) / (n + strength)


def _fit_demand(features, item, y, num_items, config) -> tuple[dict, np.ndarray]:
    """Demand coefficients fitted on the latest `demand_fit_fraction` of the examples, with
    item means from the earlier ones: in-sample item means would take all the weight."""
    n = len(y)
    order = (np.argsort(np.asarray(features["timestamp"]), kind="stable")
             if "timestamp" in features else np.arange(n))
    frac = float(config["demand_fit_fraction"])
    n_fit = int(np.ceil(frac * n))
    if 0 < n_fit < n:
        early, late = order[: n - n_fit], order[n - n_fit:]
    else:
        early = late = order
    strength = float(config["demand_smoothing"])
    early_mean = float(y[early].mean())
    means_early = _item_means(item[early], y[early], num_items, strength, early_mean)
    d_late = np.where(item[late] >= 0, means_early[np.maximum(item[late], 0)], early_mean)
    p7 = np.asarray(features.get("item_purchases_7d", np.zeros(n)), np.float64)
    X = np.stack([np.ones(len(late)), p7[late], d_late], axis=1)
    a = nonnegative_poisson(X, y[late])
    mean = float(y.mean())
    coefficients = {"mean": mean, "intercept": float(a[0]), "purchases_7d": float(a[1]),
                    "item_mean": float(a[2])}
    return coefficients, _item_means(item, y, num_items, strength, mean)


def fit_vocabulary(features: dict, config) -> dict:
    """All statistics of the model, from a dict of TRAINING arrays (raw features + labels).

    features: numpy arrays keyed like the raw features and the labels (click, purchase,
      price_range with -1 missing, price_range_mask, demand); str, bytes or object strings.
      Optional: `labelled` (bool per example: only these rows' labels are used; ids,
      category shares and price edges come from every row), `timestamp` (orders the
      examples for the demand fit), `hist_price_bucket` (pins the price edges to the
      label's).
    config: a `popularity` config dict or a preset name.
    """
    config = _config(config)
    missing = [k for k in ("item_id", "item_category", "item_price", "hist_item_id",
                           "hist_category", "hist_event", "hist_price", *LABEL_KEYS)
               if k not in features]
    if missing:
        raise ValueError(f"popularity.fit_vocabulary needs training features and labels; "
                         f"missing {missing}")
    n_all = len(features["item_id"])
    labelled = (np.asarray(features["labelled"]).astype(bool).ravel() if "labelled" in features
                else np.ones(n_all, bool))
    if not labelled.any():
        raise ValueError("popularity.fit_vocabulary: no labelled training examples")
    # The labelled rows, for every statistic of the labels.
    sub = {k: np.asarray(v)[labelled] for k, v in features.items()
           if np.ndim(v) and len(v) == n_all}
    click = np.asarray(sub["click"], np.float64)
    purchase = np.asarray(sub["purchase"], np.float64)
    demand = np.asarray(sub["demand"], np.float64)
    n = len(click)
    # Demand statistics of the whole windows only (a censored window's count is low).
    whole = (np.asarray(sub["demand_mask"]) > 0 if "demand_mask" in sub
             else np.ones(n, bool))
    K = int(config["num_price_ranges"])
    P = int(config["max_position"])
    vocab: dict = {"format": FORMAT, "num_examples": n_all, "num_labelled": n}

    # Candidate items and categories (every row).
    items = most_frequent(features["item_id"], max_size=int(config["item_vocab_size"]))
    categories = most_frequent(features["item_category"], features["hist_category"],
                               max_size=int(config["category_vocab_size"]))
    vocab["item_id"], vocab["category"] = items, categories
    item = lookup(sub["item_id"], items)
    known = item >= 0

    # click / purchase: position rates, then items' clicks over expected clicks (COEC).
    pos = position_bucket(sub.get("position", np.full(n, -1)), P)
    impressions = np.bincount(item[known], minlength=len(items)).astype(np.float64)
    vocab["item_impressions"] = [int(x) for x in impressions]  # labelled impressions
    for task, y in (("click", click), ("purchase", purchase)):
        rate = float(y.mean())
        prior = float(np.clip(rate, 1e-6, 1 - 1e-6))
        rates = position_rates(y, pos, P + 1, float(config["position_smoothing"]), prior)
        expected = np.bincount(item[known], weights=rates[pos[known]], minlength=len(items))
        hits = np.bincount(item[known], weights=y[known], minlength=len(items))
        m = float(config["item_smoothing"])  # pseudo-events at the expected rate
        factor = np.divide(hits + m, expected + m, out=np.ones(len(items)),
                           where=expected + m > 0)
        vocab[f"position_{task}_rate"] = [float(x) for x in rates]
        vocab[f"item_{task}_factor"] = [float(x) for x in factor]
        vocab[task] = {"rate": rate, "scale": 1.0, "exponent": 0.0}

    # Categories' global share of (weighted) history events, add-one smoothed (every row).
    hist = history(features, config)
    H = int(config["max_history"])
    hist_cat = lookup(np.asarray(features["hist_category"])[:, :H], categories)
    hist_cat = np.pad(hist_cat, [(0, 0), (0, H - hist_cat.shape[1])], constant_values=-1)
    ok = hist_cat >= 0
    cat_weight = np.bincount(hist_cat[ok], weights=hist["weight"][ok],
                             minlength=len(categories))
    vocab["category_prior"] = [float(x) for x in
                               (cat_weight + 1.0) / (cat_weight.sum() + len(categories))]

    # price_range: the label's edges (every row) and prior (add-one smoothed).
    vocab["price_edges"] = [float(x) for x in _price_edges(features, K)]
    label = np.asarray(sub["price_range"], np.int64)
    present = (label >= 0) & (label < K)
    if "price_range_mask" in sub:
        present &= np.asarray(sub["price_range_mask"]) > 0
    counts = np.bincount(label[present], minlength=K)[:K].astype(np.float64)
    vocab["price_prior"] = [float(x) for x in (counts + 1.0) / (counts.sum() + K)]

    # demand.
    vocab["demand"], item_demand = _fit_demand(
        {k: v[whole] for k, v in sub.items()}, item[whole], demand[whole], len(items), config)
    vocab["item_demand"] = [float(x) for x in item_demand]

    # The lift exponents and scales, on the labelled training examples themselves.
    enc = encode(vocab, config, sub, {k: v[labelled] for k, v in hist.items()})
    lift = affinity_lift(enc["category"], enc["hist_category"], enc["hist_weight"],
                         vocab["category_prior"], float(config["affinity_smoothing"]))
    for task, y in (("click", click), ("purchase", purchase)):
        scale, exponent = _fit_exponent(y, base_rate(vocab, enc, task), lift)
        vocab[task].update(scale=scale, exponent=exponent)
    if config.get("price_fit", False) and present.any():
        vocab["price_fit"] = _fit_price(enc, label, present, vocab["price_prior"])
    return validate(vocab)


# The grid of (b, c) the price fit searches: the prior's weight, the candidate's.
PRICE_SMOOTHING_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
CANDIDATE_PRICE_WEIGHT_GRID = (0.0, 1.0, 3.0, 10.0, 30.0)


def _fit_price(enc: dict, label, present, prior) -> dict:
    """price_smoothing b and candidate_price_weight c of least training log-loss.

    How much a user's browsing prices say about their next purchase depends on the shop
    (a replenishment shop's next buy is the staple that is due, whatever was browsed): fixed
    values can make the histogram worse than the prior alone, which b -> large recovers."""
    y = label[present]
    best = None
    for b in PRICE_SMOOTHING_GRID:
        for c in CANDIDATE_PRICE_WEIGHT_GRID:
            p = price_distribution(enc["hist_price_bucket"][present],
                                   enc["hist_weight"][present], enc["price_bucket"][present],
                                   prior, b, c)
            loss = -np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, b, c)
    return {"smoothing": best[1], "candidate_weight": best[2]}


def price_knobs(vocabulary: dict, config: dict) -> tuple[float, float]:
    """(price_smoothing, candidate_price_weight): the fitted ones, else the config's."""
    fit = vocabulary.get("price_fit")
    if fit:
        return float(fit["smoothing"]), float(fit["candidate_weight"])
    return float(config["price_smoothing"]), float(config["candidate_price_weight"])


def placeholder_vocabulary(config) -> dict:
    """Statistics of the config's nominal sizes, all at neutral values (parameter counts,
    smoke tests; not for evaluation)."""
    config = _config(config)
    V, C = int(config["item_vocab_size"]), int(config["category_vocab_size"])
    K, P = int(config["num_price_ranges"]), int(config["max_position"])
    return validate({
        "format": FORMAT, "num_examples": 0,
        "item_id": [f"item_{i}" for i in range(V)],
        "item_impressions": [0] * V, "item_click_factor": [1.0] * V,
        "item_purchase_factor": [1.0] * V, "item_demand": [1.0] * V,
        "category": [f"category_{i}" for i in range(C)], "category_prior": [1.0 / C] * C,
        "position_click_rate": [0.1] * (P + 1), "position_purchase_rate": [0.02] * (P + 1),
        "price_edges": [float(x) for x in np.geomspace(1.0, 1000.0, K + 1)[1:-1]],
        "price_prior": [1.0 / K] * K,
        "click": {"rate": 0.1, "scale": 1.0, "exponent": 0.0},
        "purchase": {"rate": 0.02, "scale": 1.0, "exponent": 0.0},
        "demand": {"mean": 1.0, "intercept": 1.0, "purchases_7d": 0.0, "item_mean": 0.0},
    })


def validate(vocabulary: dict) -> dict:
    """Checks a vocabulary dict (e.g. read back from JSON); returns it with plain types."""
    keys = ("item_id", *ITEM_KEYS, "category", "category_prior", "position_click_rate",
            "position_purchase_rate", "price_edges", "price_prior", "click", "purchase",
            "demand")
    missing = [k for k in keys if k not in vocabulary]
    if missing:
        raise ValueError(f"popularity vocabulary lacks key(s) {missing}")
    v = {"format": vocabulary.get("format", FORMAT),
         "num_examples": int(vocabulary.get("num_examples", 0)),
         "num_labelled": int(vocabulary.get("num_labelled", vocabulary.get("num_examples", 0)))}
    for key in ("item_id", "category"):
        values = [str(x) for x in vocabulary[key]]
        if "" in values or len(set(values)) != len(values):
            raise ValueError(f"vocabulary[{key!r}] must hold distinct non-empty strings")
        v[key] = values
    for key in ITEM_KEYS:
        v[key] = [int(x) if key == "item_impressions" else float(x) for x in vocabulary[key]]
        if len(v[key]) != len(v["item_id"]):
            raise ValueError(f"vocabulary[{key!r}] must have one value per item_id")
    v["category_prior"] = [float(x) for x in vocabulary["category_prior"]]
    if len(v["category_prior"]) != len(v["category"]) or min(v["category_prior"],
                                                             default=1.0) <= 0:
        raise ValueError("vocabulary['category_prior'] must be positive, one per category")
    for key in ("position_click_rate", "position_purchase_rate", "price_edges", "price_prior"):
        v[key] = [float(x) for x in vocabulary[key]]
    if len(v["position_click_rate"]) != len(v["position_purchase_rate"]):
        raise ValueError("the position rate tables must have the same length")
    if len(v["price_edges"]) != len(v["price_prior"]) - 1 or any(
            b < a for a, b in zip(v["price_edges"], v["price_edges"][1:])):
        raise ValueError("vocabulary['price_edges'] must be K - 1 sorted edges of the K "
                         "price_prior buckets")
    for task in ("click", "purchase"):
        v[task] = {k: float(vocabulary[task][k]) for k in ("rate", "scale", "exponent")}
    v["demand"] = {k: float(vocabulary["demand"][k])
                   for k in ("mean", "intercept", "purchases_7d", "item_mean")}
    if vocabulary.get("price_fit"):
        fit = vocabulary["price_fit"]
        v["price_fit"] = {k: float(fit[k]) for k in ("smoothing", "candidate_weight")}
        if v["price_fit"]["smoothing"] <= 0 or v["price_fit"]["candidate_weight"] < 0:
            raise ValueError("vocabulary['price_fit'] needs smoothing > 0 and "
                             "candidate_weight >= 0")
    return v
