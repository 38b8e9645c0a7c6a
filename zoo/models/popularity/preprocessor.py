"""`PopularityPreprocessor`: raw feature dict -> the indices and numbers `Popularity` looks up.

All string ops live here (id lookups, bucketing), so the same layer runs inside
`tf.data.map` in evaluation and inside the serving graph. Works on BATCHED dicts (rank-1 /
rank-2 tensors, see `zoo.models.features.RAW_FEATURES`); keys it does not use are ignored.

Outputs (B = batch, H = max_history):
  item_index, category_index [B] int32    0 = "", 1..num_oov = OOV buckets, then vocabulary
  position_bucket [B] int32               0 = unknown (-1), else 1 + min(rank, max_position-1)
  price_bucket [B] int32                  the candidate's price_range bucket, 0..K-1
  item_purchases_7d [B] float32
  hist_category_index, hist_event_index [B, H] int32   lookups as above, 0 on padding
  hist_price_bucket [B, H] int32          price_range bucket, 0..K-1 (0 on padding too)
  hist_mask [B, H] int32                  1 = real event, 0 = padding
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function

from zoo.models.features import HISTORY_EVENT_TYPES
from zoo.models.preprocessing import BehaviourPreprocessor

INT_OUTPUTS = ("item_index", "category_index", "position_bucket", "price_bucket")
FLOAT_OUTPUTS = ("item_purchases_7d",)
HISTORY_OUTPUTS = ("hist_category_index", "hist_event_index", "hist_price_bucket", "hist_mask")


@keras.saving.register_keras_serializable(package="ecom_zoo")
class PopularityPreprocessor(BehaviourPreprocessor):
    """Raw features -> `Popularity` inputs. `call(x, y=None, sample_weight=None)`.

    Args:
      vocabulary: a dict from `fit_vocabulary` / `placeholder_vocabulary`. Only its ids
        and price edges travel in this layer's config; the statistics become the model's
        weights.
      max_history, max_position, num_oov_indices: see the presets.
    """

    def __init__(self, vocabulary, max_history=50, max_position=64, num_oov_indices=1,
                 **kwargs):
        super().__init__(**kwargs)
        vocabulary = {k: vocabulary[k] for k in ("item_id", "category", "price_edges")}
        # Plain attribute (not Keras-tracked: tracking walks every string of the lists).
        object.__setattr__(self, "vocabulary", {
            "item_id": [str(v) for v in vocabulary["item_id"]],
            "category": [str(v) for v in vocabulary["category"]],
            "price_edges": [float(x) for x in vocabulary["price_edges"]]})
        self.max_history = int(max_history)
        self.max_position = int(max_position)
        self.num_oov_indices = int(num_oov_indices)

        def lookup(values, name):
            return keras.layers.StringLookup(
                vocabulary=np.asarray(list(values), dtype=str), mask_token="", oov_token="[UNK]",
                num_oov_indices=self.num_oov_indices, name=name)

        self.item_lookup = lookup(self.vocabulary["item_id"], "item_lookup")
        self.category_lookup = lookup(self.vocabulary["category"], "category_lookup")
        self.event_lookup = lookup(HISTORY_EVENT_TYPES, "event_lookup")
        self.price_discretization = keras.layers.Discretization(
            bin_boundaries=self.vocabulary["price_edges"], name="price_buckets")
        self.built = True

    @property
    def num_price_ranges(self) -> int:
        return len(self.vocabulary["price_edges"]) + 1

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        f = {k: tf.convert_to_tensor(v) for k, v in x.items()}
        out = {
            "item_index": self._index(self.item_lookup, f["item_id"]),
            "category_index": self._index(self.category_lookup, f["item_category"]),
            "position_bucket": self._position_bucket(f["position"]),
            "price_bucket": self._index(self.price_discretization,
                                        tf.cast(f["item_price"], tf.float32)),
            "item_purchases_7d": tf.cast(f["item_purchases_7d"], tf.float32),
        }
        mask = tf.cast(tf.not_equal(self._history(f["hist_item_id"], ""), ""), tf.int32)
        out["hist_category_index"] = self._index(
            self.category_lookup, self._history(f["hist_category"], "")) * mask
        out["hist_event_index"] = self._index(
            self.event_lookup, self._history(f["hist_event"], "")) * mask
        hist_price = self._history(tf.cast(f["hist_price"], tf.float32), 0.0)
        out["hist_price_bucket"] = self._index(self.price_discretization, hist_price) * mask
        out["hist_mask"] = mask
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)

    def output_spec(self, batch_size=None) -> dict:
        """name -> (shape, dtype) of the outputs."""
        spec = {k: ((batch_size,), "int32") for k in INT_OUTPUTS}
        spec.update({k: ((batch_size,), "float32") for k in FLOAT_OUTPUTS})
        spec.update({k: ((batch_size, self.max_history), "int32") for k in HISTORY_OUTPUTS})
        return spec

    def compute_output_spec(self, x, y=None, sample_weight=None):
        batch = x["item_id"].shape[0] if hasattr(x["item_id"], "shape") else None
        out = {k: keras.KerasTensor(s, dtype=d) for k, (s, d) in self.output_spec(batch).items()}
        return keras.utils.pack_x_y_sample_weight(out, y, sample_weight)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update({
            "vocabulary": self.vocabulary,
            "max_history": self.max_history,
            "max_position": self.max_position,
            "num_oov_indices": self.num_oov_indices,
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
