"""`gbdt`: LightGBM on the standard hand-built features: the yardstick the neural families
are measured against.

  * `features.build(tables)`  the documented feature set of every impression, from the
                              event log, strictly before each impression (vectorised)
  * `GbdtModel`               one LightGBM booster per task (click, purchase: binary;
                              price_range: multiclass over the K ranges; demand: Poisson),
                              early-stopped on the latest slice of the training split

It is trained by `python -m trainers.multitask --model gbdt` like any family and evaluated
by the same metrics code, but it is not a Keras model: it is not exported for TF Serving.
`zoo.registry` reads `SPECS`. Importing this package imports neither TensorFlow nor
LightGBM.
"""

from __future__ import annotations

from zoo.lazy import module_getattr
from zoo.models.gbdt.presets import PRESETS

NAME = "gbdt"
DESCRIPTION = ("LightGBM on standard log features (session, user x item/category/brand, item "
               "trailing counts, query-title match, price vs user); not exported to TF Serving")

__getattr__ = module_getattr(__name__, {
    "GbdtModel": "zoo.models.gbdt.model",
    "build": "zoo.models.gbdt.model",
})

SPECS = (dict(name=NAME, presets=PRESETS, description=DESCRIPTION,
              builder="zoo.models.gbdt.model:build", trainer="lightgbm", exportable=False),)
