"""Presets of `dnn_mtl`: plain dicts of config (JSON-serialisable).

The preprocessing keys are the shared ranker's (same preprocessor and vocabularies as
bert_mtl); the rest sizes the embeddings, the MLP and the heads.
"""

from zoo.models.ranker.presets import PREPROCESSING

# Keys read by `fit_vocabulary` / the preprocessor: the shared ranker's (the same
# vocabularies as bert_mtl of the same size).
PREPROCESSING_KEYS = tuple(PREPROCESSING["small"])


def _preprocessing(size):
    return dict(PREPROCESSING[size])


_MODEL = {
    "initializer_range": 0.02,
    "num_price_ranges": 5,
    "structure": "shared_bottom",  # or "mmoe" / "ple" (then num_experts, ... apply)
    "purchase_head": "esmm",       # or "naive"
    "position_bias": "pal",        # or "feature" (see bert_mtl's presets)
    "position_dropout": 0.1,
    # DCN-v2 cross layers on the towers' input (keras_rs FeatureCross), low rank.
    "feature_cross_layers": 0,
    "feature_cross_projection": 64,
    # Label smoothing of the price-range loss (calibration; measured in BUILD_NOTES.md).
    "price_range_label_smoothing": 0.1,
    "tower_layers": 1,             # hidden layers per task tower
}

PRESETS = {
    "tiny": {**_preprocessing("tiny"), **_MODEL, "embedding_dim": 16,
             "hidden_dims": [64, 32], "dropout": 0.1, "head_hidden_dim": 32},
    "small": {**_preprocessing("small"), **_MODEL, "embedding_dim": 32,
              "hidden_dims": [256, 128], "dropout": 0.0, "head_hidden_dim": 64},
}
