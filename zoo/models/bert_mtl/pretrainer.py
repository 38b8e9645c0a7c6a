"""Self-supervised pre-training of `BertMtlBackbone` on behaviour logs alone (no impression
labels).

Three prediction tasks over the same input sequence the multi-task model sees:
  * masked behaviour modelling (BERT4Rec): a fraction of the history events lose their item,
    category, brand and price (set to the padding index 0, which fine-tuning never attends
    to, so it acts as the [MASK] event); the encoder predicts their item and category from
    the rest of the sequence, the query and the candidate;
  * masked language modelling on the query: WordPiece tokens replaced by [MASK] (80 %),
    a random token (10 %) or kept (10 %), predicted from the context;
  * next-event prediction at the candidate slot: the item and category of the user's next
    behaviour event after the impression (BERT4Rec's inference task), read off the
    candidate slot's output. The masked tasks have no target there, so without this one
    pre-training never trains the position every multi-task head reads. By default
    (`pretrain_mask_candidate`) the candidate is hidden at that slot: with the shown item
    in place the next event is close to its click label.

    masker = EventMasker(preprocessor.vocabulary_sizes(), config)   # in tf.data
    inputs, targets = masker(preprocessed)
    pretrainer = BertMtlPretrainer(backbone, ...)                   # shares the backbone
    logits = pretrainer(inputs)  # {"item": [B, Pe, Vi], "category", "query", "next_item": [B, 1, Vi],
                                 #  "next_category"}

The backbone's weights are then written on their own (`save_encoder`) and loaded into a
fresh multi-task model (`load_encoder`), whose heads start from scratch.

`NextSessionPretrainer` is the other pretext (`trainers.pretrain --pretext next_session`):
the whole multi-task ranker, candidate visible, picks a session's clicked item among
catalogue items by its click score; its encoder is kept the same way.
"""

from __future__ import annotations

import math

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from zoo.models.ranker import vocabulary as vocab_lib

# The event fields a masked event loses (0 = the padding index of each embedding).
MASKED_EVENT_FIELDS = ("hist_item_index", "hist_category_index", "hist_brand_index",
                       "hist_price_bucket")
TASKS = ("item", "category", "query", "next_item", "next_category")
# Task -> the target's weight key: which positions of an example count.
_WEIGHT_KEYS = {"item": "event_weights", "category": "event_weights",
                "query": "query_weights", "next_item": "next_weights",
                "next_category": "next_category_weights"}
MASK_UNITS = ("item", "position")
# The candidate's inputs `mask_candidate` sets to 0 (the padding index: a [MASK] event);
# the dense features too: most of them describe the candidate (the user's clicks on its
# item, its click rate, its match with the history), which would give its item away.
CANDIDATE_FIELDS = ("item_index", "category_index", "brand_index", "price_bucket",
                    "position_bucket", "item_clicks_bucket", "item_purchases_bucket",
                    "title_tokens", "dense_features")


def num_selections(length: int, rate: float) -> int:
    return max(1, int(math.ceil(length * rate)) + 1)


class EventMasker:
    """Chooses and masks history events and query tokens of preprocessed batches (tf.data).

    Built from keras-hub's `MaskedLMMaskGenerator`: padding is never selected; events are
    always fully masked (a random replacement would leave its category and brand behind).
    mask_unit="item" also masks every other event of a chosen event's item (not a target):
    the log repeats an item (click, cart, purchase), and a visible copy makes the masked
    item a copy task. "position" masks the chosen events only.
    """

    def __init__(self, vocabulary_sizes: dict, max_history: int, max_query_tokens: int,
                 mask_token_id: int, event_rate: float = 0.15, token_rate: float = 0.15,
                 mask_unit: str = "position", mask_candidate: bool = False):
        if mask_unit not in MASK_UNITS:
            raise ValueError(f"pretrain_mask_unit must be one of {MASK_UNITS}, "
                             f"got {mask_unit!r}")
        self.mask_unit = mask_unit
        self.mask_candidate = bool(mask_candidate)
        self.num_events = num_selections(max_history, event_rate)
        self.num_tokens = num_selections(max_query_tokens, token_rate)
        self.events = keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=vocabulary_sizes["item"], mask_selection_rate=event_rate,
            mask_token_id=0, mask_selection_length=self.num_events,
            unselectable_token_ids=[0], mask_token_rate=1.0, random_token_rate=0.0)
        self.tokens = keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=vocabulary_sizes["wordpiece"], mask_selection_rate=token_rate,
            mask_token_id=mask_token_id, mask_selection_length=self.num_tokens,
            unselectable_token_ids=[0], mask_token_rate=0.8, random_token_rate=0.1)

    def __call__(self, x: dict) -> tuple[dict, dict]:
        x = dict(x)
        events = self.events(x["hist_item_index"])
        positions = events["mask_positions"]
        weights = events["mask_weights"]
        selected = tf.reduce_max(
            tf.one_hot(positions, tf.shape(x["hist_item_index"])[1], dtype=tf.int32)
            * tf.cast(weights[..., None] > 0, tf.int32), axis=1)  # [B, H] 1 = masked
        if self.mask_unit == "item":
            items = x["hist_item_index"]
            same = tf.equal(items[:, :, None], items[:, None, :])  # [B, H, H]
            hit = tf.reduce_any(same & (selected[:, None, :] > 0), axis=2)
            selected = tf.cast(hit & (items > 0), tf.int32)
        targets = {
            "item": events["mask_ids"],
            "category": tf.gather(x["hist_category_index"], positions, batch_dims=1),
            "event_weights": weights,
        }
        for name in MASKED_EVENT_FIELDS:
            x[name] = x[name] * (1 - selected)
        if "hist_title_tokens" in x:  # a masked event's title would give its item away
            x["hist_title_tokens"] = x["hist_title_tokens"] * (1 - selected)[:, :, None]
        tokens = self.tokens(x["query_tokens"])
        x["query_tokens"] = tokens["token_ids"]
        targets["query"] = tokens["mask_ids"]
        targets["query_weights"] = tokens["mask_weights"]
        x["event_mask_positions"] = positions
        x["token_mask_positions"] = tokens["mask_positions"]
        if self.mask_candidate:
            for name in CANDIDATE_FIELDS:
                if name in x:
                    x[name] = tf.zeros_like(x[name])
        return x, targets


def next_event_targets(preprocessor, raw: dict) -> dict:
    """Lookup indices [B, 1] of the next event's item and category (examples parsed with
    `with_pretext=True`); weight 0 where the example has no next event (or, for the
    category, where the next item has none)."""
    item = tf.reshape(raw["next_item_id"], [-1, 1])
    category = tf.reshape(raw["next_category"], [-1, 1])
    return {"next_item": tf.cast(preprocessor.item_lookup(item), tf.int32),
            "next_category": tf.cast(preprocessor.category_lookup(category), tf.int32),
            "next_weights": tf.cast(tf.not_equal(item, ""), tf.float32),
            "next_category_weights": tf.cast(tf.not_equal(category, ""), tf.float32)}


@keras.saving.register_keras_serializable(package="ecom_zoo")
class BertMtlPretrainer(keras.Model):
    """Backbone + masked item / category / WordPiece prediction heads and next-event item /
    category heads at the candidate slot (keras-hub `MaskedLMHead`, logits only at the
    selected positions)."""

    def __init__(self, backbone, num_masked_events, num_masked_tokens, **kwargs):
        Q, H = backbone.max_query_tokens, backbone.max_history
        sizes = backbone.vocabulary_sizes
        # A new initializer per weight: one unseeded instance gives every weight the same values.
        def init():
            return keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)

        def head(name, size):
            return keras_hub.layers.MaskedLMHead(
                vocabulary_size=size, intermediate_activation="gelu",
                kernel_initializer=init(), layer_norm_epsilon=backbone.layer_norm_epsilon,
                dtype="float32", name=name)

        self.backbone = backbone
        self.item_head = head("item_head", sizes["item"])
        self.category_head = head("category_head", sizes["category"])
        self.query_head = head("query_head", sizes["wordpiece"])
        self.next_item_head = head("next_item_head", sizes["item"])
        self.next_category_head = head("next_category_head", sizes["category"])

        inputs = dict(backbone.input)
        inputs["event_mask_positions"] = keras.Input((num_masked_events,), dtype="int32",
                                                     name="event_mask_positions")
        inputs["token_mask_positions"] = keras.Input((num_masked_tokens,), dtype="int32",
                                                     name="token_mask_positions")
        sequence = backbone({k: v for k, v in inputs.items() if k in backbone.input})[
            "sequence_output"]
        # Sequence layout: [CLS] q_1..q_Q [SEP] e_1..e_H [SEP] candidate.
        query = sequence[:, 1:1 + Q, :]
        history = sequence[:, Q + 2:Q + 2 + H, :]
        candidate = sequence[:, -1:, :]
        at_candidate = keras.ops.zeros_like(inputs["event_mask_positions"][:, :1])
        outputs = {
            "item": self.item_head(history, mask_positions=inputs["event_mask_positions"]),
            "category": self.category_head(history,
                                           mask_positions=inputs["event_mask_positions"]),
            "query": self.query_head(query, mask_positions=inputs["token_mask_positions"]),
            "next_item": self.next_item_head(candidate, mask_positions=at_candidate),
            "next_category": self.next_category_head(candidate, mask_positions=at_candidate),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_masked_events = int(num_masked_events)
        self.num_masked_tokens = int(num_masked_tokens)

    def per_example_losses(self, targets: dict, logits: dict) -> dict:
        """{task: [B]}: what pre-training minimises (the loop asks the model)."""
        return per_example_losses(targets, logits)

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_masked_events": self.num_masked_events,
                "num_masked_tokens": self.num_masked_tokens,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def per_example_losses(targets: dict, logits: dict) -> dict:
    """Mean cross-entropy over each example's target positions ([B]; 0 where none)."""
    out = {}
    for task, weight_key in _WEIGHT_KEYS.items():
        w = tf.cast(targets[weight_key], tf.float32)
        ce = keras.losses.sparse_categorical_crossentropy(
            targets[task], tf.cast(logits[task], tf.float32), from_logits=True)
        out[task] = tf.reduce_sum(ce * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1.0)
    return out


def masked_accuracy(targets: dict, logits: dict) -> dict:
    """Top-1 accuracy at the target positions, per task (numpy scalars)."""
    out = {}
    for task, weight_key in _WEIGHT_KEYS.items():
        w = tf.cast(targets[weight_key], tf.float32)
        hit = tf.cast(tf.equal(tf.argmax(logits[task], -1, output_type=tf.int32),
                               tf.cast(targets[task], tf.int32)), tf.float32)
        out[task] = float(tf.reduce_sum(hit * w) / tf.maximum(tf.reduce_sum(w), 1.0))
    return out


def make_masker(preprocessor, config: dict) -> EventMasker:
    return EventMasker(preprocessor.vocabulary_sizes(), config["max_history"],
                       config["max_query_tokens"], preprocessor.token_id(vocab_lib.MASK),
                       event_rate=config.get("pretrain_event_mask_rate", 0.15),
                       token_rate=config.get("pretrain_token_mask_rate", 0.15),
                       mask_unit=config.get("pretrain_mask_unit", "position"),
                       mask_candidate=config.get("pretrain_mask_candidate", False))


def save_encoder(backbone, path: str) -> str:
    """Writes the backbone's weights as a TF checkpoint (object graph: `backbone`)."""
    return tf.train.Checkpoint(backbone=backbone).write(path)


def load_encoder(backbone, path: str) -> None:
    """Loads `save_encoder`'s weights into a backbone of the same config; every backbone
    variable must be matched (a different vocabulary or size is an error, not a partial
    load)."""
    status = tf.train.Checkpoint(backbone=backbone).read(path)
    status.assert_existing_objects_matched()


# Click probabilities are clipped this far from 0 and 1 before their logit is taken.
_LOGIT_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="ecom_zoo")
class NextSessionPretrainer(keras.Model):
    """The multi-task ranker trained to pick, among a session's candidates, the item the
    session clicked (`trainers.pretrain --pretext next_session`): a sampled softmax over
    the click logits of each group of `num_candidates` consecutive rows.

    Unlike the masked tasks the candidate is visible, with every context feature of the
    (session, item) pair (`zoo.data.requests.candidate_features`), so the path the
    multi-task heads read (candidate token, dense features, their projection) is trained
    too; the negatives are catalogue items, never the session's unclicked impressions.
    Only the backbone is kept (`save_encoder`): the towers are fitted to a sampled-softmax
    task whose base rate is not the click rate.

    Inputs: the ranker's preprocessed inputs for B = groups x num_candidates rows.
    Targets: {"next_session": [B] 1 = the group's clicked item, 0 = a negative}.
    """

    def __init__(self, ranker, num_candidates, **kwargs):
        super().__init__(**kwargs)
        self.ranker = ranker
        self.num_candidates = int(num_candidates)

    def call(self, inputs, training=None):
        p = keras.ops.clip(self.ranker(inputs, training=training)["click"], _LOGIT_EPSILON,
                           1.0 - _LOGIT_EPSILON)
        logits = keras.ops.log(p) - keras.ops.log1p(-p)
        return {"next_session": keras.ops.reshape(logits, [-1, self.num_candidates])}

    def per_example_losses(self, targets: dict, outputs: dict) -> dict:
        """{"next_session": [B]}: each row carries its group's cross-entropy over the
        group's rows, so the loop's mean over rows is the mean over groups."""
        logits = tf.cast(outputs["next_session"], tf.float32)
        positive = tf.reshape(tf.cast(targets["next_session"], tf.float32),
                              [-1, self.num_candidates])
        ce = tf.nn.softmax_cross_entropy_with_logits(
            positive / tf.maximum(tf.reduce_sum(positive, 1, keepdims=True), 1.0), logits)
        return {"next_session": tf.repeat(ce, self.num_candidates)}

    def get_config(self):
        return {"ranker": keras.saving.serialize_keras_object(self.ranker),
                "num_candidates": self.num_candidates, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["ranker"] = keras.saving.deserialize_keras_object(config["ranker"])
        return cls(**config)


def group_accuracy(targets: np.ndarray, logits: np.ndarray) -> dict:
    """Top-1 accuracy and mean reciprocal rank of the clicked item within its group
    (targets [G, C] 1 = clicked, logits [G, C]; ties count against it)."""
    targets = np.asarray(targets, np.float64)
    logits = np.asarray(logits, np.float64)
    score = (logits * targets).sum(1) / np.maximum(targets.sum(1), 1.0)
    rank = 1 + (logits >= score[:, None]).sum(1) - targets.sum(1).astype(np.int64)
    return {"next_session/accuracy": float(np.mean(rank == 1)),
            "next_session/mrr": float(np.mean(1.0 / rank))}


@keras.saving.register_keras_serializable(package="ecom_zoo")
class JointPretrainer(keras.Model):
    """Both pretexts on one shared backbone, every step (`trainers.pretrain --pretext
    joint`): the masked tasks on a batch of training impressions (`BertMtlPretrainer`) and
    the next-session task on a batch of sessions' candidates (`NextSessionPretrainer`).
    The masked tasks train what a next-session ranker never asks of the encoder (the
    history's items and prices, the query's words), the next-session task the candidate's
    path that the masked tasks hide.

    Inputs: {"masked": the masked pretrainer's inputs, "session": the ranker's
    preprocessed inputs}, both of B rows. Outputs and targets: the union of the two
    pretexts' (task names do not collide).
    """

    def __init__(self, masked, session, **kwargs):
        super().__init__(**kwargs)
        self.masked = masked
        self.session = session

    def call(self, inputs, training=None):
        return {**self.masked(inputs["masked"], training=training),
                **self.session(inputs["session"], training=training)}

    def per_example_losses(self, targets: dict, outputs: dict) -> dict:
        return {**self.masked.per_example_losses(targets, outputs),
                **self.session.per_example_losses(targets, outputs)}

    def get_config(self):
        return {"masked": keras.saving.serialize_keras_object(self.masked),
                "session": keras.saving.serialize_keras_object(self.session),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("masked", "session"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
