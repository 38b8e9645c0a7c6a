"""Preprocessing presets of the shared ranker: what `fit_vocabulary` and `RankerPreprocessor`
read (sequence lengths, vocabulary caps, buckets), by size. The neural families (`bert_mtl`,
`dnn_mtl`) start their presets from these, so two families of one size read the same
inputs and can share a vocabulary.
"""

_DEFAULTS = {
    # Sequence lengths.
    "max_query_tokens": 12,      # WordPiece tokens of the query (truncated / padded)
    "max_title_tokens": 12,      # WordPiece tokens of the candidate's title; 0 = unused
    "max_history": 30,           # first (= most recent) history columns used
    "max_position": 64,          # impression ranks >= this share the last bucket
    # Vocabularies (caps for `fit_vocabulary`, nominal sizes of the placeholder one).
    "wordpiece_vocab_size": 8000,
    "item_vocab_size": 20000,
    "category_vocab_size": 500,
    "brand_vocab_size": 2000,
    # Users with an embedding of their own (most active first; new users share the OOV
    # buckets; 0 = no user embedding: the model knows the user only by the behaviour
    # sequence). Measured on the default data (BUILD_NOTES.md): +0.011 click and +0.017
    # purchase AUC.
    "user_vocab_size": 20000,
    "num_oov_indices": 4,        # hashed OOV buckets of every id lookup
    "num_price_buckets": 16,     # price feature buckets (quantile edges of training prices)
    "num_gap_buckets": 24,       # log-scale buckets of the time gap, 1 s .. 1 year
    "wordpiece_max_texts": 200000,  # texts sampled to learn the WordPiece vocabulary
    # The examples' context features and the in-graph match features (`RankerPreprocessor`'s
    # dense_features): what the gradient-boosted yardstick sees. Measured in BUILD_NOTES.md.
    "context_features": True,
    # ... each also encoded piecewise-linearly over its training quantiles (measured).
    "context_bins": True,
    # ... and the candidate's price against the history's, each taken relative to its
    # category's level (`RankerPreprocessor`'s RELATIVE_PRICE_FEATURES; measured).
    "relative_price": True,
}

PREPROCESSING = {
    "tiny": {
        **_DEFAULTS,
        "max_query_tokens": 8,
        "max_title_tokens": 8,
        "max_history": 16,
        "max_position": 32,
        "wordpiece_vocab_size": 1000,
        "item_vocab_size": 2000,
        "category_vocab_size": 100,
        "brand_vocab_size": 200,
        "user_vocab_size": 1000,
        "num_oov_indices": 2,
        "num_price_buckets": 8,
        "num_gap_buckets": 16,
    },
    # History 20 (from 30): measured on the default data, 1 epoch, the same eval metrics
    # within noise at a shorter step (BUILD_NOTES.md).
    "small": {**_DEFAULTS, "max_history": 20},
    "base": {
        **_DEFAULTS,
        "max_query_tokens": 32,
        "max_title_tokens": 32,
        "max_history": 50,
        "max_position": 128,
        "wordpiece_vocab_size": 30522,
        "item_vocab_size": 100000,
        "category_vocab_size": 2000,
        "brand_vocab_size": 10000,
        "user_vocab_size": 100000,
        "num_oov_indices": 16,
        "num_price_buckets": 32,
        "num_gap_buckets": 32,
        "wordpiece_max_texts": 1000000,
    },
}
