"""Why the model scored an impression as it did: integrated gradients over its inputs.

    exp = zoo.explain(model, raw_features, output="purchase", steps=32)
    exp["history"]       [B, H]  one attribution per history event (column 0 = latest)
    exp["query"]         [B, Q]  per query token
    exp["candidate"]     [B]     the candidate's fields (id, category, brand, price, title,
                                 rank, trailing counts: its embedding)
    exp["context"]       {name: [B]} per context feature of the dense path (the session so
                                 far, the user's counts, the relative price, ...)
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
factor stay the ones being explained. The m-step
midpoint Riemann sum runs as one batch of B x m rows; 32 steps keep the completeness error
of the shipped presets around 1 % (measured in the tests). Attention weights alone are not
an explanation (Jain & Wallace 2019), which is why the gradients are taken.

Only backbones with an embedding sequence (`bert_mtl` and its structures) can be
explained; `dnn_mtl` pools its fields before any sequence and is refused by name.
"""

from __future__ import annotations

import numpy as np

from zoo.models.features import CONTEXT_FEATURES

OUTPUTS = ("click", "purchase")
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


def explain(model, features: dict, output: str = "purchase", steps: int = 64) -> dict:
    """Integrated-gradients attributions of `output` for each row of `features` (a batch
    of raw features, `zoo.models.features.RAW_FEATURES`)."""
    import tensorflow as tf

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
    pre = {k: tf.convert_to_tensor(v) for k, v in model.preprocessor(features).items()}
    base_pre = {k: (tf.zeros_like(v) if k in _ZEROED or k == "dense_features" else v)
                for k, v in pre.items()}
    with _Patched(layer) as patch:
        y = model(pre, training=False)[output]
        x = patch.recorded
        model(base_pre, training=False)
        x0 = patch.recorded
        # The baseline's output under the input's own padding mask (zeroed query tokens
        # would mask their positions): the start of the path the gradients integrate.
        patch.sequence = x0
        y0 = model({**pre, **({"dense_features": base_pre["dense_features"]}
                              if "dense_features" in pre else {})}, training=False)[output]
    b = int(x.shape[0])
    m = int(steps)
    alphas = (tf.range(m, dtype=tf.float32) + 0.5) / m  # midpoints
    dense = "dense_features" in pre

    def tile(t):
        return tf.repeat(t, m, axis=0)  # row i's m copies are rows i*m .. i*m + m-1

    a = tf.tile(alphas, [b])
    xs = tile(x0) + a[:, None, None] * tile(x - x0)
    inputs = {k: tile(v) for k, v in pre.items()}
    if dense:
        d, d0 = pre["dense_features"], base_pre["dense_features"]
        inputs["dense_features"] = tile(d0) + a[:, None] * tile(d - d0)
    with _Patched(layer) as patch, tf.GradientTape() as tape:
        tape.watch(xs)
        if dense:
            tape.watch(inputs["dense_features"])
        patch.sequence = xs
        out = model(inputs, training=False)[output]
        targets = [xs] + ([inputs["dense_features"]] if dense else [])
    grads = tape.gradient(out, targets)
    gx = tf.reduce_mean(tf.reshape(grads[0], [b, m, *x.shape[1:]]), axis=1)
    per_position = tf.reduce_sum(gx * (x - x0), axis=-1).numpy().astype(np.float64)  # [B, S]
    Q, H = backbone.max_query_tokens, backbone.max_history
    result = {
        "output": y.numpy().astype(np.float64), "baseline_output": y0.numpy().astype(np.float64),
        "query": per_position[:, 1:1 + Q], "history": per_position[:, Q + 2:Q + 2 + H],
        "candidate": per_position[:, -1],
        "special": per_position[:, 0] + per_position[:, Q + 1] + per_position[:, Q + 2 + H],
        "context": {}, "steps": m,
    }
    total = per_position.sum(axis=1)
    if dense:
        gd = tf.reduce_mean(tf.reshape(grads[1], [b, m, -1]), axis=1)
        per_column = (gd * (d - d0)).numpy().astype(np.float64)
        for name, cols in dense_groups(model.preprocessor):
            result["context"][name] = per_column[:, cols].sum(axis=1)
        total = total + per_column.sum(axis=1)
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
        real = np.array([j for j, item in enumerate(items) if item], np.int64)
        order = real[np.argsort(-h[i, real], kind="stable")] if len(real) else real
        out.append([{"position": int(j), "item_id": items[j], "category": categories[j],
                     "event": events[j], "attribution": float(h[i, j])}
                    for j in order[:k] if h[i, j] > 0])
    return out
