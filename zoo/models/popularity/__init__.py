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

`zoo.registry` reads `SPECS`.
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

from zoo.lazy import module_getattr
from zoo.models.popularity.presets import PRESETS

NAME = "popularity"
DESCRIPTION = ("Non-neural baseline: item popularity x user-category affinity, user price "
               "histogram, trailing demand")

__getattr__ = module_getattr(__name__, {
    "Popularity": "zoo.models.popularity.task",
    "build": "zoo.models.popularity.task",
    "end_to_end": "zoo.models.popularity.task",
    "PopularityScorer": "zoo.models.popularity.scorer",
    "PopularityPreprocessor": "zoo.models.popularity.preprocessor",
    "fit_vocabulary": "zoo.models.popularity.vocabulary",
    "placeholder_vocabulary": "zoo.models.popularity.vocabulary",
    "reference_outputs": "zoo.models.popularity.vocabulary",
})

SPECS = (dict(name=NAME, presets=PRESETS, description=DESCRIPTION,
              builder="zoo.models.popularity.task:build", build_args=("vocabulary",),
              fit_vocabulary="zoo.models.popularity.vocabulary:fit_vocabulary",
              keras_module="zoo.models.popularity.task"),)
