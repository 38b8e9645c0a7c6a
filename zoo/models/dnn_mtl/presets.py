"""Presets of `dnn_mtl`: plain dicts of config (JSON-serialisable).

The preprocessing keys are bert_mtl's (same preprocessor, same vocabularies); the rest
sizes the embeddings, the MLP and the heads.
"""

from zoo.models.bert_mtl.presets import PRESETS as _BERT_PRESETS

# Keys read by `fit_vocabulary` / the preprocessor: shared with bert_mtl's presets.
PREPROCESSING_KEYS = (
    "max_query_tokens", "max_title_tokens", "max_history", "max_position",
    "wordpiece_vocab_size", "item_vocab_size", "category_vocab_size", "brand_vocab_size",
    "user_vocab_size", "num_oov_indices", "num_price_buckets", "num_gap_buckets", "wordpiece_max_texts")


def _preprocessing(size):
    return {k: _BERT_PRESETS[size][k] for k in PREPROCESSING_KEYS}


_MODEL = {
    "initializer_range": 0.02,
    "num_price_ranges": 5,
    "structure": "shared_bottom",  # or "mmoe" / "ple" (then num_experts, ... apply)
    "purchase_head": "esmm",       # or "naive"
}

PRESETS = {
    "tiny": {**_preprocessing("tiny"), **_MODEL, "embedding_dim": 16,
             "hidden_dims": [64, 32], "dropout": 0.1, "head_hidden_dim": 32},
    "small": {**_preprocessing("small"), **_MODEL, "embedding_dim": 32,
              "hidden_dims": [256, 128], "dropout": 0.0, "head_hidden_dim": 64},
}
