"""`TwoTowerBackbone`, `TwoTowerRetriever`, `build` and `fit_vocabulary` of `two_tower`.

    model = zoo.get("two_tower", "small", vocabulary=vocab)
    q = model.query_embeddings(raw_requests)        # [R, E], L2-normalised
    v = model.item_embeddings(raw_catalogue)        # [N, E]
    scores = q @ v.T / temperature                  # what the loss trains

The query tower reads the request's query (mean WordPiece embedding, one token) and the
user's behaviour events (item + category + brand + event type + price + time gap, as the
rankers embed them) through a small transformer encoder; the item tower reads the item's
id, category, brand, price bucket and title. The id, category, brand, price and word tables
are shared by the two towers, so an item clicked in the history and the same item as a
candidate start from one row. The item tower never sees a user: the catalogue is embedded
once per model and searched by dot product.

The loss (`per_example_losses`) is the in-batch sampled softmax of Yi et al. 2019 over the
clicked impressions of a batch: every other row's item is a negative, its logit corrected by
the log of its sampling probability (`keras_rs.layers.SamplingProbabilityCorrection`;
without it popular items are punished for being sampled often), and a negative that is the
positive's own item (the same item clicked twice in one batch) removed
(`keras_rs.layers.RemoveAccidentalHits`).
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
from keras import ops

from zoo.models.layers import IdEmbedding, TransformerEncoderBlock, history_event_embeddings
from zoo.models.ranker import vocabulary as vocab_lib
from zoo.models.ranker.preprocessor import RankerPreprocessor
from zoo.models.ranker.task import build_preprocessor

ITEM_INPUTS = ("title_tokens", "item_index", "category_index", "brand_index", "price_bucket")
QUERY_INPUTS = ("query_tokens", "hist_item_index", "hist_category_index", "hist_brand_index",
                "hist_event_index", "hist_price_bucket", "hist_gap_bucket", "hist_mask")
# Floor of an item's sampling probability (items never clicked in training, OOV rows).
MIN_SAMPLING_PROBABILITY = 1e-7
# The tables a pre-trained `bert_mtl` encoder shares with the towers (same names in its
# `EventSequenceEmbedding`), each with the vocabulary list that orders its rows (None: a
# fixed index: event types, time-gap buckets).
SHARED_TABLES = {"word_embedding": "wordpiece", "item_embedding": "item_id",
                 "category_embedding": "category", "brand_embedding": "brand",
                 "price_embedding": "price_edges", "event_embedding": None,
                 "gap_embedding": None, "user_embedding": "user_id"}


@keras.saving.register_keras_serializable(package="ecom_zoo")
class SamplingProbabilities(keras.layers.Layer):
    """item index [B] -> its share of the training positives [B] (a fixed table, saved with
    the model: the logQ correction must use the statistics the model was trained with)."""

    def __init__(self, num_items, **kwargs):
        super().__init__(**kwargs)
        self.num_items = int(num_items)

    def build(self, input_shape=None):
        self.table = self.add_weight(
            shape=(self.num_items,), initializer=keras.initializers.Constant(
                1.0 / max(self.num_items, 1)), trainable=False, name="table")
        self.built = True

    def call(self, item_index):
        return ops.take(self.table, ops.cast(item_index, "int32"), axis=0)

    def compute_output_spec(self, item_index):
        return keras.KerasTensor(item_index.shape, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items}


@keras.saving.register_keras_serializable(package="ecom_zoo")
class L2Normalize(keras.layers.Layer):
    def call(self, x):
        return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="ecom_zoo")
class TwoTowerBackbone(keras_hub.models.Backbone):
    """Both towers over the preprocessor's integer outputs (numeric only).

    Outputs: {"query_embedding": [B, E], "item_embedding": [B, E] (both unit length),
    "sampling_probability": [B] (the candidate's share of the training positives)}.
    """

    def __init__(self, vocabulary_sizes, hidden_dim=64, embedding_dim=64, num_layers=1,
                 num_heads=2, intermediate_dim=128, max_query_tokens=12, max_title_tokens=12,
                 max_history=20, dropout=0.1, layer_norm_epsilon=1e-12,
                 initializer_range=0.02, dtype=None, **kwargs):
        Q, T, H, D = int(max_query_tokens), int(max_title_tokens), int(max_history), int(
            hidden_dim)
        sizes = dict(vocabulary_sizes)

        def init():
            return keras.initializers.TruncatedNormal(stddev=initializer_range)

        def emb(name, key):
            return IdEmbedding(sizes[key], D, embeddings_initializer=init(), dtype=dtype,
                               name=name)

        # === Layers ===
        self.word_embedding = emb("word_embedding", "wordpiece")
        self.item_embedding = emb("item_embedding", "item")
        self.category_embedding = emb("category_embedding", "category")
        self.brand_embedding = emb("brand_embedding", "brand")
        self.price_embedding = emb("price_embedding", "price")
        self.event_embedding = emb("event_embedding", "event")
        self.gap_embedding = emb("gap_embedding", "gap")
        self.user_embedding = emb("user_embedding", "user") if "user" in sizes else None
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            H + 1, initializer=init(), dtype=dtype, name="position_embedding")
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype,
                                                       name="embeddings_dropout")
        self.encoder_layers = [
            TransformerEncoderBlock(num_heads=num_heads, intermediate_dim=intermediate_dim,
                                    dropout=dropout, layer_norm_epsilon=layer_norm_epsilon,
                                    kernel_initializer=init(), dtype=dtype,
                                    name=f"transformer_layer_{i}")
            for i in range(int(num_layers))]
        self.query_hidden = keras.layers.Dense(D, activation="gelu", kernel_initializer=init(),
                                               dtype=dtype, name="query_hidden")
        self.query_output = keras.layers.Dense(int(embedding_dim), kernel_initializer=init(),
                                               dtype=dtype, name="query_output")
        self.item_hidden = keras.layers.Dense(D, activation="gelu", kernel_initializer=init(),
                                              dtype=dtype, name="item_hidden")
        self.item_output = keras.layers.Dense(int(embedding_dim), kernel_initializer=init(),
                                              dtype=dtype, name="item_output")
        self.normalize = L2Normalize(dtype=dtype, name="l2_normalize")
        self.sampling = SamplingProbabilities(sizes["item"], dtype="float32",
                                              name="sampling_probabilities")

        # === Functional model ===
        inputs = {"query_tokens": keras.Input((Q,), dtype="int32", name="query_tokens")}
        if T > 0:
            inputs["title_tokens"] = keras.Input((T,), dtype="int32", name="title_tokens")
        for name in ("item_index", "category_index", "brand_index", "price_bucket"):
            inputs[name] = keras.Input((), dtype="int32", name=name)
        if self.user_embedding is not None:
            inputs["user_index"] = keras.Input((), dtype="int32", name="user_index")
        for name in QUERY_INPUTS[1:]:
            inputs[name] = keras.Input((H,), dtype="int32", name=name)

        def mean_words(tokens):
            mask = ops.expand_dims(ops.cast(ops.not_equal(tokens, 0), "float32"), -1)
            return (ops.sum(self.word_embedding(tokens) * mask, axis=1)
                    / ops.maximum(ops.sum(mask, axis=1), 1.0))

        # Query tower: [query] + history events -> encoder -> the query slot and the mean of
        # the events -> MLP -> unit vector.
        query = mean_words(inputs["query_tokens"])
        if self.user_embedding is not None:
            query = query + self.user_embedding(inputs["user_index"])
        events = history_event_embeddings(self, inputs)  # [B, H, D]
        x = ops.concatenate([ops.expand_dims(query, 1), events], axis=1)  # [B, 1 + H, D]
        x = self.embeddings_dropout(self.layer_norm(x + self.position_embedding(x)))
        hist_mask = ops.cast(inputs["hist_mask"], "int32")
        mask = ops.concatenate([ops.ones_like(hist_mask[:, :1]), hist_mask], axis=1)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=ops.cast(mask, "bool"))
        event_mask = ops.expand_dims(ops.cast(hist_mask, x.dtype), -1)
        pooled = (ops.sum(x[:, 1:, :] * event_mask, axis=1)
                  / ops.maximum(ops.sum(event_mask, axis=1), 1.0))
        query_vector = self.normalize(self.query_output(self.query_hidden(
            ops.concatenate([x[:, 0, :], pooled, query], axis=-1))))

        # Item tower: id + category + brand + price, and the title's mean word embedding.
        item = ops.concatenate([
            self.item_embedding(inputs["item_index"]),
            self.category_embedding(inputs["category_index"]),
            self.brand_embedding(inputs["brand_index"]),
            self.price_embedding(inputs["price_bucket"]),
            mean_words(inputs["title_tokens"]) if T > 0 else ops.zeros_like(query)], axis=-1)
        item_vector = self.normalize(self.item_output(self.item_hidden(item)))
        outputs = {"query_embedding": query_vector, "item_embedding": item_vector,
                   "sampling_probability": self.sampling(inputs["item_index"])}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_sizes = sizes
        self.hidden_dim = D
        self.embedding_dim = int(embedding_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.max_query_tokens, self.max_title_tokens, self.max_history = Q, T, H
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.initializer_range = float(initializer_range)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "vocabulary_sizes", "hidden_dim", "embedding_dim", "num_layers", "num_heads",
            "intermediate_dim", "max_query_tokens", "max_title_tokens", "max_history",
            "dropout", "layer_norm_epsilon", "initializer_range")})
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class TwoTowerRetriever(keras_hub.models.Task):
    """The retriever: backbone + preprocessor + the in-batch softmax loss.

    Call it on PREPROCESSED inputs; `query_embeddings` / `item_embeddings` take raw feature
    dicts (the preprocessor runs inside). `per_example_losses(labels, outputs)` wants
    labels {"item_index": [B] (the candidate's index: accidental hits), "weight": [B]}.
    """

    preprocessor_cls = RankerPreprocessor

    def __init__(self, backbone, preprocessor=None, temperature=0.05,
                 sampling_correction=True, zoo_config=None, **kwargs):
        import keras_rs

        self.backbone = backbone
        self.preprocessor = preprocessor
        self.correction = keras_rs.layers.SamplingProbabilityCorrection(
            epsilon=MIN_SAMPLING_PROBABILITY, name="sampling_correction")
        self.remove_accidental_hits = keras_rs.layers.RemoveAccidentalHits(
            name="remove_accidental_hits")
        inputs = backbone.input
        outputs = backbone(inputs)
        kwargs.setdefault("compile", False)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.temperature = float(temperature)
        self.sampling_correction = bool(sampling_correction)
        self.zoo_config = dict(zoo_config or {})

    def set_sampling_probabilities(self, probabilities) -> None:
        """The items' shares of the training positives, by item lookup index."""
        table = self.backbone.sampling.table
        values = np.asarray(probabilities, np.float32)
        if values.shape != tuple(table.shape):
            raise ValueError(f"sampling probabilities: expected {tuple(table.shape)} values "
                             f"(one per item lookup index), got {values.shape}")
        table.assign(values)

    def initialise_from_encoder(self, encoder, encoder_vocabulary: dict) -> list[str]:
        """Starts the towers from a pre-trained `bert_mtl` backbone (`trainers.pretrain`):
        its id, word, price, event and gap tables, its embedding LayerNorm and its first
        transformer layers (as many as this backbone has). Pre-training learned those
        tables from masked and next-event prediction over the whole log; the retriever
        reads the same events. Rows must mean the same ids, so the vocabularies that order
        them must be equal; widths must be equal. Returns the names of what was copied."""
        mine = self.backbone
        theirs = encoder.embeddings
        vocabulary = self.vocabulary or {}
        if theirs.hidden_dim != mine.hidden_dim:
            raise ValueError(
                f"the pre-trained encoder is {theirs.hidden_dim} wide and this retriever "
                f"{mine.hidden_dim}: pass --model_override hidden_dim={theirs.hidden_dim} "
                "(and the encoder's num_heads and intermediate_dim)")
        copied = []
        for name, key in SHARED_TABLES.items():
            target, source = getattr(mine, name, None), getattr(theirs, name, None)
            if target is None or source is None:
                continue
            if key is not None and vocabulary.get(key) != encoder_vocabulary.get(key):
                raise ValueError(
                    f"the pre-trained encoder's vocabulary differs from this run's in "
                    f"{key!r}: pre-train on the same --data_dir with the same preset")
            _copy_weights(source, target, name)
            copied.append(name)
        _copy_weights(theirs.layer_norm, mine.layer_norm, "embeddings_layer_norm")
        copied.append("embeddings_layer_norm")
        for i, (source, target) in enumerate(zip(encoder.transformer_layers,
                                                 mine.encoder_layers)):
            _copy_weights(source, target, f"transformer_layer_{i}")
            copied.append(f"transformer_layer_{i}")
        return copied

    def per_example_losses(self, labels: dict, outputs: dict) -> dict:
        q, v = outputs["query_embedding"], outputs["item_embedding"]
        logits = ops.cast(ops.matmul(q, ops.transpose(v)), "float32") / self.temperature
        if self.sampling_correction:
            logits = self.correction(logits, outputs["sampling_probability"])
        batch = ops.shape(logits)[0]
        eye = ops.eye(batch, dtype="float32")
        logits = self.remove_accidental_hits(logits, eye, ops.cast(labels["item_index"],
                                                                    "int32"))
        loss = keras.losses.categorical_crossentropy(eye, logits, from_logits=True)
        return {"retrieval": loss * ops.cast(labels["weight"], "float32")}

    def select_inputs(self, preprocessed: dict) -> dict:
        """The preprocessor's outputs this model reads (it outputs more: the rankers' rank
        and count buckets)."""
        return {k: preprocessed[k] for k in self.backbone.input}

    def preprocess(self, raw: dict) -> dict:
        return self.select_inputs(self.preprocessor(raw))

    # ---- inference on raw features ----
    def query_embeddings(self, raw: dict):
        """Raw request features (query, history; user_id when the model has users) ->
        [B, E]. Candidate fields may be absent."""
        return self._tower(raw, "query_embedding")

    def item_embeddings(self, raw: dict):
        """Raw item fields (item_id, item_category, item_brand, item_title, item_price) ->
        [B, E]. The user side may be absent."""
        return self._tower(raw, "item_embedding")

    def _tower(self, raw, output):
        return self.backbone(self.preprocess(complete_features(raw)), training=False)[output]

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature,
                       "sampling_correction": self.sampling_correction,
                       "zoo_config": dict(self.zoo_config)})
        return config

    @property
    def vocabulary(self) -> dict | None:
        return None if self.preprocessor is None else self.preprocessor.vocabulary


def _copy_weights(source, target, name: str) -> None:
    shapes = [tuple(w.shape) for w in source.weights], [tuple(w.shape) for w in target.weights]
    if shapes[0] != shapes[1]:
        raise ValueError(f"{name}: the pre-trained encoder's weights {shapes[0]} do not fit "
                         f"this retriever's {shapes[1]} (set --model_override num_heads / "
                         "intermediate_dim to the encoder's)")
    for s, t in zip(source.weights, target.weights):
        t.assign(s)


def complete_features(raw: dict) -> dict:
    """`raw` with every raw feature the preprocessor reads: the missing ones padded
    (empty strings, zeros, a one-slot empty history), so a tower can be run on its side of
    the inputs alone."""
    import tensorflow as tf
    from zoo.models.features import RAW_FEATURES

    raw = {k: tf.convert_to_tensor(v) for k, v in raw.items()}
    batch = tf.shape(next(iter(raw.values())))[0]
    out = dict(raw)
    for name, (dtype, rank) in RAW_FEATURES.items():
        if name in out:
            continue
        shape = [batch] if rank == 1 else [batch, 1]
        out[name] = (tf.fill(shape, "") if dtype == "string"
                     else tf.zeros(shape, dtype=dtype))
    return out


def build(config: dict, vocabulary=None) -> TwoTowerRetriever:
    """The retriever of a resolved zoo config; vocabulary: a dict from `fit_vocabulary` (its
    "item_sampling" sets the logQ table) or a JSON path; None = a placeholder."""
    preprocessor = build_preprocessor(config, vocabulary, name="two_tower_preprocessor")
    sizes = preprocessor.vocabulary_sizes()
    backbone = TwoTowerBackbone(
        sizes, hidden_dim=config["hidden_dim"], embedding_dim=config["embedding_dim"],
        num_layers=config["num_layers"], num_heads=config["num_heads"],
        intermediate_dim=config["intermediate_dim"],
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"], max_history=config["max_history"],
        dropout=config["dropout"], layer_norm_epsilon=config["layer_norm_epsilon"],
        initializer_range=config["initializer_range"], name="two_tower_backbone")
    model = TwoTowerRetriever(backbone, preprocessor, temperature=config["temperature"],
                              sampling_correction=config["sampling_correction"],
                              zoo_config=config, name="two_tower")
    if isinstance(vocabulary, dict) and "item_sampling" in vocabulary:
        model.set_sampling_probabilities(vocabulary["item_sampling"])
    return model


def fit_vocabulary(features: dict, config) -> dict:
    """The shared ranker's vocabulary plus "item_sampling": each item lookup index's share
    of the (labelled) clicked training impressions, floored at MIN_SAMPLING_PROBABILITY
    (padding and OOV rows take the share of the items that fall there)."""
    from zoo.models.two_tower.presets import PRESETS

    config = {**PRESETS[config], "preset": config} if isinstance(config, str) else config
    vocab = vocab_lib.fit_vocabulary(features, config)
    index = {item: i for i, item in enumerate(vocab["item_id"])}
    extra = 1 + int(config["num_oov_indices"])
    counts = np.zeros(len(vocab["item_id"]) + extra, np.float64)
    if "item_id" in features and "click" in features:
        clicked = np.asarray(features["click"]).ravel() > 0
        if "labelled" in features:
            clicked &= np.asarray(features["labelled"]).ravel().astype(bool)
        ids = vocab_lib._as_str(features["item_id"])[clicked]
        rows = np.array([index.get(i, -1) for i in ids], np.int64)
        known = rows >= 0
        np.add.at(counts, rows[known] + extra, 1.0)
        # Unknown ids hash into the OOV buckets: spread their share evenly over them.
        counts[1:extra] += float((~known).sum()) / max(extra - 1, 1)
    total = counts.sum()
    shares = counts / total if total > 0 else np.full_like(counts, 1.0 / len(counts))
    vocab["item_sampling"] = [float(max(s, MIN_SAMPLING_PROBABILITY)) for s in shares]
    return vocab
