"""Why the model scored an impression as it did: integrated gradients over its inputs.

    exp = zoo.explain(model, raw_features, output="purchase", steps=32)
    exp["history"]       [B, H]  one attribution per history event (column 0 = latest)
    exp["query"]         [B, Q]  per query token
    exp["candidate"]     [B]     the candidate's fields (id, category, brand, price, title,
                                 rank, trailing counts: its embedding)
    exp["context"]       {name: [B]} per context feature of the dense path (the session so
                                 far, the user's counts, the candidate's relative price, ...)
    exp["history_via_features"] [B, H]  the part of exp["history"] an event adds through the
                                 features computed from the history window (e.g. "purchases
                                 of this brand", "recency of this category")
    exp["output"], exp["baseline_output"]  [B]; completeness: the attributions of a row sum
                                 to output - baseline_output up to the Riemann error
    exp["completeness_error"] [B]  |sum - difference| / max(|difference|, 1e-6)

Integrated gradients (Sundararajan et al. 2017) along the straight line from a baseline to
the input, in the space the network actually reads: the embedding sequence the encoder
takes (every id, bucket and token already embedded, so an id is attributed as a whole) and
the dense context features. The baseline is the padding input: every history event, query
token and candidate field embedded as the padding index 0 (the embedding fine-tuning never
attends to) and the dense features set to 0 (their standardised mean); the padding mask
and the impression's rank are the input's own, so the attention pattern and the position
factor stay the ones being explained.

The dense features the preprocessor computes from the history window (counts of the
candidate's brand among the events, their recency, the history's price level:
`RankerPreprocessor.history_features`) are not inputs of their own: they are what the
events are, summed. Along the path each event also enters those features with the weight
alpha (0 = absent, 1 = present), so an event is credited with what it adds through them
beside what it adds through its embedding, and the baseline is "no history" for them
(history_empty = 1, no matches). Without this the credit for "bought this brand two days
ago" would land on a column named brand_purchases, not on the purchase. The m-step
midpoint Riemann sum runs as one batch of B x m rows; 32 steps keep the completeness error
of the shipped presets around 1 % (measured in the tests). Attention weights alone are not
an explanation (Jain & Wallace 2019), which is why the gradients are taken.

Only backbones with an embedding sequence (`bert_mtl` and its structures) can be
explained; `dnn_mtl` pools its fields before any sequence and is refused by name.
"""

from __future__ import annotations

import numpy as np

from zoo.models.features import CONTEXT_FEATURES
from zoo.models.ranker.preprocessor import HISTORY_FEATURES

OUTPUTS = ("click", "purchase")
# History events a recommended item names as its reasons ("because you bought ...").
REASONS = 2
# Candidate inputs the padding baseline zeroes (the history and query ones likewise). The
# rank (`position_bucket`) stays the input's own: with PAL it reaches the click output
# through the position tower, outside the embedding sequence, and a neutral rank is what a
# recommendation is served with anyway.
_ZEROED = ("item_index", "category_index", "brand_index", "price_bucket",
           "item_clicks_bucket", "item_purchases_bucket", "user_index", "title_tokens",
           "query_tokens", "hist_item_index", "hist_category_index", "hist_brand_index",
           "hist_event_index", "hist_price_bucket", "hist_gap_bucket", "hist_title_tokens")


def dense_groups(preprocessor) -> list[tuple[str, np.ndarray]]:
    """(feature name, its columns of dense_features): a context feature owns its value,
    its missing flag and its bins; each in-graph feature one column."""
    sizes = preprocessor.vocabulary_sizes()
    c = sizes.get("context_features", 0)
    bins = sizes.get("context_bins", 0)
    groups = []
    for i, name in enumerate(CONTEXT_FEATURES[:c]):
        cols = [i, c + i] + [2 * c + i * bins + j for j in range(bins)]
        groups.append((name, np.array(cols)))
    start = (2 + bins) * c
    for j, name in enumerate(preprocessor.in_graph_features):
        groups.append((name, np.array([start + j])))
    return groups


class _Patched:
    """Makes the backbone's embedding layer return a given sequence (keeping the input's
    padding mask), or record what it computes."""

    def __init__(self, layer):
        self.layer = layer
        self.original = layer.call
        self.sequence = None
        self.recorded = None

    def __call__(self, inputs, training=None):
        x, mask = self.original(inputs, training=training)
        if self.sequence is None:
            self.recorded = x
            return x, mask
        return self.sequence, mask

    def __enter__(self):
        self.layer.call = self
        return self

    def __exit__(self, *exc):
        del self.layer.call


def _history_columns(preprocessor, width: int) -> tuple[list[str], "np.ndarray"]:
    """(the history-derived in-graph features, a [n, width] matrix placing each in its
    dense_features column)."""
    names = [n for n in getattr(preprocessor, "in_graph_features", ()) if n in HISTORY_FEATURES]
    start = width - len(preprocessor.in_graph_features)
    place = np.zeros((len(names), width), np.float32)
    for i, name in enumerate(names):
        place[i, start + preprocessor.in_graph_features.index(name)] = 1.0
    return names, place


# The raw inputs the history-derived features are computed from (tiled along the path).
_HISTORY_RAW = ("hist_item_id", "hist_category", "hist_brand", "hist_event", "hist_price",
                "hist_gap", "item_id", "item_category", "item_brand", "item_price")


def check(model, output: str, steps: int):
    """The embedding layer `attribution_tensors` patches; a clear error for what cannot be
    explained."""
    if output not in OUTPUTS:
        raise ValueError(f"explain: output must be one of {OUTPUTS}, got {output!r}")
    if int(steps) < 1:
        raise ValueError(f"explain: steps must be >= 1, got {steps}")
    from zoo.models.bert_mtl.backbone import EventSequenceEmbedding

    backbone = getattr(model, "backbone", None)
    layer = getattr(backbone, "embeddings", None)
    if not isinstance(layer, EventSequenceEmbedding):
        raise ValueError(f"explain: {type(backbone).__name__} has no embedding sequence to "
                         "attribute over; explanations need a bert_mtl model")
    return layer


def attribution_tensors(model, raw: dict, output: str = "purchase", steps: int = 64) -> dict:
    """The graph of `explain`, traceable (the `recommend` signature runs it inside TF
    Serving): raw features (tensors) of B rows in, tensors out: output, baseline_output
    [B]; sequence [B, S] per position of the embedding sequence; dense [B, F] per column
    of dense_features (absent without them); history_via_features [B, H]."""
    import tensorflow as tf

    layer = check(model, output, steps)
    pre = {k: tf.convert_to_tensor(v) for k, v in model.preprocessor(raw).items()}
    base_pre = {k: (tf.zeros_like(v) if k in _ZEROED or k == "dense_features" else v)
                for k, v in pre.items()}
    dense = "dense_features" in pre
    names, place = (_history_columns(model.preprocessor, int(pre["dense_features"].shape[1]))
                    if dense else ([], None))
    mask = tf.cast(pre["hist_mask"], tf.float32)
    raw = {k: tf.convert_to_tensor(raw[k]) for k in _HISTORY_RAW if k in raw}

    def history_dense(raw, pre, weight, linear):
        """`linear` with the history-derived columns computed at event weights `weight`."""
        if not names:
            return linear
        values = model.preprocessor.history_features(raw, pre, weight)
        placed = tf.matmul(tf.stack([values[n] for n in names], axis=1), place)
        return linear * (1.0 - tf.reduce_sum(place, axis=0)) + placed

    if names:
        base_pre["dense_features"] = history_dense(raw, pre, tf.zeros_like(mask),
                                                   base_pre["dense_features"])
    with _Patched(layer) as patch:
        y = model(pre, training=False)[output]
        x = patch.recorded
        model(base_pre, training=False)
        x0 = patch.recorded
        # The baseline's output under the input's own padding mask (zeroed query tokens
        # would mask their positions): the start of the path the gradients integrate.
        patch.sequence = x0
        y0 = model({**pre, **({"dense_features": base_pre["dense_features"]}
                              if dense else {})}, training=False)[output]
    m = int(steps)
    alphas = (tf.range(m, dtype=tf.float32) + 0.5) / m  # midpoints

    def tile(t):
        return tf.repeat(t, m, axis=0)  # row i's m copies are rows i*m .. i*m + m-1

    a = tf.tile(alphas, tf.shape(x)[:1])
    xs = tile(x0) + a[:, None, None] * tile(x - x0)
    inputs = {k: tile(v) for k, v in pre.items()}
    weight = a[:, None] * tile(mask)  # each event's presence along the path
    if dense:
        d, d0 = pre["dense_features"], base_pre["dense_features"]
        linear = tile(d0) + a[:, None] * tile(d - d0)
    with _Patched(layer) as patch, tf.GradientTape() as tape:
        tape.watch(xs)
        targets = [xs]
        if dense:
            tape.watch(linear)
            tape.watch(weight)
            targets += [linear, weight]
            inputs["dense_features"] = history_dense(
                {k: tile(v) for k, v in raw.items()}, inputs, weight, linear)
        patch.sequence = xs
        out = model(inputs, training=False)[output]
    grads = tape.gradient(out, targets)

    def mean_over_path(g):
        return tf.reduce_mean(tf.reshape(g, [-1, m, *g.shape[1:]]), axis=1)

    result = {"output": y, "baseline_output": y0,
              "sequence": tf.reduce_sum(mean_over_path(grads[0]) * (x - x0), axis=-1),
              "history_via_features": tf.zeros_like(mask), "hist_mask": mask}
    if dense:
        result["dense"] = mean_over_path(grads[1]) * (d - d0)
        if grads[2] is not None:
            result["history_via_features"] = mean_over_path(grads[2]) * mask
    return result


def _history_part(t: dict, backbone):
    """[B, H] per history event of `attribution_tensors`' result (tensors or arrays): its
    slot of the embedding sequence plus what it adds through the history features."""
    Q, H = backbone.max_query_tokens, backbone.max_history
    return t["sequence"][:, Q + 2:Q + 2 + H] + t["history_via_features"][:, :H]


def explain(model, features: dict, output: str = "purchase", steps: int = 64) -> dict:
    """Integrated-gradients attributions of `output` for each row of `features` (a batch
    of raw features, `zoo.models.features.RAW_FEATURES`)."""
    import tensorflow as tf

    t = attribution_tensors(model, {k: tf.convert_to_tensor(np.asarray(v))
                                    for k, v in features.items()}, output, steps)
    t = {k: v.numpy().astype(np.float64) for k, v in t.items()}
    per_position = t["sequence"]  # [B, S]
    backbone = model.backbone
    Q, H = backbone.max_query_tokens, backbone.max_history
    via = t["history_via_features"][:, :H]
    result = {
        "output": t["output"], "baseline_output": t["baseline_output"],
        "query": per_position[:, 1:1 + Q],
        "history": _history_part(t, backbone),
        "candidate": per_position[:, -1],
        "special": per_position[:, 0] + per_position[:, Q + 1] + per_position[:, Q + 2 + H],
        "context": {}, "steps": int(steps), "history_via_features": via,
    }
    total = per_position.sum(axis=1) + via.sum(axis=1)
    if "dense" in t:
        names = set(_history_columns(model.preprocessor, t["dense"].shape[1])[0])
        for name, cols in dense_groups(model.preprocessor):
            if name not in names:  # those are credited to the events
                result["context"][name] = t["dense"][:, cols].sum(axis=1)
        total = total + t["dense"].sum(axis=1)
    diff = result["output"] - result["baseline_output"]
    result["total"] = total
    result["completeness_error"] = np.abs(total - diff) / np.maximum(np.abs(diff), 1e-6)
    return result


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def top_history_events(explanation: dict, features: dict, k: int = 2) -> list[list[dict]]:
    """Per row, the `k` history events with the largest positive attribution (what drove
    the score up): their item, category, event kind and attribution."""
    h = explanation["history"]
    out = []
    for i in range(h.shape[0]):
        items = _text(np.asarray(features["hist_item_id"][i])[:h.shape[1]])
        categories = _text(np.asarray(features["hist_category"][i])[:h.shape[1]])
        events = _text(np.asarray(features["hist_event"][i])[:h.shape[1]])
        gaps = np.asarray(features["hist_gap"][i], np.float64)[:h.shape[1]]
        real = np.array([j for j, item in enumerate(items) if item], np.int64)
        order = real[np.argsort(-h[i, real], kind="stable")] if len(real) else real
        out.append([{"position": int(j), "item_id": items[j], "category": categories[j],
                     "event": events[j], "seconds_ago": float(gaps[j]),
                     "attribution": float(h[i, j])}
                    for j in order[:k] if h[i, j] > 0])
    return out


def reasons(model, features: dict, per_request: int, output: str = "purchase",
            steps: int = 32, k: int = REASONS) -> list[list[dict]]:
    """Per row (an item of a recommendation list; rows come `per_request` to a list, list
    by list), the `k` history events that raise `output` most beyond what they raise the
    list's other items, most first: `reason_tensors` (what the served `recommend` signature
    answers), each named by its item, category, event kind, age and weight."""
    import tensorflow as tf

    found = reason_tensors(model, {k2: tf.convert_to_tensor(np.asarray(v))
                                   for k2, v in features.items()}, per_request, output,
                           steps, k)
    position = found["position"].numpy().reshape(-1, found["position"].shape[-1])
    weight = found["weight"].numpy().reshape(position.shape).astype(np.float64)
    out = []
    for i in range(position.shape[0]):
        row = []
        for j, w in zip(position[i], weight[i]):
            if j < 0:
                continue
            row.append({"position": int(j),
                        "item_id": _text([features["hist_item_id"][i][j]])[0],
                        "category": _text([features["hist_category"][i][j]])[0],
                        "event": _text([features["hist_event"][i][j]])[0],
                        "seconds_ago": float(features["hist_gap"][i][j]),
                        "attribution": float(w)})
        out.append(row)
    return out


def reason_tensors(model, raw: dict, per_request: int, output: str = "purchase",
                   steps: int = 32, k: int = REASONS) -> dict:
    """`reasons` in the graph, for rows that come `per_request` to a request (request
    major): position [B, per_request, k] int32, the history column of each reason (column 0
    = the latest event; -1: none), and weight [B, per_request, k] (0 where none)."""
    import tensorflow as tf

    t = attribution_tensors(model, raw, output, steps)
    H = model.backbone.max_history
    h = tf.reshape(_history_part(t, model.backbone), [-1, per_request, H])
    # Contrast: without it every item of a list names the same events, those that make
    # the user score high at all.
    h = h - tf.reduce_mean(h, axis=1, keepdims=True)
    real = tf.reshape(t["hist_mask"][:, :H], [-1, per_request, H]) > 0
    best = tf.math.top_k(tf.where(real & (h > 0), h, -np.inf), min(int(k), H))
    found = tf.math.is_finite(best.values)
    return {"position": tf.where(found, best.indices, -1),
            "weight": tf.where(found, best.values, 0.0)}
