"""`BertMtlBackbone`: a BERT-style encoder over query, behaviour events and candidate.

Input sequence (S = 1 + Q + 1 + H + 1 + 1 tokens):

    [CLS] q_1 .. q_Q [SEP] e_1 .. e_H [SEP] candidate
    segment 0 ........... | segment 1 ........ | segment 2

  * query tokens: WordPiece embeddings (shared with [CLS] / [SEP] and the title tokens)
  * each behaviour event e_j (most recent first): item + category + brand + event type +
    price bucket + time-gap bucket embeddings
  * the candidate: item + category + brand + price bucket + impression-position
    embeddings (+ the masked mean of its title's WordPiece embeddings when T > 0)
plus learned positions (`keras_hub.layers.PositionEmbedding`) and segment embeddings,
LayerNorm, dropout, then `num_layers` post-LN BERT encoder layers with the padding mask
(query [PAD]s and history padding are masked out): `zoo.models.layers.TransformerEncoderBlock`,
keras-hub's `TransformerEncoder` computation with projections that train faster on CPU.

Numeric only (int32 in, float out): XLA-compilable (`jit_compile=True`).
Outputs: {"sequence_output": [B, S, D], "cls_output": [B, D], "candidate_output": [B, D],
"candidate_embedding": [B, D] (the candidate token before the transformer layers)}, and
  "target_attention_output" [B, D]  (target_attention) DIN: the history events' embeddings
                                    pooled by the candidate (`layers.TargetAttention`)
  "context_output" [B, F + D]       (dense_features in the inputs, see the preprocessor)
                                    the dense features and their projection, for the heads
The dense features are also projected onto the candidate token. With
`context_embedding_dim` d > 0 each context feature's group of the dense features (its value,
missing flag and piecewise-linear bins) first goes through its own linear map + ReLU
(`layers.NumericEmbedding`, Gorishniy et al. 2022); the C x d embeddings replace the groups
(`context_embedding_mode="replace"`; the in-graph features stay as they are) or join the
whole flat vector ("join") wherever the dense features went (F is then that width).
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from zoo.models.ranker.preprocessor import HISTORY_OUTPUTS, SCALAR_OUTPUTS
from zoo.models.layers import (IdEmbedding, LastAxisLayerNormalization, NumericEmbedding,
                               TargetAttention, TransformerEncoderBlock,
                               history_event_embeddings)

SEGMENT_QUERY, SEGMENT_HISTORY, SEGMENT_CANDIDATE = 0, 1, 2


def sequence_length(max_query_tokens: int, max_history: int) -> int:
    return max_query_tokens + max_history + 4


CONTEXT_EMBEDDING_MODES = ("replace", "join")


def context_group_indices(num_features: int, num_bins: int):
    """[C, 2 + T] column indices of each context feature's group in dense_features, whose
    layout is (`RankerPreprocessor._dense_features`) C values, C missing flags, C x T
    piecewise-linear bins (feature-major), then the in-graph features: feature c is
    [c, C + c, 2C + cT, ..., 2C + cT + T - 1]."""
    C, T = int(num_features), int(num_bins)
    return [[c, C + c] + [2 * C + c * T + t for t in range(T)] for c in range(C)]


@keras.saving.register_keras_serializable(package="ecom_zoo")
class EventSequenceEmbedding(keras.layers.Layer):
    """Preprocessed inputs -> (token embeddings [B, S, D], padding mask [B, S] bool)."""

    def __init__(self, vocabulary_sizes, hidden_dim, max_query_tokens, max_title_tokens,
                 max_history, cls_id=1, sep_id=2, dropout=0.0, layer_norm_epsilon=1e-12,
                 initializer_range=0.02, use_text_tower=False, history_titles=False,
                 context_dim=None, **kwargs):
        super().__init__(**kwargs)
        # Width of inputs["dense_features"] (None: vocabulary_sizes["dense_features"]; the
        # backbone passes its per-feature embeddings' width instead when it has them).
        self.context_dim = None if context_dim is None else int(context_dim)
        # history_titles: every history event also gets the mean WordPiece embedding of its
        # item's title ("hist_title_tokens", [B, H, T]), as the candidate does.
        self.history_titles = bool(history_titles)
        # With a text tower the query arrives embedded ("query_embedding", [B, Q + 2, D],
        # [CLS] and [SEP] included) and the title too ("title_embedding", [B, D]); only the
        # separator before the candidate needs an embedding of its own.
        self.use_text_tower = bool(use_text_tower)
        self.vocabulary_sizes = dict(vocabulary_sizes)
        self.hidden_dim = int(hidden_dim)
        self.max_query_tokens = int(max_query_tokens)
        self.max_title_tokens = int(max_title_tokens)
        self.max_history = int(max_history)
        self.cls_id = int(cls_id)
        self.sep_id = int(sep_id)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.initializer_range = float(initializer_range)
        # A new initializer per weight: one unseeded instance gives every weight the same values.
        def init():
            return keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        sizes = self.vocabulary_sizes

        def emb(name, key):
            return IdEmbedding(sizes[key], self.hidden_dim, embeddings_initializer=init(),
                               name=name)

        if self.use_text_tower:
            self.word_embedding = None
            self.separator_embedding = keras.layers.Embedding(
                1, self.hidden_dim, embeddings_initializer=init(), name="separator_embedding")
        else:
            self.word_embedding = emb("word_embedding", "wordpiece")
        self.item_embedding = emb("item_embedding", "item")
        self.category_embedding = emb("category_embedding", "category")
        self.brand_embedding = emb("brand_embedding", "brand")
        self.event_embedding = emb("event_embedding", "event")
        self.price_embedding = emb("price_embedding", "price")
        self.gap_embedding = emb("gap_embedding", "gap")
        self.position_bucket_embedding = emb("impression_position_embedding", "position")
        self.clicks_embedding = emb("item_clicks_7d_embedding", "count")
        self.purchases_embedding = emb("item_purchases_7d_embedding", "count")
        # Added to the candidate token: the user's own bias and tastes meet the candidate
        # in the encoder and on the heads' direct path.
        self.user_embedding = emb("user_embedding", "user") if "user" in sizes else None
        # The context features ("dense_features") projected onto the candidate token: the
        # encoder attends from a candidate that knows the session and the user's counts.
        self.context_projection = (
            keras.layers.Dense(self.hidden_dim, kernel_initializer=init(),
                               dtype=self.dtype_policy, name="context_projection")
            if "dense_features" in sizes else None)
        self.segment_embedding = keras.layers.Embedding(
            3, self.hidden_dim, embeddings_initializer=init(), name="segment_embedding")
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            sequence_length=sequence_length(self.max_query_tokens, self.max_history),
            initializer=init(), name="position_embedding")
        self.layer_norm = LastAxisLayerNormalization(
            epsilon=self.layer_norm_epsilon, name="embeddings_layer_norm")
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="embeddings_dropout")
        seq = sequence_length(self.max_query_tokens, self.max_history)
        Q, H = self.max_query_tokens, self.max_history
        self._segments = ([SEGMENT_QUERY] * (Q + 2) + [SEGMENT_HISTORY] * (H + 1)
                          + [SEGMENT_CANDIDATE])
        assert len(self._segments) == seq

    def build(self, input_shape=None):
        seq = sequence_length(self.max_query_tokens, self.max_history)
        for layer in (self.word_embedding or self.separator_embedding, self.item_embedding,
                      self.category_embedding, self.brand_embedding, self.event_embedding,
                      self.price_embedding, self.gap_embedding, self.position_bucket_embedding,
                      self.clicks_embedding, self.purchases_embedding,
                      self.segment_embedding, *([self.user_embedding]
                                                if self.user_embedding else [])):
            layer.build((None,))
        if self.context_projection is not None:
            self.context_projection.build(
                (None, self.context_dim or self.vocabulary_sizes["dense_features"]))
        self.position_embedding.build((None, seq, self.hidden_dim))
        self.layer_norm.build((None, seq, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=None):
        q = ops.cast(inputs["query_tokens"], "int32")  # [B, Q]
        ones = ops.ones_like(q[:, :1])  # [B, 1]
        if self.use_text_tower:
            query_part = ops.cast(inputs["query_embedding"], self.compute_dtype)
            sep = self.separator_embedding(ones * 0)  # [B, 1, D]
        else:
            words = ops.concatenate([ones * self.cls_id, q, ones * self.sep_id], axis=1)
            query_part = self.word_embedding(words)  # [B, Q + 2, D]
            sep = self.word_embedding(ones * self.sep_id)  # [B, 1, D]

        history = history_event_embeddings(self, inputs)  # [B, H, D]
        if self.history_titles:
            words = inputs["hist_title_tokens"]  # [B, H, T]
            word_mask = ops.expand_dims(ops.cast(ops.not_equal(words, 0), self.compute_dtype), -1)
            history = history + (ops.sum(self.word_embedding(words) * word_mask, axis=2)
                                 / ops.maximum(ops.sum(word_mask, axis=2), 1.0))

        candidate = (self.item_embedding(inputs["item_index"])
                     + self.category_embedding(inputs["category_index"])
                     + self.brand_embedding(inputs["brand_index"])
                     + self.price_embedding(inputs["price_bucket"])
                     + self.position_bucket_embedding(inputs["position_bucket"])
                     + self.clicks_embedding(inputs["item_clicks_bucket"])
                     + self.purchases_embedding(inputs["item_purchases_bucket"]))  # [B, D]
        if self.user_embedding is not None:
            candidate = candidate + self.user_embedding(inputs["user_index"])
        if self.context_projection is not None:
            candidate = candidate + self.context_projection(
                ops.cast(inputs["dense_features"], self.compute_dtype))
        if self.max_title_tokens > 0 and self.use_text_tower:
            candidate = candidate + ops.cast(inputs["title_embedding"], self.compute_dtype)
        elif self.max_title_tokens > 0:
            title = inputs["title_tokens"]
            title_mask = ops.expand_dims(ops.cast(ops.not_equal(title, 0), self.compute_dtype), -1)
            title_sum = ops.sum(self.word_embedding(title) * title_mask, axis=1)
            candidate = candidate + title_sum / ops.maximum(ops.sum(title_mask, axis=1), 1.0)
        candidate = ops.expand_dims(candidate, 1)  # [B, 1, D]

        x = ops.concatenate([query_part, history, sep, candidate], axis=1)  # [B, S, D]
        segments = ops.convert_to_tensor(self._segments, dtype="int32")
        x = x + ops.expand_dims(self.segment_embedding(segments), 0)
        x = x + self.position_embedding(x)
        x = self.dropout_layer(self.layer_norm(x), training=training)

        mask = ops.concatenate([
            ones, ops.cast(ops.not_equal(q, 0), "int32"), ones,
            ops.cast(inputs["hist_mask"], "int32"), ones, ones], axis=1)
        return x, ops.cast(mask, "bool")

    def compute_output_spec(self, inputs, training=None):
        batch = inputs["query_tokens"].shape[0]
        seq = sequence_length(self.max_query_tokens, self.max_history)
        return (keras.KerasTensor((batch, seq, self.hidden_dim), dtype=self.compute_dtype),
                keras.KerasTensor((batch, seq), dtype="bool"))

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_sizes": self.vocabulary_sizes,
            "hidden_dim": self.hidden_dim,
            "max_query_tokens": self.max_query_tokens,
            "max_title_tokens": self.max_title_tokens,
            "max_history": self.max_history,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "use_text_tower": self.use_text_tower,
            "context_dim": self.context_dim,
        })
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class TextTowerInputs(keras.layers.Layer):
    """Query token ids [B, Q] (0-padded) -> a BERT text tower's inputs for
    [CLS] q_1 .. q_n [SEP] [PAD]..: token_ids, segment_ids, padding_mask, all [B, Q + 2]."""

    def __init__(self, cls_id, sep_id, **kwargs):
        super().__init__(**kwargs)
        self.cls_id, self.sep_id = int(cls_id), int(sep_id)

    def call(self, query_tokens):
        q = ops.cast(query_tokens, "int32")
        ones = ops.ones_like(q[:, :1])
        ids = ops.concatenate([ones * self.cls_id, q, ones * 0], axis=1)
        length = ops.sum(ops.cast(ops.not_equal(q, 0), "int32"), axis=1, keepdims=True)
        positions = ops.expand_dims(ops.arange(ops.shape(ids)[1], dtype="int32"), 0)
        ids = ops.where(ops.equal(positions, length + 1), self.sep_id, ids)
        return {"token_ids": ids, "segment_ids": ops.zeros_like(ids),
                "padding_mask": ops.cast(ops.not_equal(ids, 0), "int32")}

    def compute_output_spec(self, query_tokens):
        shape = (query_tokens.shape[0], query_tokens.shape[1] + 2)
        return {k: keras.KerasTensor(shape, dtype="int32")
                for k in ("token_ids", "segment_ids", "padding_mask")}

    def get_config(self):
        config = super().get_config()
        config.update({"cls_id": self.cls_id, "sep_id": self.sep_id})
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class MaskedMeanPool(keras.layers.Layer):
    """[B, T, D] embeddings of 0-padded token ids [B, T] -> their mean over real tokens."""

    def call(self, embeddings, token_ids):
        mask = ops.expand_dims(ops.cast(ops.not_equal(token_ids, 0), embeddings.dtype), -1)
        return ops.sum(embeddings * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_spec(self, embeddings, token_ids):
        return keras.KerasTensor((embeddings.shape[0], embeddings.shape[2]),
                                 dtype=embeddings.dtype)


@keras.saving.register_keras_serializable(package="ecom_zoo")
class BertMtlBackbone(keras_hub.models.Backbone):
    """The encoder. A functional model over the preprocessor's integer outputs.

    Args:
      vocabulary_sizes: `RankerPreprocessor.vocabulary_sizes()` (embedding input dims).
      hidden_dim, num_layers, num_heads, intermediate_dim, dropout, layer_norm_epsilon,
      initializer_range: transformer sizes (see the presets).
      max_query_tokens, max_title_tokens, max_history: the preprocessor's lengths.
      cls_id, sep_id: WordPiece ids of [CLS] / [SEP].
      text_encoder: None, or a keras-hub `BertBackbone` (e.g. MiniLM, see
        `text_encoders.load_minilm`) that encodes the query ([CLS] q [SEP]) and whose token
        embeddings, mean-pooled, embed the title; projected to hidden_dim. The WordPiece
        vocabulary must then be the text encoder's.
      text_encoder_trainable: fine-tune the text encoder (False: frozen, projections train).
      context_embedding_dim: 0, or d: per-feature numerical embeddings of the context
        features (`layers.NumericEmbedding` over each feature's value, flag and bins), fed
        to the candidate projection and the heads instead of ("replace") or beside ("join",
        `context_embedding_mode`) the flat dense features.
    """

    def __init__(self, vocabulary_sizes, hidden_dim=128, num_layers=2, num_heads=4,
                 intermediate_dim=512, max_query_tokens=12, max_title_tokens=12,
                 max_history=30, cls_id=1, sep_id=2, dropout=0.1, layer_norm_epsilon=1e-12,
                 initializer_range=0.02, text_encoder=None, text_encoder_trainable=False,
                 history_titles=False, target_attention=False, context_embedding_dim=0,
                 context_embedding_mode="replace", dtype=None, **kwargs):
        Q, T, H = int(max_query_tokens), int(max_title_tokens), int(max_history)
        if history_titles and (T == 0 or text_encoder is not None):
            raise ValueError("history_titles needs max_title_tokens > 0 and the wordpiece "
                             "text tower (not a pretrained text encoder)")
        if isinstance(text_encoder, dict):  # from get_config
            text_encoder = keras.saving.deserialize_keras_object(text_encoder)
        # A new initializer per weight: one unseeded instance gives every weight the same values.
        def init():
            return keras.initializers.TruncatedNormal(stddev=initializer_range)
        # === Layers ===
        self.text_encoder = text_encoder
        if text_encoder is not None:
            text_encoder.trainable = bool(text_encoder_trainable)
            self.text_inputs = TextTowerInputs(cls_id, sep_id, name="text_tower_inputs")
            self.query_projection = keras.layers.Dense(
                hidden_dim, kernel_initializer=init(), dtype=dtype, name="query_projection")
            self.title_pool = MaskedMeanPool(name="title_pool")
            self.title_projection = keras.layers.Dense(
                hidden_dim, kernel_initializer=init(), dtype=dtype, name="title_projection")
        num_dense = vocabulary_sizes.get("dense_features", 0)
        context_embedding_dim = int(context_embedding_dim)
        if context_embedding_mode not in CONTEXT_EMBEDDING_MODES:
            raise ValueError(f"context_embedding_mode must be one of "
                             f"{CONTEXT_EMBEDDING_MODES}, got {context_embedding_mode!r}")
        context_dim = None
        if context_embedding_dim > 0:
            if not num_dense or "context_features" not in vocabulary_sizes:
                raise ValueError("context_embedding_dim > 0 needs the context features "
                                 "(context_features=True; a vocabulary_sizes with "
                                 "'context_features' and 'context_bins')")
            C, bins = vocabulary_sizes["context_features"], vocabulary_sizes["context_bins"]
            group_indices = context_group_indices(C, bins)
            num_in_graph = num_dense - (2 + bins) * C
            context_dim = C * context_embedding_dim + (
                num_in_graph if context_embedding_mode == "replace" else num_dense)
        self.context_embedding = (
            NumericEmbedding(context_embedding_dim, dtype=dtype, name="context_embedding")
            if context_embedding_dim > 0 else None)
        self.embeddings = EventSequenceEmbedding(
            vocabulary_sizes, hidden_dim, Q, T, H, cls_id=cls_id, sep_id=sep_id,
            dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
            initializer_range=initializer_range, use_text_tower=text_encoder is not None,
            history_titles=history_titles, context_dim=context_dim, dtype=dtype,
            name="embeddings")
        self.target_attention = (
            TargetAttention(hidden_dim=hidden_dim, initializer_range=initializer_range,
                            dtype=dtype, name="target_attention")
            if target_attention else None)
        self.context_encoder = (
            keras.layers.Dense(hidden_dim, activation="gelu", kernel_initializer=init(),
                               dtype=dtype, name="context_encoder") if num_dense else None)
        self.transformer_layers = [
            TransformerEncoderBlock(
                num_heads=num_heads, intermediate_dim=intermediate_dim, activation="gelu",
                dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
                dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(int(num_layers))]

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
        if history_titles:
            inputs["hist_title_tokens"] = keras.Input((H, T), dtype="int32",
                                                      name="hist_title_tokens")
        if num_dense:
            inputs["dense_features"] = keras.Input((num_dense,), dtype="float32",
                                                   name="dense_features")
        embedding_inputs = dict(inputs)
        if self.context_embedding is not None:
            dense = inputs["dense_features"]
            groups = ops.take(dense, ops.convert_to_tensor(group_indices, "int32"), axis=1)
            embedded = ops.reshape(self.context_embedding(groups),
                                   (-1, C * context_embedding_dim))  # [B, C * d]
            embedded = ops.cast(embedded, "float32")
            rest = (dense[:, (2 + bins) * C:] if context_embedding_mode == "replace"
                    else dense)
            embedding_inputs["dense_features"] = ops.concatenate([embedded, rest], axis=-1)
        if text_encoder is not None:
            text = text_encoder(self.text_inputs(inputs["query_tokens"]))["sequence_output"]
            embedding_inputs["query_embedding"] = self.query_projection(text)
            if T > 0:
                title = text_encoder.token_embedding(inputs["title_tokens"])
                embedding_inputs["title_embedding"] = self.title_projection(
                    self.title_pool(title, inputs["title_tokens"]))
        x, padding_mask = self.embeddings(embedding_inputs)
        # The candidate's own embedding (before any attention), a direct path for the heads
        # (as dnn_mtl's candidate fields and BST's concatenation): rank, popularity and item
        # identity reach them whatever the encoder learned in pre-training.
        candidate_embedding = x[:, -1, :]
        extra = {}
        if self.target_attention is not None:
            # DIN: the history events (before the encoder mixes them) pooled by the candidate.
            extra["target_attention_output"] = self.target_attention(
                x[:, Q + 2:Q + 2 + H, :], candidate_embedding, inputs["hist_mask"])
        if self.context_encoder is not None:
            # The context features straight to the heads too (the wide path a tree has).
            dense = ops.cast(embedding_inputs["dense_features"], x.dtype)
            extra["context_output"] = ops.concatenate([dense, self.context_encoder(dense)], -1)
        for layer in self.transformer_layers:
            x = layer(x, padding_mask=padding_mask)
        outputs = {"sequence_output": x, "cls_output": x[:, 0, :],
                   "candidate_output": x[:, -1, :],
                   "candidate_embedding": candidate_embedding, **extra}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_sizes = dict(vocabulary_sizes)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.max_query_tokens = Q
        self.max_title_tokens = T
        self.max_history = H
        self.cls_id = int(cls_id)
        self.sep_id = int(sep_id)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.initializer_range = float(initializer_range)
        self.text_encoder_trainable = bool(text_encoder_trainable)
        self.history_titles = bool(history_titles)
        self.use_target_attention = bool(target_attention)
        self.context_embedding_dim = context_embedding_dim
        self.context_embedding_mode = context_embedding_mode

    def get_config(self):
        config = super().get_config()
        config.update({
            "target_attention": self.use_target_attention,
            "context_embedding_dim": self.context_embedding_dim,
            "context_embedding_mode": self.context_embedding_mode,
            "text_encoder": (None if self.text_encoder is None else
                             keras.saving.serialize_keras_object(self.text_encoder)),
            "text_encoder_trainable": self.text_encoder_trainable,
            "history_titles": self.history_titles,
            "vocabulary_sizes": self.vocabulary_sizes,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "max_query_tokens": self.max_query_tokens,
            "max_title_tokens": self.max_title_tokens,
            "max_history": self.max_history,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
        })
        return config
