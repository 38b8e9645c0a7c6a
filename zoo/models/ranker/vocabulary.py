"""Vocabularies of the shared ranker (`bert_mtl`, `dnn_mtl`), learned from TRAINING
examples only.

The vocabulary is a JSON-serialisable dict (the trainer saves it next to the run; the
model also carries it inside its `.keras` file, in the preprocessor's config):

    {"format": "bert_mtl.vocabulary/1",
     "wordpiece": [...],          # [PAD] first, then [CLS] [SEP] [UNK] [MASK] (learned), or
                                  # a pretrained text encoder's vocabulary (text_encoder)
     "item_id": [...], "category": [...], "brand": [...],   # most frequent first
     "price_edges": [...],        # increasing inner edges of the price feature buckets
     "item_titles": [...],        # optional: title of each item_id ("" = not seen as a
                                  # candidate), for history_titles
     "user_id": [...],            # optional (user_vocab_size > 0): most active users first
     "category_log_price": [...], # optional: mean log price of each category's distinct
     "log_price_mean": float,     # training items, and of all of them (unknown categories):
                                  # the level the in-graph relative prices are taken against
     "context": {"names": [...], "mean": [...], "std": [...], "edges": [[...], ...]},
                                  # optional (context_features): statistics of log1p of
                                  # each context feature over its defined training values;
                                  # edges: its quantiles (CONTEXT_BINS + 1 per feature), the
                                  # bins of the piecewise-linear encoding
     "last_seen": {"item_id": [...], ...}}
                                  # optional: per id of LAST_SEEN_KEYS, the timestamp of
                                  # the newest training example that held it (candidate,
                                  # history or user); what a warm start's eviction reads.
                                  # Not part of the model: `validate` leaves it out.
"""

from __future__ import annotations

import hashlib

import numpy as np

from zoo.models.strings import most_frequent  # noqa: F401  (the family's API)

FORMAT = "bert_mtl.vocabulary/1"
RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
PAD, CLS, SEP, UNK, MASK = RESERVED_TOKENS
KEYS = ("wordpiece", "item_id", "category", "brand", "price_edges")
# Id lists a warm start may evict from (wordpieces stay: text does not go out of stock),
# and the example features that hold each one's ids.
LAST_SEEN_KEYS = {"item_id": ("item_id", "hist_item_id"),
                  "category": ("item_category", "hist_category"),
                  "brand": ("item_brand", "hist_brand"), "user_id": ("user_id",)}
# The models' id tables (embedding layer name -> vocabulary key): row i of such a table is
# id i - TABLE_OFFSET[key] of the key's list (the rows before: padding and OOV buckets).
ID_TABLES = {"word_embedding": "wordpiece", "item_embedding": "item_id",
             "category_embedding": "category", "brand_embedding": "brand",
             "user_embedding": "user_id"}
SECONDS_PER_DAY = 86_400


def _user_vocab_size(config) -> int:
    size = int(_config(config).get("user_vocab_size", 0))
    if size < 0:
        raise ValueError(f"user_vocab_size must be >= 0 (0: no user embedding), got {size}")
    return size


def _config(config) -> dict:
    if not isinstance(config, dict):
        raise TypeError(f"expected a resolved config dict (zoo.get_config(...)), got "
                        f"{type(config).__name__}")
    return dict(config)


def _as_str(values) -> np.ndarray:
    """A flat numpy unicode array from str / bytes / object arrays (tf.string via numpy)."""
    arr = np.asarray(values).ravel()
    if arr.size == 0:
        return np.zeros((0,), dtype="U1")
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    if arr.dtype.kind == "O":
        if any(isinstance(v, bytes) for v in arr[: min(arr.size, 1000)]):
            try:  # tf.string tensors come back as object arrays of bytes
                return np.char.decode(arr.astype("S"), "utf-8")
            except (UnicodeEncodeError, TypeError, ValueError):
                return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                                 for v in arr], dtype=str)
        return arr.astype(str)
    return arr.astype(str)


def quantile_edges(prices, num_buckets: int) -> list[float]:
    """Strictly increasing inner edges at the quantiles of the positive prices."""
    prices = np.asarray(prices, np.float64).ravel()
    prices = prices[np.isfinite(prices) & (prices > 0)]
    if prices.size == 0:
        return [float(x) for x in np.geomspace(1.0, 1000.0, max(num_buckets - 1, 1))]
    qs = np.arange(1, num_buckets) / num_buckets
    edges = np.unique(np.quantile(prices, qs))
    return [float(x) for x in edges] or [float(prices[0])]


# Vocabularies learnt in this process, by a digest of their texts and settings: the
# experiment's rows and a daily loop's arms fit the same training texts again and again
# (2-3 s each on the small shop, more on a real one). A few entries: texts are large.
_WORDPIECE_MEMO: dict = {}
_WORDPIECE_MEMO_SIZE = 4


def wordpiece_vocabulary(texts, vocabulary_size: int, max_texts: int | None = None,
                         seed: int = 0) -> list[str]:
    """A lowercase WordPiece vocabulary (keras_hub) from the non-empty `texts`."""
    texts = _as_str(texts)
    texts = texts[texts != ""]
    if max_texts is not None and texts.size > max_texts:
        texts = np.random.default_rng(seed).choice(texts, size=max_texts, replace=False)
    if texts.size == 0:
        return _fallback_wordpiece()
    digest = hashlib.sha256(np.ascontiguousarray(texts).view(np.uint8)).hexdigest()
    key = (digest, texts.dtype.str, texts.size, int(vocabulary_size))
    if key in _WORDPIECE_MEMO:
        return list(_WORDPIECE_MEMO[key])
    import keras_hub
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(texts.astype(object)).batch(4096)
    vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
        ds, vocabulary_size=vocabulary_size, lowercase=True, strip_accents=True,
        reserved_tokens=list(RESERVED_TOKENS))
    vocab = [str(t) for t in vocab]
    while len(_WORDPIECE_MEMO) >= _WORDPIECE_MEMO_SIZE:
        _WORDPIECE_MEMO.pop(next(iter(_WORDPIECE_MEMO)))
    _WORDPIECE_MEMO[key] = tuple(vocab)
    return vocab


def _fallback_wordpiece() -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    return list(RESERVED_TOKENS) + chars + ["##" + c for c in chars]


def fit_vocabulary(features: dict, config) -> dict:
    """Learns the vocabulary from a dict of TRAINING feature arrays.

    features: numpy arrays keyed like the raw features (`query`, `item_title`, `item_id`,
      `item_category`, `item_brand`, `item_price`, `hist_item_id`, `hist_category`,
      `hist_brand`, `hist_price`, `user_id`); str, bytes or object arrays. Missing keys are
      skipped.
    config: a `bert_mtl` config dict (e.g. `zoo.get_config("bert_mtl", "small")`) or a
      preset name. Uses the `*_vocab_size` caps, `num_price_buckets`, `wordpiece_max_texts`.
    """
    config = _config(config)

    def cols(*names):
        return [features[n] for n in names if n in features]

    if config.get("text_encoder", "wordpiece") == "minilm":  # the pretrained tower's own
        from zoo.models.ranker import text_encoders
        wordpiece = text_encoders.minilm_vocabulary()
    else:
        texts = np.concatenate([_as_str(a) for a in cols("query", "item_title")] or
                               [np.zeros(0, "U1")])
        wordpiece = wordpiece_vocabulary(texts, int(config["wordpiece_vocab_size"]),
                                         config.get("wordpiece_max_texts"))
    prices = [np.asarray(a, np.float64).ravel() for a in cols("item_price", "hist_price")]
    items = most_frequent(*cols("item_id", "hist_item_id"),
                          max_size=int(config["item_vocab_size"]))
    out = {
        "format": FORMAT,
        "wordpiece": wordpiece,
        "item_id": items,
        "item_titles": item_titles(items, features),
        "category": most_frequent(*cols("item_category", "hist_category"),
                                  max_size=int(config["category_vocab_size"])),
        "brand": most_frequent(*cols("item_brand", "hist_brand"),
                               max_size=int(config["brand_vocab_size"])),
        "price_edges": quantile_edges(np.concatenate(prices) if prices else [],
                                      int(config["num_price_buckets"])),
    }
    users = most_frequent(*cols("user_id"), max_size=_user_vocab_size(config))
    if users:  # none: no user_id column, or user_vocab_size 0
        out["user_id"] = users
    if config.get("context_features"):
        out["context"] = context_statistics(features)
    out.update(category_price_levels(out["category"], features))
    if "timestamp" in features:
        out["last_seen"] = last_seen(out, features)
    return out


def last_seen(vocabulary: dict, features: dict) -> dict:
    """{key: per id of vocabulary[key], the timestamp of the newest example of `features`
    that holds it} for the LAST_SEEN_KEYS the vocabulary has; -1 for an id none holds."""
    from zoo.models.strings import lookup

    times = np.asarray(features["timestamp"], np.int64).ravel()
    out = {}
    for key, columns in LAST_SEEN_KEYS.items():
        if key not in vocabulary:
            continue
        newest = np.full(len(vocabulary[key]), -1, np.int64)
        for column in columns:
            if column not in features:
                continue
            values = np.asarray(features[column])
            index = lookup(values, vocabulary[key])
            at = np.broadcast_to(times.reshape((-1,) + (1,) * (values.ndim - 1)),
                                 values.shape)
            known = index >= 0
            np.maximum.at(newest, index[known], at[known])
        out[key] = [int(t) for t in newest]
    return out


def _last_seen_of(vocabulary: dict, key: str) -> dict:
    """id -> last-seen timestamp of a raw vocabulary (ids without a record: absent)."""
    seen = (vocabulary.get("last_seen") or {}).get(key)
    if seen is None:
        return {}
    if len(seen) != len(vocabulary[key]):
        raise ValueError(f"vocabulary['last_seen'][{key!r}] holds {len(seen)} values for "
                         f"{len(vocabulary[key])} ids; expected one per id")
    return dict(zip(vocabulary[key], (int(t) for t in seen)))


def category_price_levels(categories: list, features: dict) -> dict:
    """{"category_log_price": mean log price of each category's distinct training items (the
    candidates' and the histories'), "log_price_mean": over all of them}. A category without
    a priced item gets the overall mean; no priced item at all gives 0 everywhere."""
    ids, cats, prices = [], [], []
    for id_key, cat_key, price_key in (("item_id", "item_category", "item_price"),
                                       ("hist_item_id", "hist_category", "hist_price")):
        if all(k in features for k in (id_key, cat_key, price_key)):
            ids.append(_as_str(features[id_key]))
            cats.append(_as_str(features[cat_key]))
            prices.append(np.asarray(features[price_key], np.float64).ravel())
    if ids:
        ids, cats, prices = (np.concatenate(a) for a in (ids, cats, prices))
        keep = (ids != "") & np.isfinite(prices) & (prices > 0)
        ids, cats, prices = ids[keep], cats[keep], prices[keep]
        _, first = np.unique(ids, return_index=True)
        cats, logs = cats[first], np.log(prices[first])
    else:
        cats, logs = np.zeros(0, str), np.zeros(0)
    overall = float(logs.mean()) if logs.size else 0.0
    levels = []
    for category in categories:
        mine = logs[cats == category]
        levels.append(float(mine.mean()) if mine.size else overall)
    return {"category_log_price": levels, "log_price_mean": overall}


# Bins of the piecewise-linear encoding of each context feature (quantiles of training).
CONTEXT_BINS = 8


def default_context_edges() -> list[float]:
    """Bin edges on the log1p scale when no training values are known (placeholders)."""
    return [float(x) for x in np.linspace(0.0, 8.0, CONTEXT_BINS + 1)]


def context_statistics(features: dict) -> dict:
    """Per context feature, over its defined (>= 0) training values of log1p(value): mean and
    standard deviation (they standardise it) and CONTEXT_BINS + 1 quantile edges (the bins
    of its piecewise-linear encoding). A feature absent from `features` or never defined
    gets (0, 1) and `default_context_edges()`."""
    from zoo.models.features import CONTEXT_FEATURES

    mean, std, edges = [], [], []
    for name in CONTEXT_FEATURES:
        values = np.asarray(features.get(name, []), np.float64).ravel()
        values = np.log1p(values[np.isfinite(values) & (values >= 0)])
        mean.append(float(values.mean()) if values.size else 0.0)
        std.append(float(max(values.std(), 1e-3)) if values.size > 1 else 1.0)
        edges.append([float(x) for x in np.quantile(
            values, np.linspace(0.0, 1.0, CONTEXT_BINS + 1))] if values.size
            else default_context_edges())
    return {"names": list(CONTEXT_FEATURES), "mean": mean, "std": std, "edges": edges}


def with_users_of(config, vocabulary: dict) -> dict:
    """The vocabulary with the users the config asks for: none when user_vocab_size is 0
    (whatever the vocabulary holds, e.g. a pre-trained encoder's), else at most that many
    of its most active ones. A vocabulary without users (fitted before users existed, or on
    logs without user ids) gives a model without a user embedding, said in the log."""
    size = _user_vocab_size(config)
    users = vocabulary.get("user_id")
    if not users:
        if size > 0:
            from absl import logging
            logging.warning("user_vocab_size=%d but the vocabulary holds no users: the model "
                            "has no user embedding", size)
        return vocabulary
    out = {k: v for k, v in vocabulary.items() if k != "user_id"}
    if size > 0:
        out["user_id"] = list(users[:size])
    return out


def placeholder_vocabulary(config) -> dict:
    """A vocabulary of the config's nominal sizes (for parameter counts and smoke tests)."""
    config = _config(config)
    if config.get("text_encoder", "wordpiece") == "minilm":
        from zoo.models.ranker import text_encoders
        wp = text_encoders.minilm_vocabulary()
    else:
        wp = _fallback_wordpiece()
        wp += [f"tok{i}" for i in range(max(int(config["wordpiece_vocab_size"]) - len(wp), 0))]
    out = {
        "format": FORMAT,
        "wordpiece": wp,
        "item_id": [f"item_{i}" for i in range(int(config["item_vocab_size"]))],
        "category": [f"category_{i}" for i in range(int(config["category_vocab_size"]))],
        "brand": [f"brand_{i}" for i in range(int(config["brand_vocab_size"]))],
        "price_edges": [float(x) for x in
                        np.geomspace(1.0, 1000.0, max(int(config["num_price_buckets"]) - 1, 1))],
    }
    users = [f"user_{i}" for i in range(_user_vocab_size(config))]
    if users:
        out["user_id"] = users
    return out


def validate(vocabulary: dict) -> dict:
    """Checks a vocabulary dict (e.g. read back from JSON); returns it with lists/floats."""
    missing = [k for k in KEYS if k not in vocabulary]
    if missing:
        raise ValueError(f"bert_mtl vocabulary lacks key(s) {missing}; expected {list(KEYS)}")
    wp = [str(t) for t in vocabulary["wordpiece"]]
    # [PAD] must be id 0 (the padding value); the other reserved tokens anywhere (a
    # pretrained vocabulary such as MiniLM's has them at 100..103).
    if not wp or wp[0] != PAD or not set(RESERVED_TOKENS) <= set(wp):
        raise ValueError(f"the wordpiece vocabulary must start with {PAD} and hold "
                         f"{list(RESERVED_TOKENS)}")
    out = {"format": vocabulary.get("format", FORMAT), "wordpiece": wp}
    optional = tuple(k for k in ("user_id",) if k in vocabulary)  # absent: no user embedding
    for key in ("item_id", "category", "brand", *optional):
        values = [str(v) for v in vocabulary[key]]
        if "" in values or len(set(values)) != len(values):
            raise ValueError(f"vocabulary[{key!r}] must hold distinct non-empty strings")
        out[key] = values
    edges = [float(x) for x in vocabulary["price_edges"]]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("vocabulary['price_edges'] must be non-empty and strictly increasing")
    out["price_edges"] = edges
    if "context" in vocabulary:
        from zoo.models.features import CONTEXT_FEATURES

        context = vocabulary["context"]
        if list(context.get("names", [])) != list(CONTEXT_FEATURES) or any(
                len(context.get(k, [])) != len(CONTEXT_FEATURES) for k in ("mean", "std")):
            raise ValueError("vocabulary['context'] must hold names (equal to "
                             "zoo.models.features.CONTEXT_FEATURES), mean and std of one "
                             "value per name; refit the vocabulary on the current examples")
        if any(not float(s) > 0 for s in context["std"]):
            raise ValueError("vocabulary['context']['std'] must be > 0")
        out["context"] = {"names": list(context["names"]),
                          "mean": [float(m) for m in context["mean"]],
                          "std": [float(s) for s in context["std"]]}
        if "edges" in context:  # absent in vocabularies fitted before the encoding
            edges = [[float(x) for x in e] for e in context["edges"]]
            if len(edges) != len(CONTEXT_FEATURES) or any(
                    len(e) != CONTEXT_BINS + 1 or any(b < a for a, b in zip(e, e[1:]))
                    for e in edges):
                raise ValueError(f"vocabulary['context']['edges'] must hold "
                                 f"{CONTEXT_BINS + 1} non-decreasing edges per feature")
            out["context"]["edges"] = edges
    if "category_log_price" in vocabulary:
        levels = [float(x) for x in vocabulary["category_log_price"]]
        if len(levels) != len(out["category"]) or not all(np.isfinite(levels)):
            raise ValueError(f"vocabulary['category_log_price'] must hold one finite value "
                             f"per category ({len(out['category'])}), got {len(levels)}")
        out["category_log_price"] = levels
        out["log_price_mean"] = float(vocabulary.get("log_price_mean", 0.0))
    if "item_titles" in vocabulary:
        titles = [str(t) for t in vocabulary["item_titles"]]
        if len(titles) != len(out["item_id"]):
            raise ValueError(f"vocabulary['item_titles'] holds {len(titles)} titles for "
                             f"{len(out['item_id'])} item ids; expected one per item id")
        out["item_titles"] = titles
    return out


def item_titles(item_ids: list, features: dict) -> list[str]:
    """The title of each of `item_ids` as a training candidate ("" when never one)."""
    if "item_id" not in features or "item_title" not in features:
        return [""] * len(item_ids)
    ids, titles = _as_str(features["item_id"]), _as_str(features["item_title"])
    ids, titles = ids[titles != ""], titles[titles != ""]
    _, first = np.unique(ids, return_index=True)
    known = dict(zip(ids[first].tolist(), titles[first].tolist()))
    return [known.get(i, "") for i in item_ids]


def grow_vocabulary(previous: dict, new: dict, evict_after_days: float = 0.0) -> dict:
    """The vocabulary of a warm-started run: the ids of `previous` keep their order (and,
    through `table_rows`, their rows' trained values), the ids `new` (fitted on the new
    window) adds come after them, in `new`'s order. What the weights were trained against
    stays the previous one's: price edges, the context features' statistics and bins, the
    overall price level; a new category's price level is the new window's.

    evict_after_days > 0: an id of LAST_SEEN_KEYS that no example has held for that many
    days before `new`'s newest example is dropped (it falls into the OOV buckets; its row
    is freed, so tables stop growing with every id a shop ever had). An id without a
    last-seen record (a vocabulary fitted before records existed) counts as last seen at
    the oldest time `new` records for any id. The result records last-seen times (the newer of the two)."""
    if evict_after_days < 0:
        raise ValueError(f"evict_after_days must be >= 0, got {evict_after_days}")
    raw_previous, raw_new = previous, new
    previous, new = validate(previous), validate(new)
    out = dict(previous)
    if previous["wordpiece"] != new["wordpiece"] and new["wordpiece"][0] == PAD:
        known = set(previous["wordpiece"])
        out["wordpiece"] = previous["wordpiece"] + [t for t in new["wordpiece"]
                                                    if t not in known]
    seen_new = {key: _last_seen_of(raw_new, key) for key in LAST_SEEN_KEYS if key in new}
    times = [t for seen in seen_new.values() for t in seen.values() if t >= 0]
    newest, oldest = (max(times), min(times)) if times else (None, None)
    cutoff = (newest - evict_after_days * SECONDS_PER_DAY
              if evict_after_days > 0 and newest is not None else None)
    last = {}
    for key in LAST_SEEN_KEYS:
        if key not in previous:
            continue
        seen_old = _last_seen_of(raw_previous, key)
        when = {i: max(seen_old.get(i, oldest if oldest is not None else -1),
                       seen_new.get(key, {}).get(i, -1)) for i in previous[key]}
        kept = [i for i in previous[key] if cutoff is None or when[i] >= cutoff]
        known = set(previous[key])
        out[key] = kept + [v for v in new.get(key, []) if v not in known]
        for i, t in seen_new.get(key, {}).items():
            when[i] = max(when.get(i, -1), t)
        last[key] = [int(when.get(i, -1)) for i in out[key]]
    if "item_titles" in previous:
        titles = dict(zip(new["item_id"], new.get("item_titles", [""] * len(new["item_id"]))))
        old = dict(zip(previous["item_id"], previous["item_titles"]))
        # A known item keeps its title unless it had none; a new one takes the new window's.
        out["item_titles"] = [old.get(i) or titles.get(i, "") for i in out["item_id"]]
    if "category_log_price" in previous:
        levels = dict(zip(new["category"], new.get("category_log_price", [])))
        old = dict(zip(previous["category"], previous["category_log_price"]))
        out["category_log_price"] = [
            old[c] if c in old else levels.get(c, previous.get("log_price_mean", 0.0))
            for c in out["category"]]
    out = validate(out)
    if newest is not None:
        out["last_seen"] = last
    return out


def table_rows(previous: dict, vocabulary: dict, weight_path: str, rows: int):
    """For a warm start: the parent's row of each of the `rows` rows of the weight at
    `weight_path` when it is an id table (-1: a new id's row, which keeps its fresh
    values), None for any other weight. The rows before the ids (padding, OOV buckets)
    map to themselves: an evicted id's examples fall there, as unknown ids did."""
    parts = weight_path.split("/")
    key = ID_TABLES.get(parts[-2]) if len(parts) >= 2 else None
    if key is None or key not in vocabulary:
        return None
    offset = rows - len(vocabulary[key])
    old = {v: i for i, v in enumerate(previous.get(key, []))}
    return np.array(list(range(offset)) + [offset + old[v] if v in old else -1
                                           for v in vocabulary[key]], np.int64)
