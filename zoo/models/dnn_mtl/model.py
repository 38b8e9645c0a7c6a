"""`build` of `dnn_mtl`: bert_mtl's preprocessor and task (`MultitaskRanker`) on `DnnMtlBackbone`.

    model = zoo.get("dnn_mtl", "small", vocabulary=vocab)   # vocab: bert_mtl's fit_vocabulary
    serving = end_to_end(model)                              # zoo.models.ranker.task
"""

from __future__ import annotations

from zoo.models.ranker.task import MultitaskRanker, build_preprocessor, end_to_end, head_kwargs
from zoo.models.dnn_mtl.backbone import DnnMtlBackbone

__all__ = ["build", "end_to_end", "DnnMtlBackbone"]


def build(config: dict, vocabulary=None) -> MultitaskRanker:
    """Builds the model from a resolved zoo config (see `zoo.get_config("dnn_mtl", ...)`).

    vocabulary: as for bert_mtl (a `fit_vocabulary` dict or JSON path; None = placeholder).
    """
    preprocessor = build_preprocessor(config, vocabulary, name="dnn_mtl_preprocessor")
    backbone = DnnMtlBackbone(
        preprocessor.vocabulary_sizes(),
        embedding_dim=config["embedding_dim"],
        hidden_dims=config["hidden_dims"],
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"],
        max_history=config["max_history"],
        dropout=config["dropout"],
        initializer_range=config["initializer_range"],
        name="dnn_mtl_backbone")
    return MultitaskRanker(backbone, preprocessor, **head_kwargs(config), zoo_config=config,
                   name="dnn_mtl")
