"""`MultitaskRanker`: the multi-task model shared by the neural families (any backbone + the
multi-task structure + heads), and `end_to_end`.

`bert_mtl` (transformer) and `dnn_mtl` (pooled MLP) are backbones over this one task, so
what the heads, losses and serving signature are is written once, here.

    model = zoo.get("bert_mtl", "small", vocabulary=vocab)
    ds = raw_ds.map(lambda f: (model.preprocessor(f), labels(f)))     # tf.data, batched
    outputs = model(preprocessed, training=True)   # numeric only: fine under jit_compile
    serving = end_to_end(model)                    # raw feature dict -> outputs
    model.save("m.keras"); keras.models.load_model("m.keras")          # safe mode

Outputs: {"click": [B], "purchase": [B], "price_range": [B, K], "demand": [B]}
  click        p(click)                              sigmoid
  purchase     p(click) * p(purchase | click)        ESMM (purchase_head="esmm"): <= click
               p(purchase | click)                   purchase_head="naive": the classic CVR
                                                     model, trained on clicked impressions
                                                     only (`losses.per_example_losses`)
  price_range  softmax over K price ranges
  demand       Poisson rate = exp(log_rate), log_rate soft-clipped to (-12, 12)

Between the backbone and the 4 towers (click, conversion, price_range, demand) sits the
multi-task `structure`: "shared_bottom" (every tower reads concat(CLS output, candidate
output, candidate embedding)), "mmoe" or "ple" (`zoo.models.multitask_heads`).
"""

from __future__ import annotations

import json
import os

import keras
import keras_hub
from keras import ops

from zoo.models import losses as losses_lib
from zoo.models.features import RAW_FEATURES, TASKS
from zoo.models.ranker import vocabulary as vocab_lib
from zoo.models.ranker.preprocessor import RankerPreprocessor
from zoo.models.layers import PositionBias
from zoo.models.multitask_heads import MMoE, PLE, STRUCTURES, TOWERS

LOG_RATE_BOUND = 12.0
PURCHASE_HEADS = ("esmm", "naive")
# "feature": the impression rank is one more embedding of the candidate; "pal": a shallow
# position tower multiplies the click probability (`layers.PositionBias`) and the backbone
# never sees the rank.
POSITION_BIASES = ("feature", "pal")
# Post-hoc calibration (`calibration`): Platt scaling of the binary outputs' logits
# ([scale, bias]) and a temperature of the price-range softmax; fitted after training on
# held-out impressions (`trainers.core.calibration`), applied inside the graph so that a
# TF Serving export answers calibrated probabilities.
CALIBRATED = ("click", "purchase", "price_range")
_LOGIT_EPS = 1e-7


def _platt(p, scale_bias):
    scale, bias = (float(v) for v in scale_bias)
    p = ops.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return ops.sigmoid(scale * (ops.log(p) - ops.log1p(-p)) + bias)


def check_calibration(calibration) -> dict:
    """The calibration dict, checked: {"click"|"purchase": [scale, bias],
    "price_range": temperature > 0} (any subset)."""
    calibration = dict(calibration or {})
    unknown = sorted(set(calibration) - set(CALIBRATED))
    if unknown:
        raise ValueError(f"calibration: unknown outputs {unknown}; expected some of "
                         f"{list(CALIBRATED)}")
    for task in ("click", "purchase"):
        if task in calibration:
            value = [float(v) for v in calibration[task]]
            if len(value) != 2:
                raise ValueError(f"calibration[{task!r}]: expected [scale, bias], got "
                                 f"{calibration[task]!r}")
            calibration[task] = value
    if "price_range" in calibration:
        temperature = float(calibration["price_range"])
        if not temperature > 0:
            raise ValueError(f"calibration['price_range']: the temperature must be > 0, "
                             f"got {temperature}")
        calibration["price_range"] = temperature
    return calibration


@keras.saving.register_keras_serializable(package="ecom_zoo")
class MultitaskRanker(keras_hub.models.Task):
    """Backbone + multi-task structure + task heads on concat(CLS output, candidate output,
    candidate embedding when the backbone gives one).

    Call it on PREPROCESSED inputs (`model.preprocessor(raw)`); `model.predict` / `fit` /
    `evaluate` on raw data preprocess automatically (keras-hub `Task` behaviour). Any
    backbone whose outputs hold "cls_output" and "candidate_output" fits (`DnnMtlBackbone`).

    Args:
      backbone: a `BertMtlBackbone` (or another backbone with those outputs).
      preprocessor: a `RankerPreprocessor` (or None); saved with the model.
      num_price_ranges: K, classes of the price_range head.
      head_hidden_dim: width of each task tower.
      dropout: dropout inside the towers (and on the experts).
      structure: "shared_bottom", "mmoe" or "ple" (`zoo.models.multitask_heads`).
      num_experts, expert_dim: MMoE experts (expert_dim also sizes the PLE experts).
      num_shared_experts, num_task_experts, num_levels: PLE.
      purchase_head: "esmm" (purchase = click x conversion) or "naive" (purchase =
        conversion, trained on clicks only).
      candidate_embedding_to_heads: the towers also read the backbone's
        "candidate_embedding" (the candidate before the encoder), when it has one.
      position_bias: "feature" or "pal" (see POSITION_BIASES): with "pal",
        click = sigmoid(relevance logit) x sigmoid(position logit); a request with an unknown
        rank (-1) gets the average rank's factor, the same for every candidate.
      position_dropout: "pal" only: share of training ranks hidden (`PositionBias`).
      feature_cross_layers: DCN-v2 cross layers (`keras_rs.layers.FeatureCross`) on the
        towers' shared input, whose output the towers read (0: none).
      feature_cross_projection: low-rank size of each cross layer's weight (0: full rank).
      tower_layers: hidden layers of each task tower (head_hidden_dim wide).
      price_range_label_smoothing: label smoothing of the price-range loss (0: none); the
        next purchase's range is hard to know, and a head fitted to one-hot targets is
        overconfident (BUILD_NOTES.md).
      calibration: post-hoc calibration applied in the graph (`check_calibration`):
        {"click": [scale, bias], "purchase": [scale, bias], "price_range": temperature};
        None or {}: the raw outputs.
      zoo_config: the resolved zoo config the model was built from (kept for reference).
    """

    preprocessor_cls = RankerPreprocessor

    def __init__(self, backbone, preprocessor=None, num_price_ranges=5, head_hidden_dim=128,
                 dropout=0.1, structure="shared_bottom", num_experts=4, expert_dim=128,
                 num_shared_experts=1, num_task_experts=1, num_levels=2,
                 purchase_head="esmm", candidate_embedding_to_heads=True,
                 position_bias="feature", position_dropout=0.1, feature_cross_layers=0,
                 feature_cross_projection=64, price_range_label_smoothing=0.0,
                 tower_layers=1, calibration=None, zoo_config=None, **kwargs):
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if purchase_head not in PURCHASE_HEADS:
            raise ValueError(f"purchase_head must be one of {PURCHASE_HEADS}, "
                             f"got {purchase_head!r}")
        if position_bias not in POSITION_BIASES:
            raise ValueError(f"position_bias must be one of {POSITION_BIASES}, "
                             f"got {position_bias!r}")
        calibration = check_calibration(calibration)
        # === Layers ===
        self.backbone = backbone
        self.position_bias = position_bias
        self.position_tower = (
            PositionBias(backbone.vocabulary_sizes["position"], dropout_rate=position_dropout,
                         name="position_tower") if position_bias == "pal" else None)
        self.preprocessor = preprocessor
        self.candidate_embedding_to_heads = bool(candidate_embedding_to_heads)
        # A new initializer per weight: one unseeded instance gives every weight the same values.
        def init():
            return keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)
        self.feature_cross = []
        if int(feature_cross_layers) > 0:
            import keras_rs

            self.feature_cross = [
                keras_rs.layers.FeatureCross(
                    projection_dim=int(feature_cross_projection) or None, diag_scale=0.0,
                    kernel_initializer=init(), name=f"feature_cross_{i}")
                for i in range(int(feature_cross_layers))]
        if structure == "mmoe":
            self.multitask_heads = MMoE(
                TOWERS, num_experts=num_experts, expert_dim=expert_dim, dropout=dropout,
                initializer_range=backbone.initializer_range, name="multitask_heads")
        elif structure == "ple":
            self.multitask_heads = PLE(
                TOWERS, num_shared_experts=num_shared_experts,
                num_task_experts=num_task_experts, num_levels=num_levels,
                expert_dim=expert_dim, dropout=dropout,
                initializer_range=backbone.initializer_range, name="multitask_heads")
        else:
            self.multitask_heads = None
        self.towers = {}
        for task, units in (("click", 1), ("conversion", 1),
                            ("price_range", int(num_price_ranges)), ("demand", 1)):
            self.towers[task] = (
                keras.layers.Dense(int(head_hidden_dim), activation="gelu",
                                   kernel_initializer=init(), name=f"{task}_hidden"),
                keras.layers.Dropout(float(dropout), name=f"{task}_dropout"),
                keras.layers.Dense(units, kernel_initializer=init(), dtype="float32",
                                   name=f"{task}_logits"),
                [keras.layers.Dense(int(head_hidden_dim), activation="gelu",
                                    kernel_initializer=init(), name=f"{task}_hidden_{i}")
                 for i in range(1, int(tower_layers))])

        # === Functional model ===
        inputs = backbone.input
        features = self._crossed(self._shared_features(backbone(self._backbone_inputs(inputs))))
        if self.multitask_heads is None:
            tower_inputs = {task: features for task in TOWERS}
        else:
            tower_inputs = self.multitask_heads(features)

        def tower(task):
            hidden, drop, logits, deeper = self.towers[task]
            x = drop(hidden(tower_inputs[task]))
            for layer in deeper:
                x = drop(layer(x))
            return ops.cast(logits(x), "float32")

        click = ops.sigmoid(ops.squeeze(tower("click"), -1))
        if self.position_tower is not None:
            click = click * ops.sigmoid(self.position_tower(inputs["position_bucket"]))
        conversion = ops.sigmoid(ops.squeeze(tower("conversion"), -1))
        price_logits = tower("price_range")
        if "price_range" in calibration:
            price_logits = price_logits / calibration["price_range"]
        price_range = ops.softmax(price_logits, axis=-1)
        log_rate = LOG_RATE_BOUND * ops.tanh(ops.squeeze(tower("demand"), -1) / LOG_RATE_BOUND)
        # ESMM: p(purchase) = p(click) p(purchase|click); naive: p(purchase|click) only.
        purchase = click * conversion if purchase_head == "esmm" else conversion
        if "purchase" in calibration:
            purchase = _platt(purchase, calibration["purchase"])
        if "click" in calibration:
            click = _platt(click, calibration["click"])
        outputs = {
            "click": click,
            "purchase": purchase,
            "price_range": price_range,
            "demand": ops.exp(log_rate),
        }
        kwargs.setdefault("compile", False)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_price_ranges = int(num_price_ranges)
        self.head_hidden_dim = int(head_hidden_dim)
        self.dropout = float(dropout)
        self.structure = structure
        self.num_experts = int(num_experts)
        self.expert_dim = int(expert_dim)
        self.num_shared_experts = int(num_shared_experts)
        self.num_task_experts = int(num_task_experts)
        self.num_levels = int(num_levels)
        self.purchase_head = purchase_head
        self.position_dropout = float(position_dropout)
        self.feature_cross_layers = int(feature_cross_layers)
        self.feature_cross_projection = int(feature_cross_projection)
        self.price_range_label_smoothing = float(price_range_label_smoothing)
        self.tower_layers = int(tower_layers)
        self.calibration = calibration
        self.zoo_config = dict(zoo_config or {})

    def _backbone_inputs(self, inputs):
        if self.position_tower is None:
            return inputs
        return {**inputs, "position_bucket": ops.zeros_like(inputs["position_bucket"])}

    def _crossed(self, features):
        """DCN-v2: x_{i+1} = x0 * (W x_i + b) + x_i over the cross layers (none: x0)."""
        crossed = features
        for layer in self.feature_cross:
            crossed = layer(features, crossed)
        return crossed

    def _shared_features(self, encoded):
        parts = [encoded["cls_output"], encoded["candidate_output"]]
        if self.candidate_embedding_to_heads and "candidate_embedding" in encoded:
            parts.append(encoded["candidate_embedding"])
        parts += [encoded[k] for k in ("target_attention_output", "context_output")
                  if k in encoded]
        return ops.concatenate(parts, axis=-1)

    def per_example_losses(self, labels: dict, outputs: dict) -> dict:
        """{task: [B]}: the loss this model trains on. The training loop asks the model
        instead of inspecting it: with purchase_head="naive" the purchase output is
        p(purchase | click), so its loss counts clicked impressions only."""
        return losses_lib.per_example_losses(
            labels, outputs, purchase_on_clicks_only=self.purchase_head == "naive",
            price_range_label_smoothing=self.price_range_label_smoothing)

    def gate_weights(self, inputs, training=False) -> dict:
        """The experts' softmax gates on preprocessed `inputs` ({} for shared_bottom):
        MMoE {tower: [B, E]}, PLE {"level{l}/{tower or shared}": [B, n]}."""
        if self.multitask_heads is None:
            return {}
        features = self._crossed(self._shared_features(
            self.backbone(self._backbone_inputs(inputs), training=training)))
        return self.multitask_heads(features, training=training, return_gates=True)[1]

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_price_ranges": self.num_price_ranges,
            "head_hidden_dim": self.head_hidden_dim,
            "dropout": self.dropout,
            "structure": self.structure,
            "num_experts": self.num_experts,
            "expert_dim": self.expert_dim,
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "num_levels": self.num_levels,
            "purchase_head": self.purchase_head,
            "candidate_embedding_to_heads": self.candidate_embedding_to_heads,
            "position_bias": self.position_bias,
            "position_dropout": self.position_dropout,
            "feature_cross_layers": self.feature_cross_layers,
            "feature_cross_projection": self.feature_cross_projection,
            "price_range_label_smoothing": self.price_range_label_smoothing,
            "tower_layers": self.tower_layers,
            "calibration": dict(self.calibration),
            "zoo_config": dict(self.zoo_config),
        })
        return config

    def with_calibration(self, calibration: dict) -> "MultitaskRanker":
        """A copy of this model (same weights) whose outputs are calibrated as
        `calibration` says (replacing any earlier calibration)."""
        config = self.get_config()
        config["calibration"] = check_calibration(calibration)
        copy = type(self).from_config(config)
        copy.set_weights(self.get_weights())
        return copy

    @property
    def vocabulary(self) -> dict | None:
        """The vocabulary the preprocessor was built with (JSON-serialisable)."""
        return None if self.preprocessor is None else self.preprocessor.vocabulary


# Registered under the family's earlier class name too: model.keras files written before
# the shared ranker left `bert_mtl` still load in safe mode.
keras.saving.get_custom_objects()["ecom_zoo>BertMtl"] = MultitaskRanker


def load_vocabulary(vocabulary) -> dict:
    """A vocabulary dict, or the path of a JSON file holding one."""
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
    return vocab_lib.validate(vocabulary)


# Optional config keys of the multi-task structure and purchase head; a config without
# them (the `bert_mtl` presets) gets `MultitaskRanker`'s defaults: shared bottom, ESMM.
STRUCTURE_KEYS = ("structure", "num_experts", "expert_dim", "num_shared_experts",
                  "num_task_experts", "num_levels", "purchase_head", "position_bias",
                  "position_dropout", "feature_cross_layers", "feature_cross_projection",
                  "price_range_label_smoothing", "tower_layers")


def head_kwargs(config: dict) -> dict:
    """`MultitaskRanker` arguments (heads, structure) of a resolved zoo config."""
    kwargs = {"num_price_ranges": config["num_price_ranges"],
              "head_hidden_dim": config["head_hidden_dim"],
              "dropout": config["dropout"]}
    kwargs.update({k: config[k] for k in STRUCTURE_KEYS if k in config})
    if "candidate_embedding_to_heads" in config:
        kwargs["candidate_embedding_to_heads"] = config["candidate_embedding_to_heads"]
    return kwargs


def build_preprocessor(config: dict, vocabulary=None,
                       name="bert_mtl_preprocessor") -> RankerPreprocessor:
    """The preprocessor of a resolved config; vocabulary as in `build`."""
    vocab = (vocab_lib.placeholder_vocabulary(config) if vocabulary is None
             else load_vocabulary(vocabulary))
    vocab = vocab_lib.with_users_of(config, vocab)
    return RankerPreprocessor(
        vocab,
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"],
        max_history=config["max_history"],
        max_position=config["max_position"],
        num_oov_indices=config["num_oov_indices"],
        num_gap_buckets=config["num_gap_buckets"],
        history_titles=config.get("history_titles", False),
        context_features=config.get("context_features", False),
        context_bins=config.get("context_bins", False),
        relative_price=config.get("relative_price", False),
        name=name)


def raw_inputs(history_length=None) -> dict:
    """`keras.Input`s of the raw features (history columns of any, or a fixed, length)."""
    return {name: keras.Input(shape=() if rank == 1 else (history_length,), dtype=dtype,
                              name=name)
            for name, (dtype, rank) in RAW_FEATURES.items()}


def end_to_end(model: MultitaskRanker, history_length=None) -> keras.Model:
    """A functional Keras model: raw feature dict -> outputs (preprocessor + model).

    For prediction and serving; its inputs are exactly `zoo.models.features.RAW_FEATURES`.
    """
    if model.preprocessor is None:
        raise ValueError("end_to_end needs a model with a preprocessor")
    inputs = raw_inputs(history_length)
    outputs = model(model.preprocessor(inputs))
    return keras.Model(inputs, {k: outputs[k] for k in TASKS}, name=f"{model.name}_end_to_end")
