"""Presets of `two_tower`: the shared ranker's preprocessing preset of the same size (the
retriever reads the same raw strings and ids, through the same `RankerPreprocessor`) plus
the towers and the retrieval loss.

The context features are off: they describe an (impression, candidate) pair that a
retrieval request does not have yet, and the item tower must embed the catalogue once,
without a user."""

from zoo.models.ranker.presets import PREPROCESSING

_COMMON = {
    "hidden_dim": 64,            # width of the embeddings and the query tower's encoder
    "embedding_dim": 64,         # the retrieval space (both towers end here, L2-normalised)
    "num_layers": 1,             # encoder layers over [query] + history events
    "num_heads": 2,
    "intermediate_dim": 128,
    "dropout": 0.1,
    "layer_norm_epsilon": 1e-12,
    "initializer_range": 0.02,
    # Softmax temperature of the in-batch loss and of the scores (cosine / temperature).
    "temperature": 0.05,
    # logQ correction of the in-batch softmax (Yi et al. 2019): each in-batch negative's
    # logit minus the log of its share of the training positives.
    "sampling_correction": True,
    # A purchased impression counts 1 + this in the loss (a click counts 1).
    "purchase_weight": 1.0,
    # Passes over the training positives per --epochs: a retriever learns from the clicked
    # impressions only (about a fifth of the impressions on the default shop), and needs
    # several passes over them (measured in BUILD_NOTES.md).
    "positive_passes": 8,
}

PRESETS = {
    "tiny": {**PREPROCESSING["tiny"], **_COMMON, "context_features": False,
             "context_bins": False, "user_vocab_size": 0, "hidden_dim": 32,
             "embedding_dim": 32, "intermediate_dim": 64, "positive_passes": 2},
    "small": {**PREPROCESSING["small"], **_COMMON, "context_features": False,
              "context_bins": False, "user_vocab_size": 0},
    "base": {**PREPROCESSING["base"], **_COMMON, "context_features": False,
             "context_bins": False, "user_vocab_size": 0, "hidden_dim": 128,
             "embedding_dim": 128, "num_layers": 2, "num_heads": 4, "intermediate_dim": 512},
}
