"""`PopularityScorer`: the fitted statistics as non-trainable weights, and the formulas.

Numeric only (gathers, sums, one-hots): fine under `jit_compile`. The tables are Keras
weights rather than config so they save in `.keras` files and export to SavedModels like
any model's weights; the layer config holds only sizes and hyperparameters.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from zoo.models.features import HISTORY_EVENT_TYPES
from zoo.models.popularity.vocabulary import MIN_RATE, PROB_CLIP


class _Table(keras.initializers.Initializer):
    """Initialises a weight to a fixed array (never serialised: the weight file has it)."""

    def __init__(self, value):
        self.value = np.asarray(value, np.float32)

    def __call__(self, shape, dtype=None):
        if tuple(shape) != self.value.shape:
            raise ValueError(f"table of shape {self.value.shape} for a weight of {shape}")
        return ops.convert_to_tensor(self.value, dtype=dtype or "float32")


@keras.saving.register_keras_serializable(package="ecom_zoo")
class PopularityScorer(keras.layers.Layer):
    """Preprocessed inputs -> {"click", "purchase", "price_range", "demand"}.

    Args:
      num_items, num_categories: vocabulary sizes (rows of the tables = 1 + num_oov + n).
      num_positions: rows of the position tables (1 + max_position).
      num_price_ranges: K.
      num_oov_indices: OOV buckets of the lookups (rows 1..num_oov: unknown ids).
      event_weights: weights of the history events, in `HISTORY_EVENT_TYPES` order.
      affinity_smoothing, price_smoothing, candidate_price_weight: see the presets.
      tables: name -> numpy array, the initial values of the weights (from
        `tables_from_vocabulary`); None = zeros, for loading saved weights.
    """

    TABLES = ("item_click_factor", "item_purchase_factor", "item_demand", "category_prior",
              "position_click_rate", "position_purchase_rate", "price_prior", "click_fit",
              "purchase_fit", "demand_fit")

    def __init__(self, num_items, num_categories, num_positions, num_price_ranges,
                 num_oov_indices=1, event_weights=(1.0, 2.0, 3.0), affinity_smoothing=20.0,
                 price_smoothing=10.0, candidate_price_weight=3.0, tables=None, **kwargs):
        kwargs["dtype"] = "float32"  # probabilities near 1e-4 need float32 even under bf16
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        self.num_categories = int(num_categories)
        self.num_positions = int(num_positions)
        self.num_price_ranges = int(num_price_ranges)
        self.num_oov_indices = int(num_oov_indices)
        self.event_weights = tuple(float(w) for w in event_weights)
        if len(self.event_weights) != len(HISTORY_EVENT_TYPES):
            raise ValueError(f"event_weights: one per {HISTORY_EVENT_TYPES}")
        self.affinity_smoothing = float(affinity_smoothing)
        self.price_smoothing = float(price_smoothing)
        self.candidate_price_weight = float(candidate_price_weight)
        if self.affinity_smoothing <= 0 or self.price_smoothing <= 0:
            raise ValueError("affinity_smoothing and price_smoothing must be > 0")
        extra = 1 + self.num_oov_indices
        shapes = {
            "item_click_factor": (extra + self.num_items,),
            "item_purchase_factor": (extra + self.num_items,),
            "item_demand": (extra + self.num_items,),
            "category_prior": (extra + self.num_categories,),
            "position_click_rate": (self.num_positions,),
            "position_purchase_rate": (self.num_positions,),
            "price_prior": (self.num_price_ranges,),
            "click_fit": (2,),        # scale, lift exponent
            "purchase_fit": (2,),
            "demand_fit": (3,),       # intercept, item_purchases_7d, item mean demand
        }
        for name, shape in shapes.items():
            init = _Table(tables[name]) if tables is not None else "zeros"
            setattr(self, name, self.add_weight(shape=shape, initializer=init,
                                                trainable=False, name=name))
        self.built = True

    def call(self, inputs):
        f = inputs
        item = ops.cast(f["item_index"], "int32")
        category = ops.cast(f["category_index"], "int32")
        hist_category = ops.cast(f["hist_category_index"], "int32")
        mask = ops.cast(f["hist_mask"], "float32")
        # Weight of each history event (0 on padding): a missing or unknown type (rows 0 and
        # 1..num_oov of the lookup) weighs like a click.
        event_table = np.array([self.event_weights[0]] * (1 + self.num_oov_indices)
                               + list(self.event_weights), np.float32)
        weight = ops.take(ops.convert_to_tensor(event_table),
                          ops.cast(f["hist_event_index"], "int32"), axis=0) * mask

        # User-category lift: the user's smoothed share of history weight in the candidate's
        # category over the category's global share; 1 for an unknown category.
        known = category > self.num_oov_indices
        share = ops.take(self.category_prior, category, axis=0)
        share = ops.where(known, share, ops.ones_like(share))
        match = ops.logical_and(ops.equal(hist_category, category[:, None]), known[:, None])
        in_category = ops.sum(weight * ops.cast(match, "float32"), axis=1)
        total = ops.sum(weight, axis=1)
        alpha = self.affinity_smoothing
        lift = (in_category + alpha * share) / ((total + alpha) * share)
        lift = ops.where(known, lift, ops.ones_like(lift))

        outputs = {}
        for task in ("click", "purchase"):
            fit = getattr(self, f"{task}_fit")
            rate = (ops.take(getattr(self, f"position_{task}_rate"),
                             ops.cast(f["position_bucket"], "int32"), axis=0)
                    * ops.take(getattr(self, f"item_{task}_factor"), item, axis=0))
            p = fit[0] * rate * ops.power(lift, fit[1])
            outputs[task] = ops.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)

        # price_range: event-weighted histogram of the user's (and the candidate's) price
        # buckets, blended with the label prior.
        K = self.num_price_ranges
        hist = ops.sum(ops.one_hot(ops.cast(f["hist_price_bucket"], "int32"), K)
                       * weight[:, :, None], axis=1)
        hist = hist + self.candidate_price_weight * ops.one_hot(
            ops.cast(f["price_bucket"], "int32"), K)
        beta = self.price_smoothing
        outputs["price_range"] = ((hist + beta * self.price_prior[None, :])
                                  / (ops.sum(hist, axis=1, keepdims=True) + beta))

        # demand: intercept + a * item_purchases_7d + b * the item's mean demand.
        d = self.demand_fit
        rate = (d[0] + d[1] * ops.cast(f["item_purchases_7d"], "float32")
                + d[2] * ops.take(self.item_demand, item, axis=0))
        outputs["demand"] = ops.maximum(rate, MIN_RATE)
        return outputs

    def compute_output_spec(self, inputs):
        batch = inputs["item_index"].shape[0]
        out = {k: keras.KerasTensor((batch,), dtype="float32")
               for k in ("click", "purchase", "demand")}
        out["price_range"] = keras.KerasTensor((batch, self.num_price_ranges), dtype="float32")
        return out

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_items": self.num_items,
            "num_categories": self.num_categories,
            "num_positions": self.num_positions,
            "num_price_ranges": self.num_price_ranges,
            "num_oov_indices": self.num_oov_indices,
            "event_weights": list(self.event_weights),
            "affinity_smoothing": self.affinity_smoothing,
            "price_smoothing": self.price_smoothing,
            "candidate_price_weight": self.candidate_price_weight,
        })
        return config


def tables_from_vocabulary(vocabulary: dict, num_oov_indices: int) -> dict:
    """The scorer's tables from a (validated) vocabulary: rows 0..num_oov of the id tables
    (padding and unknown ids) hold the fallbacks: item factor 1, the global mean demand."""
    pad = 1 + int(num_oov_indices)

    def padded(values, fallback):
        return np.concatenate([np.full(pad, fallback), np.asarray(values, np.float64)])

    d = vocabulary["demand"]
    return {
        "item_click_factor": padded(vocabulary["item_click_factor"], 1.0),
        "item_purchase_factor": padded(vocabulary["item_purchase_factor"], 1.0),
        "item_demand": padded(vocabulary["item_demand"], d["mean"]),
        "category_prior": padded(vocabulary["category_prior"], 1.0),  # unused: lift = 1
        "position_click_rate": np.asarray(vocabulary["position_click_rate"]),
        "position_purchase_rate": np.asarray(vocabulary["position_purchase_rate"]),
        "price_prior": np.asarray(vocabulary["price_prior"]),
        "click_fit": np.array([vocabulary["click"]["scale"], vocabulary["click"]["exponent"]]),
        "purchase_fit": np.array([vocabulary["purchase"]["scale"],
                                  vocabulary["purchase"]["exponent"]]),
        "demand_fit": np.array([d["intercept"], d["purchases_7d"], d["item_mean"]]),
    }
