"""`RankerPreprocessor`: raw feature dict -> integer tensors for `BertMtlBackbone`.

All string ops of the model live here (WordPiece, id lookups, bucketing), so the same
layer runs inside `tf.data.map` during training and inside the serving graph: training and
serving cannot disagree. Works on BATCHED dicts (rank-1 / rank-2 tensors, see
`zoo.models.features.RAW_FEATURES`); keys it does not use are ignored.

Outputs (int32; B = batch, Q = max_query_tokens, T = max_title_tokens, H = max_history):
  query_tokens [B, Q]     WordPiece ids, 0 = [PAD]; an empty query is all [PAD]
  title_tokens [B, T]     WordPiece ids of the candidate's title (only when T > 0)
  item_index, category_index, brand_index [B]      0 = "" / padding, 1..n_oov = OOV buckets
  user_index [B]          (only when the vocabulary has users) the same, for user_id
  price_bucket [B]        1 + bucket of item_price (0 is padding only)
  position_bucket [B]     0 = unknown (-1), else 1 + min(position, max_position - 1)
  hist_item_index, hist_category_index, hist_brand_index, hist_event_index [B, H]
  hist_price_bucket, hist_gap_bucket [B, H]          0 on padding
  hist_mask [B, H]        1 = real event, 0 = padding (history shorter than H is padded)
  hist_title_tokens [B, H, T]  (history_titles only) WordPiece ids of each history item's
                          title, from the vocabulary's catalogue (`item_titles`); all 0 for
                          padding, OOV items and items without a known title
  dense_features [B, F]   (context_features only; float32) what the tree sees, the neural
                          way: per context feature of the examples (`CONTEXT_FEATURES`)
                          its standardised log1p (statistics of the training split, in the
                          vocabulary) and a missing flag, then (context_bins) its
                          piecewise-linear encoding over the training quantiles (Gorishniy
                          et al. 2022: one column per bin, 0 below it, 1 above it, the
                          position inside it; what lets an MLP cut a count where a tree
                          would), then the in-graph features of
                          `IN_GRAPH_FEATURES` computed here from the raw query, title,
                          candidate and history, so serving needs nothing more
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import tensorflow as tf
# keras-hub's own decorator of `Preprocessor.call`: tf tensors in, no conversion of the
# inner (ragged) tokenizer outputs to Python lists in eager mode, string ops on the CPU.
from keras_hub.src.utils.tensor_utils import preprocessing_function

from zoo.models.ranker import vocabulary as vocab_lib
from zoo.models.features import CONTEXT_FEATURES, HISTORY_EVENT_TYPES
from zoo.models.preprocessing import BehaviourPreprocessor

# Largest time gap with its own bucket: about a year, in seconds.
MAX_GAP_SECONDS = 3.2e7

SCALAR_OUTPUTS = ("item_index", "category_index", "brand_index", "price_bucket",
                  "position_bucket", "item_clicks_bucket", "item_purchases_bucket")
# Counts in roughly doubling buckets: 0, 1, 2, 3-4, 5-8, ..., > 1024.
COUNT_EDGES = [0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5, 256.5, 512.5, 1024.5]
# Computed in the graph from raw inputs (after the context features' values and flags):
#   has_query, title_coverage   share of the query's WordPiece ids found in the title's
#   query_words, word_coverage  log1p(number of the query's lower-cased whitespace words) and
#                               the share of them found among the title's (whole words, as
#                               the tree's feature: no truncation to the token windows)
#   price_vs_history            log(price / mean price of the history's events); 0 if none
#   history_empty
#   {item,category,brand}_{click,cart,purchase}s   log1p of the history's events of that
#                               type on the candidate's item / category / brand
#   {item,category,brand}_freshness   1 - log1p(seconds since the latest such event of any
#                               type) / log1p(MAX_GAP_SECONDS); 0 if none in the history
#   {item,category,brand}_recent      log1p(sum over those events of exp(-gap / RECENT_SECONDS)):
#                               interest that fades (a click a week ago weighs 1/e^2.3)
#   {item,category,brand}_last_hour   log1p(events on it in the hour before): this visit's
#                               intent, which sessions' counts alone do not locate
MATCH_FIELDS = ("item", "category", "brand")
IN_GRAPH_FEATURES = (
    ("has_query", "title_coverage", "query_words", "word_coverage", "price_vs_history",
     "history_empty")
    + tuple(f"{field}_{event}s" for field in MATCH_FIELDS for event in HISTORY_EVENT_TYPES)
    + tuple(f"{field}_freshness" for field in MATCH_FIELDS)
    + tuple(f"{field}_recent" for field in MATCH_FIELDS)
    + tuple(f"{field}_last_hour" for field in MATCH_FIELDS))
# With `relative_price` (after the above): the budget, category by category. Prices of
# different categories are not comparable (a watch and a phone case), so each price is taken
# against its category's level (`vocabulary["category_log_price"]`, mean log price of the
# category's training items): r = log(price) - level(category).
#   relative_price              r of the candidate
#   history_relative_price      mean r of the history's events; 0 if none
#   history_relative_price_sd   their standard deviation; 0 if none
#   relative_price_gap          r - that mean (how far above what the user usually looks at)
#   relative_price_over, relative_price_under   its positive and negative parts
#   category_relative_price_gap r - mean r of the history's events of the candidate's
#                               category; 0 if none
RELATIVE_PRICE_FEATURES = (
    "relative_price", "history_relative_price", "history_relative_price_sd",
    "relative_price_gap", "relative_price_over", "relative_price_under",
    "category_relative_price_gap")
# The in-graph features of the query, title and candidate alone (`_candidate_features`),
# and the rest, functions of the history window, which `history_features` computes with a
# weight per event.
CANDIDATE_FEATURES = ("has_query", "title_coverage", "query_words", "word_coverage",
                      "relative_price")
HISTORY_FEATURES = tuple(n for n in IN_GRAPH_FEATURES + RELATIVE_PRICE_FEATURES
                         if n not in CANDIDATE_FEATURES)
RECENT_SECONDS = 3 * 86400.0
HISTORY_OUTPUTS = ("hist_item_index", "hist_category_index", "hist_brand_index",
                   "hist_event_index", "hist_price_bucket", "hist_gap_bucket", "hist_mask")


def gap_edges(num_gap_buckets: int) -> list[float]:
    """Log-spaced inner edges (seconds) of the time-gap buckets: 1 s .. ~1 year."""
    return [float(x) for x in np.geomspace(1.0, MAX_GAP_SECONDS, max(num_gap_buckets - 1, 1))]


@keras.saving.register_keras_serializable(package="ecom_zoo")
class RankerPreprocessor(BehaviourPreprocessor):
    """Raw features -> backbone inputs. `call(x, y=None, sample_weight=None)`.

    Args:
      vocabulary: a dict from `fit_vocabulary` / `placeholder_vocabulary` (travels in the
        layer config, hence inside the model's `.keras` file).
      max_query_tokens, max_title_tokens, max_history, max_position, num_oov_indices,
      num_gap_buckets, history_titles, context_features, context_bins, relative_price: see
      the presets (relative_price defaults to off here so that a model saved before it
      existed loads with the inputs it was trained on).
    """

    def __init__(self, vocabulary, max_query_tokens=12, max_title_tokens=12, max_history=30,
                 max_position=64, num_oov_indices=1, num_gap_buckets=24,
                 history_titles=False, context_features=False, context_bins=False,
                 relative_price=False, **kwargs):
        super().__init__(**kwargs)
        # Plain attribute (not Keras-tracked: tracking walks every string of the lists).
        object.__setattr__(self, "vocabulary", vocab_lib.validate(vocabulary))
        self.max_query_tokens = int(max_query_tokens)
        self.max_title_tokens = int(max_title_tokens)
        self.max_history = int(max_history)
        self.max_position = int(max_position)
        self.num_oov_indices = int(num_oov_indices)
        self.num_gap_buckets = int(num_gap_buckets)
        self.history_titles = bool(history_titles)
        self.context_features = bool(context_features)
        self.context_bins = bool(context_bins)
        self.relative_price = bool(relative_price)
        if self.history_titles and self.max_title_tokens <= 0:
            raise ValueError("history_titles needs max_title_tokens > 0")
        v = self.vocabulary
        self.tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=v["wordpiece"], lowercase=True, strip_accents=True,
            oov_token=vocab_lib.UNK, dtype="int32", _allow_python_workflow=False,
            name="wordpiece")

        def lookup(values, name):
            return keras.layers.StringLookup(
                vocabulary=np.asarray(list(values), dtype=str), mask_token="", oov_token="[UNK]",
                num_oov_indices=self.num_oov_indices, name=name)

        self.item_lookup = lookup(v["item_id"], "item_lookup")
        self.category_lookup = lookup(v["category"], "category_lookup")
        self.brand_lookup = lookup(v["brand"], "brand_lookup")
        self.event_lookup = lookup(HISTORY_EVENT_TYPES, "event_lookup")
        # Users seen in training get an embedding; new users share the OOV buckets.
        self.user_lookup = lookup(v["user_id"], "user_lookup") if "user_id" in v else None
        self.price_discretization = keras.layers.Discretization(
            bin_boundaries=v["price_edges"], name="price_buckets")
        self.gap_discretization = keras.layers.Discretization(
            bin_boundaries=gap_edges(self.num_gap_buckets), name="gap_buckets")
        self.count_discretization = keras.layers.Discretization(
            bin_boundaries=COUNT_EDGES, name="count_buckets")
        # Row i = the price level of category lookup index i (padding and OOV buckets: the
        # overall level); no levels in the vocabulary (placeholders): 0 everywhere.
        overall = float(v.get("log_price_mean", 0.0))
        levels = v.get("category_log_price") or [overall] * len(v["category"])
        object.__setattr__(self, "_category_log_price", tf.constant(
            [overall] * (1 + self.num_oov_indices) + list(levels), tf.float32))
        if self.history_titles:
            # Row i = the title tokens of item lookup index i (0: padding, then the OOV
            # buckets, then the vocabulary's items): a constant, tokenised once here.
            titles = [""] * (1 + self.num_oov_indices) + list(
                v.get("item_titles") or [""] * len(v["item_id"]))
            tokens = self.tokenizer(tf.constant(titles))
            if isinstance(tokens, list):  # eager keras-hub tokenizers return Python lists
                tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
            object.__setattr__(self, "_item_title_tokens", tf.cast(tokens.to_tensor(
                default_value=0, shape=[None, self.max_title_tokens]), tf.int32))
        self.built = True

    # ---- sizes the backbone needs (embedding input dims, padding index 0 included) ----
    def vocabulary_sizes(self) -> dict:
        lookup_extra = 1 + self.num_oov_indices  # mask "" + OOV buckets
        return {
            "wordpiece": len(self.vocabulary["wordpiece"]),
            "item": len(self.vocabulary["item_id"]) + lookup_extra,
            "category": len(self.vocabulary["category"]) + lookup_extra,
            "brand": len(self.vocabulary["brand"]) + lookup_extra,
            "event": len(HISTORY_EVENT_TYPES) + lookup_extra,
            "price": len(self.vocabulary["price_edges"]) + 2,
            "gap": len(gap_edges(self.num_gap_buckets)) + 2,
            "position": self.max_position + 1,
            "count": len(COUNT_EDGES) + 1,
            **({"user": len(self.vocabulary["user_id"]) + lookup_extra}
               if self.user_lookup is not None else {}),
            # dense_features' layout: context_features values, as many missing flags,
            # context_features x context_bins piecewise-linear bins (feature-major), then
            # the IN_GRAPH_FEATURES (see `_dense_features`).
            **({"dense_features": self.num_dense_features,
                "context_features": len(CONTEXT_FEATURES),
                "context_bins": vocab_lib.CONTEXT_BINS if self.context_bins else 0}
               if self.context_features else {}),
        }

    @property
    def in_graph_features(self) -> tuple:
        """Names of the features computed in the graph, in dense_features' order (last)."""
        return IN_GRAPH_FEATURES + (RELATIVE_PRICE_FEATURES if self.relative_price else ())

    @property
    def num_dense_features(self) -> int:
        bins = vocab_lib.CONTEXT_BINS if self.context_bins else 0
        return (2 + bins) * len(CONTEXT_FEATURES) + len(self.in_graph_features)

    def token_id(self, token: str) -> int:
        return self.vocabulary["wordpiece"].index(token)

    # ---- the transform ----
    def _tokens(self, text, length):
        tokens = self.tokenizer(tf.reshape(text, [-1]))
        if isinstance(tokens, tf.RaggedTensor):
            tokens = tokens.to_tensor(default_value=0, shape=[None, length])
        return tf.cast(tokens, tf.int32)

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        f = {k: tf.convert_to_tensor(v) for k, v in x.items()}
        out = {"query_tokens": self._tokens(f["query"], self.max_query_tokens)}
        if self.max_title_tokens > 0:
            out["title_tokens"] = self._tokens(f["item_title"], self.max_title_tokens)
        out["item_index"] = self._index(self.item_lookup, f["item_id"])
        out["category_index"] = self._index(self.category_lookup, f["item_category"])
        out["brand_index"] = self._index(self.brand_lookup, f["item_brand"])
        if self.user_lookup is not None:
            out["user_index"] = self._index(self.user_lookup, f["user_id"])
        price = tf.cast(f["item_price"], tf.float32)
        out["price_bucket"] = self._index(self.price_discretization, price) + 1
        out["position_bucket"] = self._position_bucket(f["position"])

        for name in ("item_clicks", "item_purchases"):
            count = tf.cast(f[f"{name}_7d"], tf.float32)
            out[f"{name}_bucket"] = self._index(self.count_discretization, count)

        hist_item = self._history(f["hist_item_id"], "")
        mask = tf.cast(tf.not_equal(hist_item, ""), tf.int32)
        out["hist_item_index"] = self._index(self.item_lookup, hist_item) * mask
        out["hist_category_index"] = self._index(
            self.category_lookup, self._history(f["hist_category"], "")) * mask
        out["hist_brand_index"] = self._index(
            self.brand_lookup, self._history(f["hist_brand"], "")) * mask
        out["hist_event_index"] = self._index(
            self.event_lookup, self._history(f["hist_event"], "")) * mask
        hist_price = self._history(tf.cast(f["hist_price"], tf.float32), 0.0)
        out["hist_price_bucket"] = (self._index(self.price_discretization, hist_price) + 1) * mask
        hist_gap = self._history(tf.cast(f["hist_gap"], tf.float32), 0.0)
        out["hist_gap_bucket"] = (self._index(self.gap_discretization, hist_gap) + 1) * mask
        out["hist_mask"] = mask
        if self.history_titles:
            out["hist_title_tokens"] = tf.gather(self._item_title_tokens,
                                                 out["hist_item_index"])
        if self.context_features:
            out["dense_features"] = self._dense_features(f, out, mask)
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)

    def _dense_features(self, f, out, mask):
        stats = self.vocabulary.get("context") or {}
        mean = tf.constant(stats.get("mean", [0.0] * len(CONTEXT_FEATURES)), tf.float32)
        std = tf.constant(stats.get("std", [1.0] * len(CONTEXT_FEATURES)), tf.float32)
        raw = tf.stack([tf.reshape(tf.cast(f[name], tf.float32), [-1])
                        for name in CONTEXT_FEATURES], axis=1)  # [B, C]
        missing = tf.cast(raw < 0, tf.float32)
        logs = tf.math.log1p(tf.maximum(raw, 0.0))
        values = (logs - mean) / std * (1.0 - missing)
        parts = [values, missing]
        if self.context_bins:
            edges = np.asarray(stats.get("edges") or [vocab_lib.default_context_edges()]
                               * len(CONTEXT_FEATURES), np.float32)  # [C, T + 1]
            lo, hi = tf.constant(edges[:, :-1]), tf.constant(edges[:, 1:])
            width = hi - lo
            x = logs[:, :, None]
            # A zero-width bin (many equal values) is a step at its edge.
            inside = tf.where(width > 0, (x - lo) / tf.maximum(width, 1e-12),
                              tf.cast(x >= hi, tf.float32))
            encoded = tf.clip_by_value(inside, 0.0, 1.0) * (1.0 - missing[:, :, None])
            parts.append(tf.reshape(encoded, [-1, len(CONTEXT_FEATURES) * (edges.shape[1] - 1)]))

        named = {**self._candidate_features(f, out),
                 **self.history_features(f, out, tf.cast(mask, tf.float32))}
        in_graph = [named[name] for name in self.in_graph_features]
        return tf.concat(parts + [tf.stack(in_graph, axis=1)], axis=1)

    def _candidate_features(self, f, out) -> dict:
        """The in-graph features of the query, title and candidate alone, each [B]."""
        q = out["query_tokens"]
        q_real = tf.cast(tf.not_equal(q, 0), tf.float32)
        q_count = tf.reduce_sum(q_real, axis=1)
        if self.max_title_tokens > 0:
            t = out["title_tokens"]
            found = tf.reduce_any(tf.equal(q[:, :, None], t[:, None, :])
                                  & tf.not_equal(t, 0)[:, None, :], axis=2)
            coverage = tf.reduce_sum(tf.cast(found, tf.float32) * q_real, axis=1) / (
                tf.maximum(q_count, 1.0))
        else:
            coverage = tf.zeros_like(q_count)
        words, word_coverage = self._word_coverage(f["query"], f["item_title"])
        named = {"has_query": tf.cast(q_count > 0, tf.float32), "title_coverage": coverage,
                 "query_words": tf.math.log1p(words), "word_coverage": word_coverage}
        if self.relative_price:
            price = tf.reshape(tf.cast(f["item_price"], tf.float32), [-1])
            named["relative_price"] = self._relative(price, tf.reshape(out["category_index"],
                                                                       [-1]))
        return named

    def history_features(self, f, out, weight) -> dict:
        """The in-graph features computed from the history window (`HISTORY_FEATURES`),
        each [B], with every event counted by its `weight` [B, H] (1 = present, 0 =
        absent). At the padding mask they are the features the model reads; in between
        they move continuously from "no history" to the input's, so an explanation can
        credit each event with what it adds through them (`zoo.models.explain`)."""
        w = tf.cast(weight, tf.float32)
        hist_item = self._history(f["hist_item_id"], "")
        hist_price = self._history(tf.cast(f["hist_price"], tf.float32), 0.0)
        hist_gap = self._history(tf.cast(f["hist_gap"], tf.float32), 0.0)
        n_hist = tf.reduce_sum(w, axis=1)
        # 1 with any history, 0 without; in between the largest weight, not min(n, 1):
        # along an explanation's path (all weights alpha) it is then alpha, without a kink.
        present = tf.reduce_max(w, axis=1)
        price = tf.reshape(tf.cast(f["item_price"], tf.float32), [-1])
        mean_price = tf.reduce_sum(hist_price * w, axis=1) / tf.maximum(n_hist, 1e-6)
        price_vs = present * tf.where(
            (mean_price > 0) & (price > 0),
            tf.math.log(tf.maximum(price, 1e-6)) - tf.math.log(tf.maximum(mean_price, 1e-6)),
            0.0)
        named = {"price_vs_history": price_vs, "history_empty": 1.0 - present}
        events = self._history(f["hist_event"], "")
        fields = {"item": (hist_item, f["item_id"]),
                  "category": (self._history(f["hist_category"], ""), f["item_category"]),
                  "brand": (self._history(f["hist_brand"], ""), f["item_brand"])}
        # Freshness of each event (most recent first: the latest match is the largest).
        fresh = tf.clip_by_value(1.0 - tf.math.log1p(tf.maximum(hist_gap, 0.0))
                                 / np.log1p(MAX_GAP_SECONDS), 0.0, 1.0)
        fading = tf.exp(-tf.maximum(hist_gap, 0.0) / RECENT_SECONDS)
        last_hour = tf.cast(hist_gap < 3600.0, tf.float32)
        for field in MATCH_FIELDS:
            hist, candidate = fields[field]
            same = tf.equal(hist, tf.reshape(candidate, [-1, 1])) & tf.not_equal(hist, "")
            same_w = tf.cast(same, tf.float32) * w
            for event in HISTORY_EVENT_TYPES:
                named[f"{field}_{event}s"] = tf.math.log1p(tf.reduce_sum(
                    same_w * tf.cast(tf.equal(events, event), tf.float32), 1))
            named[f"{field}_freshness"] = tf.reduce_max(same_w * fresh, axis=1)
            named[f"{field}_recent"] = tf.math.log1p(tf.reduce_sum(same_w * fading, axis=1))
            named[f"{field}_last_hour"] = tf.math.log1p(tf.reduce_sum(same_w * last_hour,
                                                                      axis=1))
        if self.relative_price:
            named.update(self._relative_prices(out, price, hist_price, w))
        return named

    def _relative(self, p, category_index):
        level = tf.gather(self._category_log_price, category_index)
        return tf.where(p > 0, tf.math.log(tf.maximum(p, 1e-6)) - level, 0.0)

    def _relative_prices(self, out, price, hist_price, w) -> dict:
        """RELATIVE_PRICE_FEATURES of the history (see there), each [B]; events weighted
        by w as in `history_features`."""
        r = self._relative(price, tf.reshape(out["category_index"], [-1]))
        priced = w * tf.cast(hist_price > 0, tf.float32)  # [B, H]
        r_hist = self._relative(hist_price, out["hist_category_index"])
        n = tf.reduce_sum(priced, axis=1)
        has = tf.reduce_max(priced, axis=1)  # as `present` in `history_features`
        mean = tf.reduce_sum(r_hist * priced, axis=1) / tf.maximum(n, 1e-6)
        var = tf.maximum(tf.reduce_sum(tf.square(r_hist) * priced, axis=1)
                         / tf.maximum(n, 1e-6) - tf.square(mean), 0.0)
        # A safe square root: its gradient at a zero variance is 0, not NaN.
        sd = tf.where(var > 1e-12, tf.sqrt(tf.maximum(var, 1e-12)), 0.0)
        gap = has * (r - mean)
        same = priced * tf.cast(tf.equal(out["hist_category_index"],
                                         tf.reshape(out["category_index"], [-1, 1])),
                                tf.float32)
        n_same = tf.reduce_sum(same, axis=1)
        mean_same = tf.reduce_sum(r_hist * same, axis=1) / tf.maximum(n_same, 1e-6)
        return {"history_relative_price": has * mean, "history_relative_price_sd": has * sd,
                "relative_price_gap": gap, "relative_price_over": tf.maximum(gap, 0.0),
                "relative_price_under": tf.maximum(-gap, 0.0),
                "category_relative_price_gap": tf.reduce_max(same, axis=1) * (r - mean_same)}

    @staticmethod
    def _word_coverage(query, title):
        """(words of the query, share of them among the title's words), lower-cased."""
        def words(text):
            return tf.strings.split(tf.strings.lower(tf.reshape(text, [-1]))).to_tensor("")

        q, t = words(query), words(title)  # [B, Wq], [B, Wt]
        real = tf.not_equal(q, "")
        found = tf.reduce_any(tf.equal(q[:, :, None], t[:, None, :]), axis=2) & real
        count = tf.reduce_sum(tf.cast(real, tf.float32), axis=1)
        share = tf.reduce_sum(tf.cast(found, tf.float32), axis=1) / tf.maximum(count, 1.0)
        return count, share

    def output_shapes(self, batch_size=None) -> dict:
        shapes = {"query_tokens": (batch_size, self.max_query_tokens)}
        if self.max_title_tokens > 0:
            shapes["title_tokens"] = (batch_size, self.max_title_tokens)
        shapes.update({k: (batch_size,) for k in SCALAR_OUTPUTS})
        if self.user_lookup is not None:
            shapes["user_index"] = (batch_size,)
        shapes.update({k: (batch_size, self.max_history) for k in HISTORY_OUTPUTS})
        if self.history_titles:
            shapes["hist_title_tokens"] = (batch_size, self.max_history, self.max_title_tokens)
        if self.context_features:
            shapes["dense_features"] = (batch_size, self.num_dense_features)
        return shapes

    def compute_output_spec(self, x, y=None, sample_weight=None):
        batch = x["query"].shape[0] if hasattr(x["query"], "shape") else None
        out = {k: keras.KerasTensor(s, dtype="float32" if k == "dense_features" else "int32")
               for k, s in self.output_shapes(batch).items()}
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update({
            "vocabulary": self.vocabulary,
            "max_query_tokens": self.max_query_tokens,
            "max_title_tokens": self.max_title_tokens,
            "max_history": self.max_history,
            "max_position": self.max_position,
            "num_oov_indices": self.num_oov_indices,
            "num_gap_buckets": self.num_gap_buckets,
            "history_titles": self.history_titles,
            "context_features": self.context_features,
            "context_bins": self.context_bins,
            "relative_price": self.relative_price,
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# The earlier class name, so model.keras files written before the rename still load.
keras.saving.get_custom_objects()["ecom_zoo>BertMtlPreprocessor"] = RankerPreprocessor
