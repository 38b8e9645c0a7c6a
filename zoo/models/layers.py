"""Layers shared by the model families."""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf
from keras import ops


_state = threading.local()


@contextlib.contextmanager
def _creating_table():
    _state.table = True
    try:
        yield
    finally:
        _state.table = False


def creating_table() -> bool:
    """True while an IdEmbedding creates its table: the one variable a parameter-server
    partitioner should shard (`trainers.core.distribute.TablePartitioner`)."""
    return getattr(_state, "table", False)


def history_event_embeddings(owner, inputs):
    """[B, H, D]: each behaviour event as the sum of its item, category, brand, event type,
    price bucket and time-gap embeddings, from `owner`'s tables of those names (the one
    embedding of an event every family shares)."""
    return (owner.item_embedding(inputs["hist_item_index"])
            + owner.category_embedding(inputs["hist_category_index"])
            + owner.brand_embedding(inputs["hist_brand_index"])
            + owner.event_embedding(inputs["hist_event_index"])
            + owner.price_embedding(inputs["hist_price_bucket"])
            + owner.gap_embedding(inputs["hist_gap_bucket"]))


@keras.saving.register_keras_serializable(package="ecom_zoo")
class IdEmbedding(keras.layers.Embedding):
    """`keras.layers.Embedding` whose lookup gathers the rows where the table lives.

    Keras' own lookup (`ops.take` of the variable) first reads the whole table. Under
    ParameterServerStrategy with a `variable_partitioner` the table is a ShardedVariable on
    the parameter servers, and that read copies every shard to the worker on every step
    (measured: 64 MB per step for a 1M x 16 table, against 0.15 MB with this lookup; see
    BUILD_NOTES.md). `tf.nn.embedding_lookup` on the variable itself runs the gather on
    each shard's server, so only the looked-up rows travel. On one device the two are the
    same gather with the same gradient; the weights and the config are Embedding's, so
    saving, loading and LoRA are unchanged.

    A checkpoint holds the sharded table under the same key as an unsharded one (as
    slices), so checkpoints move between strategies and numbers of parameter servers.
    """

    def build(self, input_shape=None):
        with _creating_table():
            super().build(input_shape)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        inner = getattr(children.get("_embeddings"), "value", None)
        if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
            # Keras' variable cannot checkpoint a ShardedVariable (it has no single device);
            # the ShardedVariable itself saves its shards as slices of one tensor.
            children["_embeddings"] = inner
        return children

    def call(self, inputs):
        if self.lora_enabled or self.quantization_mode:
            return super().call(inputs)  # their weights are computed, not one variable
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        outputs = tf.nn.embedding_lookup(self._embeddings.value, inputs)
        return ops.cast(outputs, dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package="ecom_zoo")
class LastAxisLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis, its moments taken by matmuls.

    Same weights (gamma, beta) and outputs (to float rounding) as Keras' layer. XLA:CPU
    lowers each 128-wide mean / variance of Keras' layer to a slow `reduce-window`
    (profiled: 33 ms of a 294 ms `small` step); a product with a constant 1/D column runs
    on the matmul kernels instead (BUILD_NOTES.md, "XLA and throughput").
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        axis = list(self.axis) if isinstance(self.axis, (list, tuple)) else [self.axis]
        if axis != [-1] or not (self.center and self.scale) or self.rms_scaling:
            raise ValueError("LastAxisLayerNormalization normalises the last axis with "
                             f"center and scale, got axis={self.axis}, center={self.center}, "
                             f"scale={self.scale}, rms_scaling={self.rms_scaling}")

    def call(self, inputs):
        dim = inputs.shape[-1]
        # As Keras' layer: the moments in float32 at least (bf16 / fp16 lose the mean).
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        column = ops.full((dim, 1), 1.0 / dim, dtype=x.dtype)
        mean = ops.matmul(x, column)
        centered = x - mean
        variance = ops.matmul(ops.square(centered), column)
        y = centered * ops.rsqrt(variance + self.epsilon)
        y = y * ops.cast(self.gamma, y.dtype) + ops.cast(self.beta, y.dtype)
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="ecom_zoo")
class TransformerEncoderBlock(keras.layers.Layer):
    """A post-LN BERT encoder layer: `keras_hub.layers.TransformerEncoder`'s computation.

    Same sublayers, masking, dropouts and parameter count as keras-hub's layer (with its
    default `normalize_first=False`); `tests/test_layers.py` copies weights between the two
    and compares outputs. Written here for speed on CPU: keras-hub's attention projects
    through `EinsumDense` ("abc,cde->abde"), which Keras runs as a broadcasting batch
    matmul whose kernel gradient is one [D, D] product per example plus a sum (profiled:
    42 ms of a 294 ms `small` step). These projections are `Dense` layers (one
    [B*S, D] x [D, D] matmul each way), and the layer norms are `LastAxisLayerNormalization`.
    The query and value projections are named "query" and "value", so keras-hub's
    `Backbone.enable_lora` finds them as it finds keras-hub's own. Unlike keras-hub's layer
    it takes the padding mask only as `padding_mask` (no implicit Keras mask, no
    `attention_mask`), and the hidden size must be a multiple of `num_heads`.
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, activation="gelu",
                 layer_norm_epsilon=1e-5, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _dense(self, units, name, activation=None):
        def clone(initializer):  # a fresh one per weight, as keras-hub's clone_initializer
            if isinstance(initializer, keras.initializers.Initializer):
                return initializer.__class__.from_config(initializer.get_config())
            return initializer
        return keras.layers.Dense(
            units, activation=activation, kernel_initializer=clone(self.kernel_initializer),
            bias_initializer=clone(self.bias_initializer), dtype=self.dtype_policy, name=name)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(f"hidden size {hidden_dim} is not a multiple of "
                             f"num_heads={self.num_heads}")
        self.query_dense = self._dense(hidden_dim, "query")
        self.key_dense = self._dense(hidden_dim, "key")
        self.value_dense = self._dense(hidden_dim, "value")
        self.attention_output_dense = self._dense(hidden_dim, "attention_output")
        self.attention_probs_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_probs_dropout")
        self.self_attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="self_attention_dropout")
        self.self_attention_layer_norm = LastAxisLayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
            name="self_attention_layer_norm")
        self.feedforward_intermediate_dense = self._dense(
            self.intermediate_dim, "feedforward_intermediate_dense", self.activation)
        self.feedforward_output_dense = self._dense(hidden_dim, "feedforward_output_dense")
        self.feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="feedforward_dropout")
        self.feedforward_layer_norm = LastAxisLayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
            name="feedforward_layer_norm")
        for layer in (self.query_dense, self.key_dense, self.value_dense,
                      self.attention_output_dense, self.self_attention_layer_norm,
                      self.feedforward_intermediate_dense, self.feedforward_layer_norm):
            layer.build(inputs_shape)
        self.feedforward_output_dense.build(
            tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, inputs, padding_mask=None, training=None):
        batch, hidden = ops.shape(inputs)[0], inputs.shape[-1]
        head_dim = hidden // self.num_heads

        def heads(x):  # [B, S, D] -> [B, S, N, D / N]; S may be unknown when traced
            return ops.reshape(x, (batch, -1, self.num_heads, head_dim))

        x = inputs
        query = heads(self.query_dense(x))
        key = heads(self.key_dense(x))
        value = heads(self.value_dense(x))
        scores = ops.einsum("bqnd,bknd->bnqk", query * (1.0 / head_dim ** 0.5), key)
        if padding_mask is not None:
            # As Keras' masked softmax: padded keys' scores become a large negative (a row
            # with every key padded attends uniformly, as there).
            large_negative = -3e4 if scores.dtype == "float16" else -1e9
            keep = ops.cast(padding_mask, "bool")[:, None, None, :]
            scores = ops.where(keep, scores, ops.cast(large_negative, scores.dtype))
        probs = ops.softmax(scores, axis=-1)
        probs = self.attention_probs_dropout(probs, training=training)
        attended = ops.reshape(ops.einsum("bnqk,bknd->bqnd", probs, value),
                               (batch, -1, hidden))
        attended = self.self_attention_dropout(
            self.attention_output_dense(attended), training=training)
        x = self.self_attention_layer_norm(x + attended)
        ffn = self.feedforward_output_dense(self.feedforward_intermediate_dense(x))
        ffn = self.feedforward_dropout(ffn, training=training)
        return self.feedforward_layer_norm(x + ffn)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        })
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class TargetAttention(keras.layers.Layer):
    """DIN's local activation unit (Zhou et al. 2018): the candidate weighs each history event.

    `call(history [B, H, D], candidate [B, D], mask [B, H])` -> [B, D]: the sum of the
    events weighted by a small MLP over [event, candidate, event * candidate, event -
    candidate]. The weights are softmax-normalised over the real events (BST/DIN variants
    differ here; normalised weights keep the scale stable for long histories); an empty
    history gives zeros. The self-attention of the encoder mixes events with each other and
    the query; this pools them by their relevance to the one candidate, which is what makes
    a user's past purchases of *this* brand count when *this* item is shown.
    """

    def __init__(self, hidden_dim=64, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.initializer_range = float(initializer_range)

        def init():
            return keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        self.hidden = keras.layers.Dense(self.hidden_dim, activation="gelu",
                                         kernel_initializer=init(), dtype=self.dtype_policy,
                                         name="attention_hidden")
        self.score = keras.layers.Dense(1, kernel_initializer=init(), dtype=self.dtype_policy,
                                        name="attention_score")

    def build(self, history_shape, candidate_shape=None, mask_shape=None):
        d = history_shape[-1]
        self.hidden.build((None, None, 4 * d))
        self.score.build((None, None, self.hidden_dim))
        self.built = True

    def attention_weights(self, history, candidate, mask):
        c = ops.broadcast_to(ops.expand_dims(candidate, 1), ops.shape(history))
        x = ops.concatenate([history, c, history * c, history - c], axis=-1)
        logits = ops.cast(ops.squeeze(self.score(self.hidden(x)), -1), "float32")  # [B, H]
        real = ops.cast(mask, "bool")
        logits = ops.where(real, logits, -1e9)
        weights = ops.softmax(logits, axis=-1) * ops.cast(real, "float32")
        return weights  # all zeros for an empty history

    def call(self, history, candidate, mask):
        weights = self.attention_weights(history, candidate, mask)
        return ops.einsum("bh,bhd->bd", ops.cast(weights, history.dtype), history)

    def compute_output_spec(self, history, candidate, mask):
        return keras.KerasTensor((history.shape[0], history.shape[2]), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim,
                       "initializer_range": self.initializer_range})
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class PositionBias(keras.layers.Layer):
    """PAL's position tower (Guo et al. 2019): the logit of p(seen | impression rank).

    The click a log records is p(seen | rank) x p(click | seen); fitting the two apart keeps
    the rank out of the relevance part, so a request whose rank is unknown (bucket 0: a
    recommendation, before any list exists) is scored by relevance alone and cannot be
    ordered by where items happened to be shown. During training a `dropout_rate` share of
    the ranks is hidden (bucket 0), so bucket 0 learns the average rank's factor and a
    rank-free answer stays calibrated. `call(position_bucket [B], training)` -> [B] logits.

    The logits are `LOGIT_SCALE` x the weights: AdamW moves a weight by about the learning
    rate per step, and a rank's logit must travel a few units within one epoch (measured:
    unscaled, the tower stayed near its start and cost 0.02 click AUC, BUILD_NOTES.md).
    """

    LOGIT_SCALE = 10.0

    def __init__(self, num_buckets, dropout_rate=0.1, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)
        self.dropout_rate = float(dropout_rate)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="position_dropout_seed")

    def build(self, input_shape=None):
        self.weights_per_bucket = self.add_weight(
            shape=(self.num_buckets,), initializer="zeros", name="position_logits")

    def bucket_logits(self):
        """[num_buckets] logits of p(seen | bucket) (bucket 0: rank unknown)."""
        return self.LOGIT_SCALE * self.weights_per_bucket
        self.built = True

    def call(self, position_bucket, training=None):
        bucket = ops.cast(position_bucket, "int32")
        if training and self.dropout_rate > 0:
            hide = keras.random.uniform(ops.shape(bucket), seed=self.seed_generator)
            bucket = ops.where(hide < self.dropout_rate, 0, bucket)
        return ops.cast(ops.take(self.bucket_logits(), bucket), "float32")

    def compute_output_spec(self, position_bucket, training=None):
        return keras.KerasTensor(position_bucket.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"num_buckets": self.num_buckets, "dropout_rate": self.dropout_rate,
                       "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class NumericEmbedding(keras.layers.Layer):
    """Per-feature numerical embeddings (Gorishniy et al. 2022, "PLE -> linear -> ReLU").

    `call(x [B, F, W])` -> [B, F, embedding_dim]: feature f's W encoding values (e.g. its
    standardised value, missing flag and piecewise-linear bins) through its own linear map
    (weight [W, d], bias [d]) and a ReLU. No weight is shared between features, so each
    feature learns its own curve; a flat Dense over every feature's encoding at once mixes
    them before any non-linearity.

    The initialisation is torch's `nn.Linear` (the paper's): uniform in +-1/sqrt(W), biases
    too, so a feature whose encoding is all zeros (undefined) still gives a non-zero vector.
    """

    def __init__(self, embedding_dim, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be > 0, got {embedding_dim}")
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        _, num_features, width = input_shape
        if num_features is None or width is None:
            raise ValueError(f"NumericEmbedding needs a known [F, W], got {input_shape}")
        bound = 1.0 / float(width) ** 0.5
        self.kernel = self.add_weight(
            shape=(num_features, width, self.embedding_dim), name="kernel",
            initializer=keras.initializers.RandomUniform(-bound, bound))
        self.bias = self.add_weight(
            shape=(num_features, self.embedding_dim), name="bias",
            initializer=keras.initializers.RandomUniform(-bound, bound))
        self.built = True

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        y = ops.einsum("bfw,fwd->bfd", x, ops.cast(self.kernel, self.compute_dtype))
        return self.activation(y + ops.cast(self.bias, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"embedding_dim": self.embedding_dim,
                       "activation": keras.activations.serialize(self.activation)})
        return config
