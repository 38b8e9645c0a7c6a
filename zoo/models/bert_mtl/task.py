"""`BertMtl`: the multi-task model (backbone + heads), its builder and `end_to_end`.

    model = zoo.get("bert_mtl", "small", vocabulary=vocab)
    ds = raw_ds.map(lambda f: (model.preprocessor(f), labels(f)))     # tf.data, batched
    outputs = model(preprocessed, training=True)   # numeric only: fine under jit_compile
    serving = end_to_end(model)                    # raw feature dict -> outputs
    model.save("m.keras"); keras.models.load_model("m.keras")          # safe mode

Outputs: {"click": [B], "purchase": [B], "price_range": [B, K], "demand": [B]}
  click        p(click)                              sigmoid
  purchase     p(click) * p(purchase | click)        ESMM: always <= click
  price_range  softmax over K price ranges
  demand       Poisson rate = exp(log_rate), log_rate soft-clipped to (-12, 12)
"""

from __future__ import annotations

import json
import os

import keras
import keras_hub
from keras import ops

from zoo.models.bert_mtl import vocabulary as vocab_lib
from zoo.models.bert_mtl.backbone import BertMtlBackbone
from zoo.models.bert_mtl.preprocessor import BertMtlPreprocessor
from zoo.models.features import RAW_FEATURES, TASKS

LOG_RATE_BOUND = 12.0


@keras.saving.register_keras_serializable(package="ecom_zoo")
class BertMtl(keras_hub.models.Task):
    """Backbone + task heads on concat(CLS output, candidate output).

    Call it on PREPROCESSED inputs (`model.preprocessor(raw)`); `model.predict` / `fit` /
    `evaluate` on raw data preprocess automatically (keras-hub `Task` behaviour).

    Args:
      backbone: a `BertMtlBackbone`.
      preprocessor: a `BertMtlPreprocessor` (or None); saved with the model.
      num_price_ranges: K, classes of the price_range head.
      head_hidden_dim: width of each task tower.
      dropout: dropout inside the towers.
      zoo_config: the resolved zoo config the model was built from (kept for reference).
    """

    backbone_cls = BertMtlBackbone
    preprocessor_cls = BertMtlPreprocessor

    def __init__(self, backbone, preprocessor=None, num_price_ranges=5, head_hidden_dim=128,
                 dropout=0.1, zoo_config=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        init = keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)
        self.towers = {}
        for task, units in (("click", 1), ("conversion", 1),
                            ("price_range", int(num_price_ranges)), ("demand", 1)):
            self.towers[task] = (
                keras.layers.Dense(int(head_hidden_dim), activation="gelu",
                                   kernel_initializer=init, name=f"{task}_hidden"),
                keras.layers.Dropout(float(dropout), name=f"{task}_dropout"),
                keras.layers.Dense(units, kernel_initializer=init, dtype="float32",
                                   name=f"{task}_logits"))

        # === Functional model ===
        inputs = backbone.input
        encoded = backbone(inputs)
        features = ops.concatenate(
            [encoded["cls_output"], encoded["candidate_output"]], axis=-1)

        def tower(task):
            hidden, drop, logits = self.towers[task]
            return ops.cast(logits(drop(hidden(features))), "float32")

        click = ops.sigmoid(ops.squeeze(tower("click"), -1))
        conversion = ops.sigmoid(ops.squeeze(tower("conversion"), -1))
        price_range = ops.softmax(tower("price_range"), axis=-1)
        log_rate = LOG_RATE_BOUND * ops.tanh(ops.squeeze(tower("demand"), -1) / LOG_RATE_BOUND)
        outputs = {
            "click": click,
            "purchase": click * conversion,  # ESMM: p(purchase) = p(click) p(purchase|click)
            "price_range": price_range,
            "demand": ops.exp(log_rate),
        }
        kwargs.setdefault("compile", False)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_price_ranges = int(num_price_ranges)
        self.head_hidden_dim = int(head_hidden_dim)
        self.dropout = float(dropout)
        self.zoo_config = dict(zoo_config or {})

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_price_ranges": self.num_price_ranges,
            "head_hidden_dim": self.head_hidden_dim,
            "dropout": self.dropout,
            "zoo_config": dict(self.zoo_config),
        })
        return config

    @property
    def vocabulary(self) -> dict | None:
        """The vocabulary the preprocessor was built with (JSON-serialisable)."""
        return None if self.preprocessor is None else self.preprocessor.vocabulary


def load_vocabulary(vocabulary) -> dict:
    """A vocabulary dict, or the path of a JSON file holding one."""
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
    return vocab_lib.validate(vocabulary)


def build(config: dict, vocabulary=None) -> BertMtl:
    """Builds `BertMtl` from a resolved zoo config (see `zoo.get_config("bert_mtl", ...)`).

    vocabulary: a dict from `fit_vocabulary` (or a JSON path); None = a placeholder of the
      config's nominal sizes (parameter counts, smoke tests; not for training).
    """
    vocab = (vocab_lib.placeholder_vocabulary(config) if vocabulary is None
             else load_vocabulary(vocabulary))
    preprocessor = BertMtlPreprocessor(
        vocab,
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"],
        max_history=config["max_history"],
        max_position=config["max_position"],
        num_oov_indices=config["num_oov_indices"],
        num_gap_buckets=config["num_gap_buckets"],
        name="bert_mtl_preprocessor")
    backbone = BertMtlBackbone(
        preprocessor.vocabulary_sizes(),
        hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        intermediate_dim=config["intermediate_dim"],
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"],
        max_history=config["max_history"],
        cls_id=preprocessor.token_id(vocab_lib.CLS),
        sep_id=preprocessor.token_id(vocab_lib.SEP),
        dropout=config["dropout"],
        layer_norm_epsilon=config["layer_norm_epsilon"],
        initializer_range=config["initializer_range"],
        name="bert_mtl_backbone")
    return BertMtl(backbone, preprocessor,
                   num_price_ranges=config["num_price_ranges"],
                   head_hidden_dim=config["head_hidden_dim"],
                   dropout=config["dropout"],
                   zoo_config=config,
                   name="bert_mtl")


def raw_inputs(history_length=None) -> dict:
    """`keras.Input`s of the raw features (history columns of any, or a fixed, length)."""
    return {name: keras.Input(shape=() if rank == 1 else (history_length,), dtype=dtype,
                              name=name)
            for name, (dtype, rank) in RAW_FEATURES.items()}


def end_to_end(model: BertMtl, history_length=None) -> keras.Model:
    """A functional Keras model: raw feature dict -> outputs (preprocessor + model).

    For prediction and serving; its inputs are exactly `zoo.models.features.RAW_FEATURES`.
    """
    if model.preprocessor is None:
        raise ValueError("end_to_end needs a model with a preprocessor")
    inputs = raw_inputs(history_length)
    outputs = model(model.preprocessor(inputs))
    return keras.Model(inputs, {k: outputs[k] for k in TASKS}, name=f"{model.name}_end_to_end")
