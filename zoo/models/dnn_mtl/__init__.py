"""`dnn_mtl`: the classic deep recommender baseline (no transformer).

Embeddings of the query tokens, the behaviour events and the candidate's fields, masked
mean pooling, an MLP (`DnnMtlBackbone`); bert_mtl's preprocessor, vocabulary and task
(`BertMtl`: structures, towers, ESMM) are reused unchanged, so the two families differ only
in the encoder.

`register(registry)` is this family's ONE registration point (called by `zoo.registry`).
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

import importlib

from zoo.models.dnn_mtl.presets import PRESETS

NAME = "dnn_mtl"
DESCRIPTION = ("DNN baseline: mean-pooled query / history embeddings + candidate fields -> MLP;"
               " bert_mtl's preprocessing and heads")

_LAZY = {
    "DnnMtlBackbone": "zoo.models.dnn_mtl.backbone",
    "PooledFieldEmbedding": "zoo.models.dnn_mtl.backbone",
    "build": "zoo.models.dnn_mtl.task",
    "end_to_end": "zoo.models.bert_mtl.task",
}

__all__ = ["NAME", "DESCRIPTION", "PRESETS", "register", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(config, vocabulary=None):
    from zoo.models.dnn_mtl.task import build

    return build(config, vocabulary=vocabulary)


def _fit_vocabulary(features, config):
    from zoo.models.bert_mtl.vocabulary import fit_vocabulary

    return fit_vocabulary(features, config)


def register(registry) -> None:
    """Registers `dnn_mtl` with `registry` (a `zoo.registry.Registry`)."""
    from zoo.registry import ModelSpec

    registry.register(ModelSpec(
        name=NAME,
        builder=_build,
        presets=PRESETS,
        description=DESCRIPTION,
        default_preset="small",
        build_args=("vocabulary",),
        fit_vocabulary=_fit_vocabulary,
        keras_module="zoo.models.dnn_mtl.task",
    ))
