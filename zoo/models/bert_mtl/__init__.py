"""`bert_mtl`: a BERT-style multi-task model over query, behaviour sequence and candidate.

keras-hub style split:
  * `fit_vocabulary(features, config)` -> JSON-serialisable vocabulary (training data only)
  * `BertMtlPreprocessor`  raw feature dict -> integer tensors (all string ops live here)
  * `BertMtlBackbone`      transformer encoder, numeric only (XLA-compilable)
  * `BertMtl`              the task: backbone + multi-task structure (shared bottom, MMoE,
                           PLE) + click / purchase (ESMM or naive) / price_range / demand
                           heads; carries `.preprocessor`
  * `end_to_end(model)`    functional Keras model raw features -> outputs (serving)

`register(registry)` is this family's ONE registration point (called by `zoo.registry`):
`bert_mtl` and the structure variants `shared_bottom`, `mmoe`, `ple` (same builder and
vocabulary, presets with the structure keys).
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

import importlib

from zoo.models.bert_mtl.presets import PRESETS, STRUCTURE_PRESETS

NAME = "bert_mtl"
DESCRIPTION = ("BERT-style transformer over [CLS] query [SEP] behaviour events [SEP] candidate;"
               " click, ESMM purchase, price range, Poisson demand heads")
STRUCTURE_DESCRIPTIONS = {
    "shared_bottom": "bert_mtl encoder, towers on one shared bottom (structure keys exposed)",
    "mmoe": "bert_mtl encoder, Multi-gate Mixture-of-Experts: one softmax gate per task",
    "ple": "bert_mtl encoder, Progressive Layered Extraction: task-specific + shared experts",
}

_LAZY = {
    "BertMtl": "zoo.models.bert_mtl.task",
    "build": "zoo.models.bert_mtl.task",
    "end_to_end": "zoo.models.bert_mtl.task",
    "BertMtlBackbone": "zoo.models.bert_mtl.backbone",
    "BertMtlPreprocessor": "zoo.models.bert_mtl.preprocessor",
    "fit_vocabulary": "zoo.models.bert_mtl.vocabulary",
    "placeholder_vocabulary": "zoo.models.bert_mtl.vocabulary",
}

__all__ = ["NAME", "DESCRIPTION", "PRESETS", "STRUCTURE_PRESETS", "register", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(config, vocabulary=None):
    from zoo.models.bert_mtl.task import build

    return build(config, vocabulary=vocabulary)


def _fit_vocabulary(features, config):
    from zoo.models.bert_mtl.vocabulary import fit_vocabulary

    return fit_vocabulary(features, config)


def register(registry) -> None:
    """Registers `bert_mtl`, `shared_bottom`, `mmoe` and `ple` with `registry`."""
    from zoo.registry import ModelSpec

    for name, presets, description in (
            (NAME, PRESETS, DESCRIPTION),
            *((s, STRUCTURE_PRESETS[s], STRUCTURE_DESCRIPTIONS[s]) for s in STRUCTURE_PRESETS)):
        registry.register(ModelSpec(
            name=name,
            builder=_build,
            presets=presets,
            description=description,
            default_preset="small",
            build_args=("vocabulary",),
            fit_vocabulary=_fit_vocabulary,
            keras_module="zoo.models.bert_mtl.task",
        ))
