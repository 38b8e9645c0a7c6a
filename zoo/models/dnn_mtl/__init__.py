"""`dnn_mtl`: the classic deep recommender baseline (no transformer).

Embeddings of the query tokens, the behaviour events and the candidate's fields, masked
mean pooling, an MLP (`DnnMtlBackbone`), under the shared multi-task ranker
(`zoo.models.ranker`: preprocessor, vocabulary, structures, towers, ESMM), so `dnn_mtl`
and `bert_mtl` differ only in the encoder. `zoo.registry` reads `SPECS`.
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

from zoo.lazy import module_getattr
from zoo.models.dnn_mtl.presets import PRESETS

NAME = "dnn_mtl"
DESCRIPTION = ("DNN baseline: mean-pooled query / history embeddings + candidate fields -> MLP;"
               " the shared ranker's preprocessing and heads")

__getattr__ = module_getattr(__name__, {
    "DnnMtlBackbone": "zoo.models.dnn_mtl.backbone",
    "PooledFieldEmbedding": "zoo.models.dnn_mtl.backbone",
    "build": "zoo.models.dnn_mtl.model",
    "end_to_end": "zoo.models.ranker.task",
})

SPECS = (dict(name=NAME, presets=PRESETS, description=DESCRIPTION,
              builder="zoo.models.dnn_mtl.model:build", build_args=("vocabulary",),
              fit_vocabulary="zoo.models.ranker.vocabulary:fit_vocabulary",
              grow_vocabulary="zoo.models.ranker.vocabulary:grow_vocabulary",
              table_rows="zoo.models.ranker.vocabulary:table_rows",
              keras_module="zoo.models.dnn_mtl.model", calibratable=True),)
