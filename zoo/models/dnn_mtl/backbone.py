"""`DnnMtlBackbone`: embeddings, masked mean pooling and an MLP (no attention).

Inputs are `RankerPreprocessor`'s outputs, exactly as for `BertMtlBackbone`:

  * query: masked mean of its WordPiece embeddings (an empty query gives zeros)
  * history: each event = item + category + brand + event type + price bucket + time-gap
    bucket embeddings; masked mean over the events (`hist_mask`)
  * the preprocessor's dense_features (context), when it has them, as they are
  * candidate: its fields' embeddings CONCATENATED (item, category, brand, price bucket,
    impression position, 7-day clicks and purchases buckets, and the mean title
    embedding when T > 0); id tables are shared with the history events

Outputs, named as `BertMtlBackbone`'s so `MultitaskRanker` reads them unchanged:
  cls_output        MLP(concat(query, history, candidate)) [B, hidden_dims[-1]]
  candidate_output  the candidate fields [B, F * embedding_dim], a direct path to the
                    towers beside the MLP
Numeric only: XLA-compilable.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from zoo.models.ranker.preprocessor import HISTORY_OUTPUTS, SCALAR_OUTPUTS
from zoo.models.layers import IdEmbedding, history_event_embeddings

_TABLES = (("word_embedding", "wordpiece"), ("item_embedding", "item"),
           ("category_embedding", "category"), ("brand_embedding", "brand"),
           ("event_embedding", "event"), ("price_embedding", "price"),
           ("gap_embedding", "gap"), ("impression_position_embedding", "position"),
           ("item_clicks_7d_embedding", "count"), ("item_purchases_7d_embedding", "count"))


def _masked_mean(x, mask):
    """x [B, N, D], mask [B, N] (1 = real) -> [B, D]; all-padding rows give 0."""
    mask = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="ecom_zoo")
class PooledFieldEmbedding(keras.layers.Layer):
    """Preprocessed inputs -> (query [B, D], history [B, D], candidate fields [B, F * D])."""

    def __init__(self, vocabulary_sizes, embedding_dim, max_title_tokens,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_sizes = dict(vocabulary_sizes)
        self.embedding_dim = int(embedding_dim)
        self.max_title_tokens = int(max_title_tokens)
        self.initializer_range = float(initializer_range)
        # A new initializer per weight: one unseeded instance gives every weight the same values.
        def init():
            return keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        for attr, key in self._tables():
            setattr(self, attr, IdEmbedding(
                self.vocabulary_sizes[key], self.embedding_dim, embeddings_initializer=init(),
                dtype=self.dtype_policy, name=attr))

    def _tables(self):
        return _TABLES + ((("user_embedding", "user"),) if "user" in self.vocabulary_sizes
                          else ())

    @property
    def num_candidate_fields(self) -> int:
        return 7 + (self.max_title_tokens > 0) + ("user" in self.vocabulary_sizes)

    def build(self, input_shape=None):
        for attr, _ in self._tables():
            getattr(self, attr).build((None,))
        self.built = True

    def call(self, inputs):
        q = inputs["query_tokens"]
        query = _masked_mean(self.word_embedding(q), ops.not_equal(q, 0))
        events = history_event_embeddings(self, inputs)  # [B, H, D]
        history = _masked_mean(events, inputs["hist_mask"])
        fields = [self.item_embedding(inputs["item_index"]),
                  self.category_embedding(inputs["category_index"]),
                  self.brand_embedding(inputs["brand_index"]),
                  self.price_embedding(inputs["price_bucket"]),
                  self.impression_position_embedding(inputs["position_bucket"]),
                  self.item_clicks_7d_embedding(inputs["item_clicks_bucket"]),
                  self.item_purchases_7d_embedding(inputs["item_purchases_bucket"])]
        if "user" in self.vocabulary_sizes:  # the user's own embedding, beside the candidate's
            fields.append(self.user_embedding(inputs["user_index"]))
        if self.max_title_tokens > 0:
            title = inputs["title_tokens"]
            fields.append(_masked_mean(self.word_embedding(title), ops.not_equal(title, 0)))
        return query, history, ops.concatenate(fields, axis=-1)

    def compute_output_spec(self, inputs):
        batch = inputs["query_tokens"].shape[0]
        D = self.embedding_dim
        return (keras.KerasTensor((batch, D), dtype=self.compute_dtype),
                keras.KerasTensor((batch, D), dtype=self.compute_dtype),
                keras.KerasTensor((batch, self.num_candidate_fields * D),
                                  dtype=self.compute_dtype))

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_sizes": self.vocabulary_sizes,
            "embedding_dim": self.embedding_dim,
            "max_title_tokens": self.max_title_tokens,
            "initializer_range": self.initializer_range,
        })
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class DnnMtlBackbone(keras_hub.models.Backbone):
    """The DNN encoder. A functional model over the preprocessor's integer outputs.

    Args:
      vocabulary_sizes: `RankerPreprocessor.vocabulary_sizes()` (embedding input dims).
      embedding_dim: width of every embedding table.
      hidden_dims: widths of the ReLU MLP layers (the last one is `cls_output`'s width).
      max_query_tokens, max_title_tokens, max_history: the preprocessor's lengths.
      dropout: after each MLP layer.
      initializer_range: stddev of the embeddings (and of `MultitaskRanker`'s towers).
    """

    def __init__(self, vocabulary_sizes, embedding_dim=32, hidden_dims=(256, 128),
                 max_query_tokens=12, max_title_tokens=12, max_history=30, dropout=0.0,
                 initializer_range=0.02, dtype=None, **kwargs):
        Q, T, H = int(max_query_tokens), int(max_title_tokens), int(max_history)
        hidden_dims = [int(h) for h in hidden_dims]
        if not hidden_dims:
            raise ValueError("hidden_dims needs at least one layer")
        # === Layers ===
        self.embeddings = PooledFieldEmbedding(
            vocabulary_sizes, embedding_dim, T, initializer_range=initializer_range,
            dtype=dtype, name="embeddings")
        self.mlp_layers = [keras.layers.Dense(h, activation="relu", dtype=dtype,
                                              name=f"mlp_{i}")
                           for i, h in enumerate(hidden_dims)]
        self.mlp_dropout = keras.layers.Dropout(float(dropout), dtype=dtype,
                                                name="mlp_dropout")

        # === Functional model ===
        inputs = {"query_tokens": keras.Input((Q,), dtype="int32", name="query_tokens")}
        if T > 0:
            inputs["title_tokens"] = keras.Input((T,), dtype="int32", name="title_tokens")
        for name in SCALAR_OUTPUTS:
            inputs[name] = keras.Input((), dtype="int32", name=name)
        if "user" in vocabulary_sizes:
            inputs["user_index"] = keras.Input((), dtype="int32", name="user_index")
        for name in HISTORY_OUTPUTS:
            inputs[name] = keras.Input((H,), dtype="int32", name=name)
        parts = list(self.embeddings(inputs))
        num_dense = vocabulary_sizes.get("dense_features", 0)
        if num_dense:  # the context features (see the preprocessor) into the MLP
            inputs["dense_features"] = keras.Input((num_dense,), dtype="float32",
                                                   name="dense_features")
            parts.append(ops.cast(inputs["dense_features"], parts[0].dtype))
        candidate = parts[2]
        x = ops.concatenate(parts, axis=-1)
        for layer in self.mlp_layers:
            x = self.mlp_dropout(layer(x))
        outputs = {"cls_output": x, "candidate_output": candidate}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_sizes = dict(vocabulary_sizes)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dims = hidden_dims
        self.max_query_tokens = Q
        self.max_title_tokens = T
        self.max_history = H
        self.dropout = float(dropout)
        self.initializer_range = float(initializer_range)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_sizes": self.vocabulary_sizes,
            "embedding_dim": self.embedding_dim,
            "hidden_dims": list(self.hidden_dims),
            "max_query_tokens": self.max_query_tokens,
            "max_title_tokens": self.max_title_tokens,
            "max_history": self.max_history,
            "dropout": self.dropout,
            "initializer_range": self.initializer_range,
        })
        return config
