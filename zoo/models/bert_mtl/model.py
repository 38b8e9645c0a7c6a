"""`build` of `bert_mtl`: the transformer backbone under the shared multi-task ranker."""

from __future__ import annotations

from zoo.models.bert_mtl.backbone import BertMtlBackbone
from zoo.models.ranker import text_encoders, vocabulary as vocab_lib
from zoo.models.ranker.task import MultitaskRanker, build_preprocessor, head_kwargs


def build(config: dict, vocabulary=None) -> MultitaskRanker:
    """The model of a resolved zoo config (`zoo.get_config("bert_mtl", ...)`).

    vocabulary: a dict from `fit_vocabulary` (or a JSON path); None = a placeholder of the
      config's nominal sizes (parameter counts, smoke tests; not for training).
    """
    preprocessor = build_preprocessor(config, vocabulary)
    text_encoder = None
    if text_encoders.check(config.get("text_encoder", "wordpiece")) == "minilm":
        if len(preprocessor.vocabulary["wordpiece"]) != len(text_encoders.minilm_vocabulary()):
            raise ValueError("text_encoder=minilm needs MiniLM's vocabulary: fit the "
                             "vocabulary with the same config (fit_vocabulary)")
        text_encoder = text_encoders.load_minilm(config.get("text_encoder_layers", 6),
                                                 dropout=config["dropout"])
    backbone = BertMtlBackbone(
        preprocessor.vocabulary_sizes(),
        hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        intermediate_dim=config["intermediate_dim"],
        max_query_tokens=config["max_query_tokens"],
        max_title_tokens=config["max_title_tokens"],
        max_history=config["max_history"],
        cls_id=preprocessor.token_id(vocab_lib.CLS),
        sep_id=preprocessor.token_id(vocab_lib.SEP),
        dropout=config["dropout"],
        layer_norm_epsilon=config["layer_norm_epsilon"],
        initializer_range=config["initializer_range"],
        text_encoder=text_encoder,
        text_encoder_trainable=config.get("text_encoder_trainable", False),
        history_titles=config.get("history_titles", False),
        target_attention=config.get("target_attention", False),
        context_embedding_dim=config.get("context_embedding_dim", 0),
        context_embedding_mode=config.get("context_embedding_mode", "replace"),
        name="bert_mtl_backbone")
    return MultitaskRanker(backbone, preprocessor, **head_kwargs(config), zoo_config=config,
                   name="bert_mtl")


