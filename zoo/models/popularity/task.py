"""`Popularity`: the non-neural baseline as a keras-hub Task, and its builder.

It has no trainable weights: every number is a training statistic from `fit_vocabulary`,
held in non-trainable weights (saved in `.keras`, exported to SavedModels) so that the
baseline goes through the same registry, evaluation and export path as the neural models
and the metrics table compares them side by side.

    model = zoo.get("popularity", "small", vocabulary=zoo.fit_vocabulary("popularity", train))
    outputs = model(model.preprocessor(raw), training=False)

Formulas (sums over the user's first max_history history events h, each weighted by its
type: w_h = click_weight / cart_weight / purchase_weight; "pos" = the impression's rank):

  click     p = clip(s * r(pos) * f(item) * lift ** e, 1e-4, 1 - 1e-4)
              r(pos)  smoothed click rate of the rank, each rank shrunk toward the rank
                      above it (rank 0 and unknown ranks toward the global rate)
              f(item) = (clicks + m) / (expected clicks + m): the item's clicks over the
                      clicks its impressions' ranks predict (COEC), m pseudo-clicks; 1 for
                      an unknown item. Without ranks this is the item's click rate
                      (clicks + m' g) / (impressions + m') with m' = m / g.
              lift    = (W_c + a g_c) / ((W + a) g_c): the user's smoothed share of history
                      weight in the candidate's category c over c's global share g_c
                      (W_c: weight of events in c, W: all); 1 with no history or an
                      unknown category
              s, e    fitted on training: e >= 0 on a grid (least training log-loss), s
                      so that the mean prediction matches the click rate
  purchase  the same with purchases (its own rates, factors, s and e)
  price_range  p_k = (h_k + b pi_k) / (sum_k h_k + b): h_k = sum of w_h over history
              events whose price falls in bucket k (+ candidate_price_weight for the
              candidate's own price); pi = the training label prior; b = price_smoothing.
              With price_fit, b and the candidate's weight are the grid point of least
              training log-loss (the config's values otherwise).
              The buckets are the label's (quantile edges of the training items' prices,
              pinned to the label's buckets when the data carries them)
  demand    rate = max(a0 + a1 * item_purchases_7d + a2 * dbar(item), 1e-6), a >= 0 the
              Poisson maximum likelihood (identity link) on the latest training examples;
              dbar = (item demand sum + m_d * mean) / (item impressions + m_d)
"""

from __future__ import annotations

import json
import os

import keras
import keras_hub

from zoo.models.features import RAW_FEATURES, TASKS
from zoo.models.popularity import vocabulary as vocab_lib
from zoo.models.popularity.preprocessor import PopularityPreprocessor
from zoo.models.popularity.scorer import PopularityScorer, tables_from_vocabulary


@keras.saving.register_keras_serializable(package="ecom_zoo")
class Popularity(keras_hub.models.Task):
    """Preprocessed inputs -> {"click": [B], "purchase": [B], "price_range": [B, K],
    "demand": [B]} (float32) by table lookups; see the module docstring.

    Args:
      scorer: a `PopularityScorer` (the statistics, as non-trainable weights).
      preprocessor: a `PopularityPreprocessor` (or None); saved with the model.
      zoo_config: the resolved zoo config the model was built from (kept for reference).
    """

    backbone_cls = None
    preprocessor_cls = PopularityPreprocessor

    def __init__(self, scorer, preprocessor=None, zoo_config=None, **kwargs):
        # === Layers ===
        self.scorer = scorer
        self.preprocessor = preprocessor

        # === Functional model === (histories of any length: H is only fixed upstream)
        inputs = {
            **{k: keras.Input(shape=(), dtype="int32", name=k)
               for k in ("item_index", "category_index", "position_bucket", "price_bucket")},
            "item_purchases_7d": keras.Input(shape=(), dtype="float32", name="item_purchases_7d"),
            **{k: keras.Input(shape=(None,), dtype="int32", name=k)
               for k in ("hist_category_index", "hist_event_index", "hist_price_bucket",
                         "hist_mask")},
        }
        outputs = scorer(inputs)
        kwargs.setdefault("compile", False)
        super().__init__(inputs=inputs, outputs={k: outputs[k] for k in TASKS}, **kwargs)

        # === Config ===
        self.zoo_config = dict(zoo_config or {})

    def per_example_losses(self, labels: dict, outputs: dict) -> dict:
        """{task: [B]}: the multi-task losses (reported; the statistics are not trained)."""
        from zoo.models import losses as losses_lib

        return losses_lib.per_example_losses(labels, outputs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "scorer": keras.layers.serialize(self.scorer),
            "zoo_config": dict(self.zoo_config),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("scorer"), dict):
            config["scorer"] = keras.layers.deserialize(config["scorer"])
        config.pop("backbone", None)
        return super().from_config(config)

    @property
    def vocabulary(self) -> dict | None:
        """The ids and price edges of the preprocessor (the statistics are weights)."""
        return None if self.preprocessor is None else self.preprocessor.vocabulary


def load_vocabulary(vocabulary) -> dict:
    """A vocabulary dict, or the path of a JSON file holding one."""
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
    return vocab_lib.validate(vocabulary)


def build(config: dict, vocabulary=None) -> Popularity:
    """Builds `Popularity` from a resolved zoo config (`zoo.get_config("popularity", ...)`).

    vocabulary: a dict from `fit_vocabulary` (or a JSON path); None = neutral statistics of
      the config's nominal sizes (parameter counts, smoke tests; not for evaluation).
    """
    vocab = (vocab_lib.placeholder_vocabulary(config) if vocabulary is None
             else load_vocabulary(vocabulary))
    K = len(vocab["price_prior"])
    if K != int(config["num_price_ranges"]):
        raise ValueError(f"the vocabulary has {K} price ranges, the config "
                         f"num_price_ranges={config['num_price_ranges']}: fit it again")
    if len(vocab["position_click_rate"]) != int(config["max_position"]) + 1:
        raise ValueError(f"the vocabulary has {len(vocab['position_click_rate'])} position "
                         f"rates, the config max_position + 1 = {config['max_position'] + 1}")
    num_oov = int(config["num_oov_indices"])
    preprocessor = PopularityPreprocessor(
        vocab,
        max_history=config["max_history"],
        max_position=config["max_position"],
        num_oov_indices=num_oov,
        name="popularity_preprocessor")
    price_smoothing, candidate_price_weight = vocab_lib.price_knobs(vocab, config)
    scorer = PopularityScorer(
        num_items=len(vocab["item_id"]),
        num_categories=len(vocab["category"]),
        num_positions=len(vocab["position_click_rate"]),
        num_price_ranges=K,
        num_oov_indices=num_oov,
        event_weights=vocab_lib.event_weights(config),
        affinity_smoothing=config["affinity_smoothing"],
        price_smoothing=price_smoothing,
        candidate_price_weight=candidate_price_weight,
        tables=tables_from_vocabulary(vocab, num_oov),
        name="popularity_scorer")
    return Popularity(scorer, preprocessor, zoo_config=config, name="popularity")


def raw_inputs(history_length=None) -> dict:
    """`keras.Input`s of the raw features (history columns of any, or a fixed, length)."""
    return {name: keras.Input(shape=() if rank == 1 else (history_length,), dtype=dtype,
                              name=name)
            for name, (dtype, rank) in RAW_FEATURES.items()}


def end_to_end(model: Popularity, history_length=None) -> keras.Model:
    """A functional Keras model: raw feature dict -> outputs (preprocessor + model)."""
    if model.preprocessor is None:
        raise ValueError("end_to_end needs a model with a preprocessor")
    inputs = raw_inputs(history_length)
    outputs = model(model.preprocessor(inputs))
    return keras.Model(inputs, {k: outputs[k] for k in TASKS}, name=f"{model.name}_end_to_end")
