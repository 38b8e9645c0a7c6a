"""`two_tower`: a retriever of the whole catalogue (a query tower over the request's query
and the user's behaviour events, an item tower over the item's id, category, brand, price
and title), trained with an in-batch sampled softmax over clicked impressions
(`keras_rs.layers`: logQ correction, accidental hits removed).

keras-hub style split, the preprocessing shared with the rankers (`zoo.models.ranker`):
  * `TwoTowerBackbone`   both towers, numeric only (XLA-compilable)
  * `TwoTowerRetriever`  the task: the loss, `query_embeddings` / `item_embeddings`
  * `build(config, vocabulary)`, `fit_vocabulary(features, config)`

Trained by `python -m trainers.multitask --model two_tower` (the retrieval task of the run
library); used by `python -m trainers.recommend`. Importing this package does not import
TensorFlow.
"""

from __future__ import annotations

from zoo.lazy import module_getattr
from zoo.models.two_tower.presets import PRESETS

NAME = "two_tower"
DESCRIPTION = ("retriever: query+history tower and item tower, in-batch softmax with logQ "
               "correction (keras-rs); top-K of the whole catalogue (trainers.recommend)")

__getattr__ = module_getattr(__name__, {
    "build": "zoo.models.two_tower.model",
    "fit_vocabulary": "zoo.models.two_tower.model",
    "TwoTowerBackbone": "zoo.models.two_tower.model",
    "TwoTowerRetriever": "zoo.models.two_tower.model",
})


def wants_xla(config: dict) -> bool:
    return int(config["hidden_dim"]) >= 128


SPECS = (dict(name=NAME, presets=PRESETS, description=DESCRIPTION,
              builder="zoo.models.two_tower.model:build", build_args=("vocabulary",),
              fit_vocabulary="zoo.models.two_tower.model:fit_vocabulary",
              keras_module="zoo.models.two_tower.model", wants_xla=wants_xla,
              task="retrieval", exportable=False),)
