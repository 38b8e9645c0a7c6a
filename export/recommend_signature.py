"""The `recommend` signature: a request's user context in, the top K of the whole catalogue
out, retrieval and ranking in one graph, so stock TF Serving answers it alone.

    user_id, query, the user's behaviour events (hist_*), the categories of the session's
    impressions so far, the request features, items to exclude
    -> item_id, title, category, brand, price, score, click, purchase, retrieval_score
       [B, K], best first
      -> query tower -> dot product with the catalogue's item embeddings (a table in the
         graph) -> exclusions -> the top C candidates
      -> each candidate's raw features, assembled in the graph: its catalogue fields, the
         snapshot's item statistics, the request's features, and the pair features
         computed from the history (`zoo.data.serving_features`)
      -> the ranker's objective (click, purchase or gmv = p(purchase) x price), blended with
         the retrieval logit as the offline cascade blends (`recommend_lib.blend`) -> top K
      -> (exports with `Options.explain_steps`) each of the K items' reasons: the two
         history events that raise its objective most beyond the other K - 1 items'
         (integrated gradients in the graph, `zoo.models.explain.reason_tensors`; what
         `trainers.recommend --explain_steps` writes offline) -> because_item_id,
         because_event, because_seconds_ago, because_weight [B, K, 2] ("", "", -1, 0 where
         an item has fewer reasons)

The catalogue (item fields, embeddings) and the statistics are those of the export: a new
catalogue is a new version. K, C, the objective and the blend weight are fixed per export
(`export.saved_model --retrieval_dir ... --recommend_k ...`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from export import graph_checks
from trainers.core import recommend_lib
from zoo.data import serving_features as sf
from zoo.data.examples import MISSING
from zoo.data.log_features import CTR_PRIOR_STRENGTH
from zoo.models.features import CONTEXT_FEATURES, RAW_FEATURES

SIGNATURE = "recommend"
HISTORY_INPUTS = sf.HISTORY_INPUTS
OUTPUTS = ("item_id", "title", "category", "brand", "price", "score", "click", "purchase",
           "retrieval_score")
# With Options.explain_steps > 0.
REASON_OUTPUTS = ("because_item_id", "because_event", "because_seconds_ago", "because_weight")
# A floor under the ranker's probabilities before the log of the blend (as offline).
MIN_PROBABILITY = 1e-12


def input_signature() -> dict:
    """[B] per request, [B, any] per history event / session impression / exclusion."""
    specs = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
             "query": tf.TensorSpec([None], tf.string, name="query")}
    for name in HISTORY_INPUTS:
        dtype = tf.as_dtype(RAW_FEATURES[name][0])
        specs[name] = tf.TensorSpec([None, None], dtype, name=name)
    specs["session_category"] = tf.TensorSpec([None, None], tf.string, name="session_category")
    specs["exclude_item_id"] = tf.TensorSpec([None, None], tf.string, name="exclude_item_id")
    for name in sf.REQUEST_FEATURES:
        specs[name] = tf.TensorSpec([None], tf.float32, name=name)
    return specs


class Catalogue(tf.Module):
    """The export's catalogue and statistics as graph tables (variables, saved with it)."""

    def __init__(self, catalogue: dict, embeddings: np.ndarray, snapshot: sf.Snapshot):
        super().__init__(name="catalogue")
        n = len(catalogue["item_id"])
        if embeddings.shape[0] != n:
            raise ValueError(f"{embeddings.shape[0]} item embeddings for {n} items")

        def strings(values):
            return tf.Variable(tf.constant(np.asarray(values, object).astype(str).tolist(),
                                           tf.string, shape=[n]), trainable=False)

        self.item_id = strings(catalogue["item_id"])
        self.category = strings(catalogue["item_category"])
        self.brand = strings(catalogue["item_brand"])
        self.title = strings(catalogue["item_title"])
        self.price = tf.Variable(np.asarray(catalogue["item_price"], np.float32),
                                 trainable=False)
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False)
        self.item_stats = {name: tf.Variable(np.asarray(snapshot.item[name], np.float32),
                                             trainable=False)
                           for name in sf.ITEM_FEATURES + sf.ITEM_RAW}
        self.item_row = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(catalogue["item_id"], object).astype(str).tolist(),
                        tf.string), tf.range(n, dtype=tf.int64)), default_value=-1)
        keys = np.asarray(snapshot.query_category_keys, object).astype(str).tolist()
        self.query_category_row = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys or [sf.KEY_SEPARATOR], tf.string),
            tf.range(max(len(keys), 1), dtype=tf.int64)), default_value=-1)
        # Row P (past the last key) answers unknown pairs: nothing seen.
        self.query_category_counts = tf.Variable(np.stack([
            np.r_[snapshot.query_category_impressions[:len(keys)], 0.0],
            np.r_[snapshot.query_category_clicks[:len(keys)], 0.0]], 1).astype(np.float32),
            trainable=False)
        self.click_rate = tf.Variable(np.float32(snapshot.click_rate), trainable=False)
        names = np.asarray(snapshot.category_names, object).astype(str).tolist()
        levels = np.asarray(snapshot.category_levels, np.float32)
        # Unknown categories (none in the catalogue's own history): the overall level.
        self.category_level = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(names or [""], tf.string),
            tf.constant(levels if names else np.zeros(1, np.float32), tf.float32)),
            default_value=float(levels.mean()) if names else 0.0)
        self.size = n


def _nan_to_missing(x):
    return tf.where(tf.math.is_nan(x), tf.constant(MISSING, x.dtype), x)


def _ratio(a, b):
    """a / b, NaN where b is 0 (as `log_features._ratio`)."""
    return tf.where(b > 0, a / tf.where(b > 0, b, 1.0), tf.constant(np.nan, tf.float32))


def pair_features(hist: dict, cand: dict, session_category, query, cat: Catalogue) -> dict:
    """PAIR_FEATURES [B, C] from the full history [B, H] and the candidates' fields [B, C]."""
    valid = tf.not_equal(hist["hist_item_id"], "")                     # [B, H]
    event = hist["hist_event"]
    kinds = {k: tf.logical_and(valid, tf.equal(event, k)) for k in ("click", "cart", "purchase")}
    gap = hist["hist_gap"][:, None, :]

    def same(field, hist_field):                                      # [B, C, H]
        return tf.logical_and(tf.equal(cand[field][:, :, None], hist[hist_field][:, None, :]),
                              valid[:, None, :])

    def count(match, kind):
        return tf.reduce_sum(tf.cast(tf.logical_and(match, kinds[kind][:, None, :]),
                                     tf.float32), -1)

    def seconds_since(match):
        latest = tf.reduce_min(tf.where(match, gap, tf.constant(np.inf, tf.float32)), -1)
        return tf.where(tf.reduce_any(match, -1), latest, tf.constant(np.nan, tf.float32))

    item, category, brand = (same("item_id", "hist_item_id"),
                             same("item_category", "hist_category"),
                             same("item_brand", "hist_brand"))
    f = {"user_item_clicks": count(item, "click"), "user_item_carts": count(item, "cart"),
         "user_item_purchases": count(item, "purchase"),
         "user_item_seconds": seconds_since(item),
         "user_category_clicks": count(category, "click"),
         "user_category_purchases": count(category, "purchase"),
         "user_category_seconds": seconds_since(tf.logical_and(
             category, kinds["click"][:, None, :])),
         "user_brand_clicks": count(brand, "click"),
         "user_brand_purchases": count(brand, "purchase")}
    price = hist["hist_price"]
    for kind, name in (("purchase", "price_vs_user_purchases"),
                       ("click", "price_vs_user_clicks")):
        k = tf.cast(kinds[kind], tf.float32)
        mean = _ratio(tf.reduce_sum(price * k, -1), tf.reduce_sum(k, -1))   # [B]
        f[name] = _ratio(cand["item_price"], mean[:, None])
    f.update(_relative_prices(hist, cand, kinds, category, cat))
    seen = tf.not_equal(session_category, "")
    in_category = tf.logical_and(tf.equal(cand["item_category"][:, :, None],
                                          session_category[:, None, :]), seen[:, None, :])
    f["session_category_share"] = _ratio(
        tf.reduce_sum(tf.cast(in_category, tf.float32), -1),
        tf.reduce_sum(tf.cast(seen, tf.float32), -1)[:, None])
    keys = tf.strings.join([tf.broadcast_to(query[:, None], tf.shape(cand["item_category"])),
                            cand["item_category"]], separator=sf.KEY_SEPARATOR)
    row = cat.query_category_row.lookup(keys)
    row = tf.where(row < 0, tf.shape(cat.query_category_counts, out_type=tf.int64)[0] - 1, row)
    counts = tf.gather(cat.query_category_counts, row)                # [B, C, 2]
    f["query_category_impressions"] = counts[..., 0]
    f["query_category_ctr"] = ((counts[..., 1] + CTR_PRIOR_STRENGTH * cat.click_rate)
                               / (counts[..., 0] + CTR_PRIOR_STRENGTH))
    return f


def _relative_prices(hist, cand, kinds, same_category, cat: Catalogue) -> dict:
    """The user's category-relative prices (`log_features`: r = log price - the category's
    level; exp(r - the mean r of the history), their spread, the same within the
    candidate's category), [B, C], NaN where undefined."""
    def relative(price, category):
        return tf.math.log(tf.maximum(price, 1e-30)) - cat.category_level.lookup(category)

    events = tf.cast(kinds["click"] | kinds["cart"] | kinds["purchase"], tf.float32)  # [B, H]
    r_hist = relative(hist["hist_price"], hist["hist_category"]) * events
    r = relative(cand["item_price"], cand["item_category"])                 # [B, C]
    n = tf.reduce_sum(events, -1)
    mean = _ratio(tf.reduce_sum(r_hist, -1), n)                             # [B]
    spread = tf.square(r_hist - tf.where(n > 0, mean, 0.0)[:, None]) * events
    sd = tf.sqrt(_ratio(tf.reduce_sum(spread, -1), n))
    in_category = tf.cast(same_category, tf.float32) * events[:, None, :]   # [B, C, H]
    mean_category = _ratio(tf.reduce_sum(in_category * r_hist[:, None, :], -1),
                           tf.reduce_sum(in_category, -1))
    return {"relative_price_vs_user": tf.exp(r - mean[:, None]),
            "relative_price_sd_user": tf.broadcast_to(sd[:, None], tf.shape(r)),
            "relative_price_vs_user_category": tf.exp(r - mean_category)}


def build(ranker, retriever, cat: Catalogue, history_length: int, retrieval_history: int,
          options: recommend_lib.Options):
    """The `recommend` tf.function (the ranker, the retriever and `cat` must be tracked by
    whoever saves it). Each model is given the last events of the history: `history_length`
    for the ranker (`Options.ranker_events`: what its preprocessor reads),
    `retrieval_history` for the retriever (what it was trained with)."""
    from zoo.models.two_tower.model import complete_features

    options.check()
    if options.explain_steps:
        from zoo.models.explain import check

        check(ranker, options.explain_output(), options.explain_steps)
    num_candidates = min(options.candidates, cat.size)
    k = min(options.k, num_candidates)
    L, R = int(history_length), int(retrieval_history)

    @tf.function(input_signature=[input_signature()])
    def recommend(inputs):
        inputs = graph_checks.finite(inputs)
        batch = tf.shape(inputs["user_id"])[0]
        hist = {name: inputs[name] for name in HISTORY_INPUTS}
        length = tf.shape(hist["hist_item_id"])[1]
        checks = [tf.debugging.assert_equal(
            tf.shape(hist[n])[1], length,
            message=f"{n} must have as many columns as hist_item_id") for n in HISTORY_INPUTS]
        with tf.control_dependencies(checks):
            hist = {n: tf.identity(v) for n, v in hist.items()}
        recent = {n: v[:, :L] for n, v in hist.items()}

        # Retrieval over the whole catalogue.
        user = {"user_id": inputs["user_id"], "query": inputs["query"],
                **{n: v[:, :R] for n, v in hist.items()}}
        q = retriever.backbone(retriever.preprocess(complete_features(user)),
                               training=False)["query_embedding"]
        logits = tf.matmul(tf.cast(q, tf.float32), cat.embeddings,
                           transpose_b=True) / retriever.temperature          # [B, N]
        excluded = cat.item_row.lookup(inputs["exclude_item_id"])               # [B, X]
        where = tf.where(excluded >= 0)
        hits = tf.scatter_nd(
            tf.stack([where[:, 0], tf.gather_nd(excluded, where)], 1),
            tf.ones([tf.shape(where)[0]], tf.float32), tf.cast(tf.shape(logits), tf.int64))
        logits_kept = tf.where(hits > 0, tf.constant(-np.inf, tf.float32), logits)
        top = tf.math.top_k(logits_kept, num_candidates)
        rows = top.indices                                                      # [B, C]
        retrieval = tf.gather(logits, rows, batch_dims=1)

        # The candidates' raw features, request-major (row b * C + c).
        cand = {"item_id": tf.gather(cat.item_id, rows),
                "item_category": tf.gather(cat.category, rows),
                "item_brand": tf.gather(cat.brand, rows),
                "item_title": tf.gather(cat.title, rows),
                "item_price": tf.gather(cat.price, rows)}
        pairs = pair_features(hist, cand, inputs["session_category"], inputs["query"], cat)

        def per_request(x):
            return tf.repeat(x, num_candidates, axis=0)

        raw = {"user_id": per_request(inputs["user_id"]),
               "query": per_request(inputs["query"]),
               **{n: per_request(v) for n, v in recent.items()},
               **{n: tf.reshape(v, [-1]) for n, v in cand.items()},
               "position": tf.fill([batch * num_candidates], tf.constant(-1, tf.int64))}
        for name in sf.ITEM_RAW:
            raw[name] = tf.reshape(tf.gather(cat.item_stats[name], rows), [-1])
        for name in CONTEXT_FEATURES:
            if name in sf.REQUEST_FEATURES:
                value = per_request(inputs[name])
            elif name in sf.ITEM_FEATURES:
                value = tf.reshape(tf.gather(cat.item_stats[name], rows), [-1])
            else:
                value = tf.reshape(_nan_to_missing(pairs[name]), [-1])
            raw[name] = value
        out = ranker(ranker.preprocessor(raw), training=False)
        click = tf.reshape(tf.cast(out["click"], tf.float32), [batch, num_candidates])
        purchase = tf.reshape(tf.cast(out["purchase"], tf.float32), [batch, num_candidates])
        objective = {"click": click, "purchase": purchase,
                     "gmv": purchase * cand["item_price"]}[options.objective]
        if options.retrieval_weight:
            score = (tf.math.log(tf.maximum(objective, MIN_PROBABILITY))
                     + options.retrieval_weight * retrieval)
        else:
            score = objective
        # An excluded item is among the candidates only when fewer than C items are left:
        # it scores -inf and ranks last (callers drop non-finite scores).
        kept = tf.gather(hits, rows, batch_dims=1) <= 0
        score = tf.where(kept, score, tf.constant(-np.inf, tf.float32))
        best = tf.math.top_k(score, k)
        pick = best.indices
        rows_out = tf.gather(rows, pick, batch_dims=1)
        reasons = {}
        if options.explain_steps:
            reasons = _reasons(ranker, raw, recent, pick, num_candidates, options)
        return {**reasons, "item_id": tf.gather(cand["item_id"], pick, batch_dims=1),
                "title": tf.gather(cat.title, rows_out),
                "category": tf.gather(cat.category, rows_out),
                "brand": tf.gather(cat.brand, rows_out),
                "price": tf.gather(cat.price, rows_out),
                "score": best.values,
                "click": tf.gather(click, pick, batch_dims=1),
                "purchase": tf.gather(purchase, pick, batch_dims=1),
                "retrieval_score": tf.gather(retrieval, pick, batch_dims=1)}

    return recommend


def _reasons(ranker, raw: dict, recent: dict, pick, num_candidates: int, options) -> dict:
    """The REASON_OUTPUTS of the picked candidates [B, K]: their raw rows (request major)
    explained together, each position mapped back to the request's history columns."""
    from zoo.models.explain import REASONS, reason_tensors

    batch, k = tf.shape(pick)[0], pick.shape[1]
    flat = tf.reshape(pick + num_candidates * tf.range(batch)[:, None], [-1])
    picked = {name: tf.gather(v, flat) for name, v in raw.items()}
    found = reason_tensors(ranker, picked, k, options.explain_output(),
                           options.explain_steps, REASONS)
    position = found["position"]                                    # [B, K, R]
    where = tf.reshape(tf.maximum(position, 0), [batch, -1])        # [B, K * R]
    none = position < 0

    def take(values, empty):
        # One empty column more: a request without history still has a column 0 to take.
        values = tf.pad(values, [[0, 0], [0, 1]], constant_values=empty)
        got = tf.reshape(tf.gather(values, where, batch_dims=1), tf.shape(position))
        return tf.where(none, tf.cast(empty, got.dtype), got)

    return {"because_item_id": take(recent["hist_item_id"], ""),
            "because_event": take(recent["hist_event"], ""),
            "because_seconds_ago": take(tf.cast(recent["hist_gap"], tf.float32), -1.0),
            "because_weight": found["weight"]}


class Recommender:
    """What an export needs to add `recommend`: the function and what it must track."""

    SIGNATURE = SIGNATURE

    def __init__(self, ranker, retriever, tables, history_length: int,
                 retrieval_history: int, options: recommend_lib.Options):
        from trainers.core.retrieval_task import catalogue_embeddings
        from zoo.data import requests as requests_lib

        self.retriever, self.options = retriever, options
        self.history_length = int(history_length)
        self.ranker_history = options.ranker_events(ranker, history_length)
        items = requests_lib.catalogue(tables)
        self.snapshot = sf.snapshot(tables)
        self.catalogue = Catalogue(items, catalogue_embeddings(retriever, items), self.snapshot)
        self.function = build(ranker, retriever, self.catalogue, self.ranker_history,
                              retrieval_history, options)

    def __call__(self, inputs: dict) -> dict:
        """The signature's outputs (numpy) for numpy inputs."""
        out = self.function(to_tensors(inputs))
        return {k: v.numpy() for k, v in out.items()}

    def manifest(self) -> dict:
        o = self.options
        return {"signature": SIGNATURE, "k": min(o.k, o.candidates, self.catalogue.size),
                "candidates": min(o.candidates, self.catalogue.size),
                "objective": o.objective, "retrieval_weight": o.retrieval_weight,
                "catalogue_size": self.catalogue.size, "snapshot_time": self.snapshot.time,
                "history_length": self.history_length,
                "ranker_history": self.ranker_history, "explain_steps": o.explain_steps,
                "outputs": list(OUTPUTS + (REASON_OUTPUTS if o.explain_steps else ())),
                "request_features": list(sf.REQUEST_FEATURES)}


def to_tensors(inputs: dict) -> dict:
    """Numpy inputs (strings as object arrays, `exclude_item_id` optional) -> tensors."""
    out = {}
    for name, spec in input_signature().items():
        if name == "exclude_item_id" and name not in inputs:
            value = np.zeros((len(inputs["user_id"]), 0), object)
        else:
            value = inputs[name]
        if spec.dtype == tf.string:
            value = np.asarray(value, object)
            out[name] = tf.constant(value.astype(str).tolist() if value.size else
                                    np.zeros(value.shape, np.bytes_), tf.string)
        else:
            out[name] = tf.constant(np.asarray(value), spec.dtype)
    return out


def sample_requests(tables, snapshot: sf.Snapshot, n: int):
    """The log's last n sessions, each continued at the snapshot's time with its opening
    query: real users with real histories, for warmup and the export's check."""
    import dataclasses

    from zoo.data import requests as requests_lib

    reqs = requests_lib.session_requests(tables, int(tables.events["timestamp"].min()))
    reqs = reqs.take(np.arange(max(0, len(reqs) - n), len(reqs)))
    return dataclasses.replace(reqs, timestamp=np.full(len(reqs), snapshot.time, np.int64))
