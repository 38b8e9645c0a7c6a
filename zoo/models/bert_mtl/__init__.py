"""`bert_mtl`: a BERT-style transformer backbone under the shared multi-task ranker.

keras-hub style split (the preprocessor, vocabulary and task are the shared ranker's,
`zoo.models.ranker`):
  * `BertMtlBackbone`      transformer encoder over [CLS] query [SEP] events [SEP] candidate,
                           numeric only (XLA-compilable)
  * `build(config, vocabulary)`  the `MultitaskRanker` on that backbone
  * `pretrainer`           the self-supervised tasks `trainers.pretrain` trains it on

Registered as `bert_mtl` and the structure variants `shared_bottom`, `mmoe`, `ple` (same
builder and vocabulary, presets with the structure keys); `zoo.registry` reads `SPECS`.
Importing this package does not import TensorFlow; the classes load on first access.
"""

from __future__ import annotations

from zoo.lazy import module_getattr
from zoo.models.bert_mtl.presets import PRESETS, STRUCTURE_PRESETS

NAME = "bert_mtl"
DESCRIPTION = ("BERT-style transformer over [CLS] query [SEP] behaviour events [SEP] candidate;"
               " click, ESMM purchase, price range, Poisson demand heads")
STRUCTURE_DESCRIPTIONS = {
    "shared_bottom": "bert_mtl encoder, towers on one shared bottom (structure keys exposed)",
    "mmoe": "bert_mtl encoder, Multi-gate Mixture-of-Experts: one softmax gate per task",
    "ple": "bert_mtl encoder, Progressive Layered Extraction: task-specific + shared experts",
}

__getattr__ = module_getattr(__name__, {
    "build": "zoo.models.bert_mtl.model",
    "BertMtlBackbone": "zoo.models.bert_mtl.backbone",
    "MultitaskRanker": "zoo.models.ranker.task",
    "end_to_end": "zoo.models.ranker.task",
    "RankerPreprocessor": "zoo.models.ranker.preprocessor",
    "placeholder_vocabulary": "zoo.models.ranker.vocabulary",
})


def fit_vocabulary(features: dict, config) -> dict:
    """The shared ranker's vocabulary; `config` a resolved config dict or a preset name."""
    from zoo.models.ranker.vocabulary import fit_vocabulary as fit

    return fit(features, {**PRESETS[config], "preset": config} if isinstance(config, str)
               else config)


def wants_xla(config: dict) -> bool:
    """Measured on 2 CPU cores (BUILD_NOTES.md): XLA makes `small` (width 128) 1.8x faster
    per step and `tiny` (width 32) 3x slower; the width decides."""
    return int(config["hidden_dim"]) >= 128


SPECS = tuple(
    dict(name=name, presets=presets, description=description,
         builder="zoo.models.bert_mtl.model:build", build_args=("vocabulary",),
         fit_vocabulary="zoo.models.ranker.vocabulary:fit_vocabulary",
         grow_vocabulary="zoo.models.ranker.vocabulary:grow_vocabulary",
         table_rows="zoo.models.ranker.vocabulary:table_rows",
         keras_module="zoo.models.bert_mtl.model", wants_xla=wants_xla, pretrainable=True,
         calibratable=True)
    for name, presets, description in (
        (NAME, PRESETS, DESCRIPTION),
        *((s, STRUCTURE_PRESETS[s], STRUCTURE_DESCRIPTIONS[s]) for s in STRUCTURE_PRESETS)))
