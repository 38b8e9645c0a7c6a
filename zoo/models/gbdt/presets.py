"""Presets of `gbdt`: LightGBM parameters (plain dicts).

`small` is what a practitioner would start from and tune lightly: 63 leaves, learning rate
0.05, up to 2,000 rounds stopped when the latest tenth of the training impressions (by time)
has not improved for 50 rounds; the refit on all training impressions uses that number of
rounds. `tiny` is for tests.
"""

_COMMON = {
    "num_leaves": 63,
    "learning_rate": 0.05,
    "min_child_samples": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_rounds": 2000,
    "early_stopping_rounds": 50,
    "validation_fraction": 0.1,  # latest share of training impressions, by time
    "num_price_ranges": 5,       # K, classes of price_range (the label's ranges)
    "num_threads": 2,
    "seed": 42,
}

PRESETS = {
    "tiny": {**_COMMON, "num_leaves": 15, "max_rounds": 200, "early_stopping_rounds": 20,
             "min_child_samples": 20},
    "small": dict(_COMMON),
}
