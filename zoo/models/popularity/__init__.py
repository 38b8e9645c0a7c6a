"""`popularity`: the non-neural baseline (no trainable weights; see `task` for formulas).

  * `fit_vocabulary(features, config)` -> JSON-serialisable statistics of TRAINING examples
    (item click / purchase factors, position rates, category shares, the price-range
    prior and edges, demand coefficients)
  * `PopularityPreprocessor`  raw feature dict -> indices and numbers (all string ops)
  * `PopularityScorer`        the statistics as non-trainable weights; the formulas
  * `Popularity`              the task: click and purchase from item popularity x
                              user-category affinity, price_range from the user's price
                              histogram, demand from the item's trailing purchases
  * `end_to_end(model)`       functional Keras model raw features -> outputs

`register(registry)` is this family's ONE registration point (called by `zoo.registry`).
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

import importlib

from zoo.models.popularity.presets import PRESETS

NAME = "popularity"
DESCRIPTION = ("Non-neural baseline: item popularity x user-category affinity, user price "
               "histogram, trailing demand")

_LAZY = {
    "Popularity": "zoo.models.popularity.task",
    "build": "zoo.models.popularity.task",
    "end_to_end": "zoo.models.popularity.task",
    "PopularityScorer": "zoo.models.popularity.scorer",
    "PopularityPreprocessor": "zoo.models.popularity.preprocessor",
    "fit_vocabulary": "zoo.models.popularity.vocabulary",
    "placeholder_vocabulary": "zoo.models.popularity.vocabulary",
    "reference_outputs": "zoo.models.popularity.vocabulary",
}

__all__ = ["NAME", "DESCRIPTION", "PRESETS", "register", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(config, vocabulary=None):
    from zoo.models.popularity.task import build

    return build(config, vocabulary=vocabulary)


def _fit_vocabulary(features, config):
    from zoo.models.popularity.vocabulary import fit_vocabulary

    return fit_vocabulary(features, config)


def register(registry) -> None:
    """Registers `popularity` with `registry` (a `zoo.registry.Registry`)."""
    from zoo.registry import ModelSpec

    registry.register(ModelSpec(
        name=NAME,
        builder=_build,
        presets=PRESETS,
        description=DESCRIPTION,
        default_preset="small",
        build_args=("vocabulary",),
        fit_vocabulary=_fit_vocabulary,
        keras_module="zoo.models.popularity.task",
    ))
