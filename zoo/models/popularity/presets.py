"""Presets of `popularity`: plain dicts of config (JSON-serialisable).

The family has no weights to learn, so presets differ only in vocabulary caps. Smoothing
strengths are pseudo-counts: how much evidence it takes to move a statistic away from
its prior (the global rate, the category's global share, the label prior).
"""

_COMMON = {
    # Vocabularies (caps for `fit_vocabulary`; ids beyond them get the global statistics).
    "item_vocab_size": 20000,      # candidate items with their own rates, most shown first
    "category_vocab_size": 500,
    "num_oov_indices": 4,          # hashed OOV buckets of every id lookup
    "max_history": 50,             # first (= most recent) history columns used
    "max_position": 64,            # impression ranks >= this share the last position bucket
    "num_price_ranges": 5,         # K, classes of price_range (the label's buckets)
    # click / purchase: position rate x item factor x user-category lift.
    "position_smoothing": 50.0,    # impressions; each rank shrinks toward the rank above
    "item_smoothing": 20.0,        # pseudo-events (clicks / purchases) at the expected
                                   # rate: 20 / rate impressions, ~120 for clicks at 17%
    "affinity_smoothing": 20.0,    # history-event weight at the category's global share
    # History event weights (user-category affinity and price histogram).
    "click_weight": 1.0,
    "cart_weight": 2.0,
    "purchase_weight": 3.0,
    # price_range: user price histogram blended with the label prior.
    "price_smoothing": 10.0,       # event weight given to the prior
    "candidate_price_weight": 3.0,  # the impressed item's own price as one more event
    "price_fit": True,             # both of the above fitted on the training labels
    # demand: a + b * item_purchases_7d + c * item mean demand.
    "demand_smoothing": 20.0,      # impressions at the global mean added to every item
    "demand_fit_fraction": 0.3,    # latest share of training examples the coefficients fit
}

PRESETS = {
    "tiny": {**_COMMON, "item_vocab_size": 2000, "category_vocab_size": 100,
             "num_oov_indices": 2},
    "small": dict(_COMMON),
}
