"""popularity: statistics by hand, the model against them, save / export, the small shop."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import zoo
from zoo.models import popularity
from zoo.models.features import CONTEXT_FEATURES, RAW_FEATURES, TASKS
from zoo.models.popularity import scorer as scorer_lib, task as task_lib, vocabulary as V
from zoo.models.testing import random_raw_batch, split_labels


def _np(outputs):
    return {k: keras.ops.convert_to_numpy(v).astype(np.float64) for k, v in outputs.items()}


def _registry():
    reg = zoo.Registry()
    reg.register_family(popularity.SPECS)
    return reg


# ---- a hand-made training set whose statistics are computed by hand below ----------------
# row: item, category, price, rank, click, purchase, price_range, demand, purchases_7d
ROWS = [
    ("a", "x", 10.0, 0, 1, 1, 1, 2.0, 1.0),
    ("a", "x", 10.0, 1, 0, 0, -1, 0.0, 0.0),
    ("a", "x", 10.0, 0, 1, 0, 0, 1.0, 2.0),
    ("b", "y", 30.0, 1, 0, 0, -1, 0.0, 0.0),
    ("b", "y", 30.0, 0, 1, 0, 1, 3.0, 1.0),
    ("a", "x", 10.0, 2, 0, 0, -1, 1.0, 1.0),
    ("b", "y", 30.0, -1, 0, 0, 1, 0.0, 0.0),
    ("c", "y", 50.0, 0, 0, 0, -1, 0.0, 0.0),
]
# Histories, most recent first: (item, category, event, price).
HISTORIES = [
    [],
    [("a", "x", "click", 10.0), ("b", "y", "purchase", 30.0)],
    [("a", "x", "click", 10.0)],
    [("b", "y", "cart", 30.0), ("b", "y", "click", 30.0), ("a", "x", "click", 10.0)],
    [],
    [("e", "z", "click", 50.0), ("a", "x", "purchase", 10.0)],
    [],
    [("a", "x", "click", 10.0)] * 4,  # longer than max_history = 3
]
HAND_CONFIG = dict(
    popularity.PRESETS["tiny"], item_vocab_size=2, max_history=3, max_position=3,
    num_price_ranges=2, position_smoothing=2.0, item_smoothing=1.0, affinity_smoothing=2.0,
    click_weight=1.0, cart_weight=2.0, purchase_weight=3.0, price_smoothing=2.0,
    candidate_price_weight=1.0, price_fit=False, demand_smoothing=1.0,
    demand_fit_fraction=0.5)


def hand_features(rows=ROWS, histories=HISTORIES, length=4):
    def hist(j, default):
        return np.array([[h[j] for h in events] + [default] * (length - len(events))
                         for events in histories], dtype=object if default == "" else np.float32)

    n = len(rows)
    col = list(zip(*rows))
    return {
        "user_id": np.array(["u0"] * n, dtype=object),
        "query": np.array([""] * n, dtype=object),
        "item_id": np.array(col[0], dtype=object),
        "item_category": np.array(col[1], dtype=object),
        "item_brand": np.array(["brand"] * n, dtype=object),
        "item_title": np.array(["title"] * n, dtype=object),
        "item_price": np.array(col[2], np.float32),
        "position": np.array(col[3], np.int64),
        "item_clicks_7d": np.zeros(n, np.float32),
        "item_purchases_7d": np.array(col[8], np.float32),
        "hist_item_id": hist(0, ""),
        "hist_category": hist(1, ""),
        "hist_brand": hist(0, ""),
        "hist_event": hist(2, ""),
        "hist_price": hist(3, 0.0),
        "hist_gap": np.where(hist(0, "") != "", 60.0, 0.0).astype(np.float32),
        "click": np.array(col[4], np.int64),
        "purchase": np.array(col[5], np.int64),
        "price_range": np.array(col[6], np.int64),
        "price_range_mask": (np.array(col[6]) >= 0).astype(np.float32),
        "demand": np.array(col[7], np.float32),
        "timestamp": np.arange(n, dtype=np.int64),
        # Context features (unused by popularity): undefined.
        **{name: np.full(n, -1.0, np.float32) for name in CONTEXT_FEATURES},
    }


# Position rates (max_position 3: bucket 0 = unknown rank, 1 + min(rank, 2)); each bucket
# shrinks (2 pseudo-impressions) toward the bucket above, buckets 0 and 1 toward the global.
G_CLICK, G_PURCHASE = 3 / 8, 1 / 8
R_CLICK = [(0 + 2 * G_CLICK) / (1 + 2), (3 + 2 * G_CLICK) / (4 + 2)]
R_CLICK += [(0 + 2 * R_CLICK[1]) / (2 + 2)]
R_CLICK += [(0 + 2 * R_CLICK[2]) / (1 + 2)]
R_PURCHASE = [(0 + 2 * G_PURCHASE) / 3, (1 + 2 * G_PURCHASE) / 6]
R_PURCHASE += [2 * R_PURCHASE[1] / 4]
R_PURCHASE += [2 * R_PURCHASE[2] / 3]
BUCKET = [1, 2, 1, 2, 1, 3, 0, 1]
# Items' clicks over expected clicks, 1 pseudo-click: a at buckets 1, 2, 1, 3; b at 2, 1, 0.
F_CLICK = {"a": (2 + 1) / (2 * R_CLICK[1] + R_CLICK[2] + R_CLICK[3] + 1),
           "b": (1 + 1) / (R_CLICK[2] + R_CLICK[1] + R_CLICK[0] + 1), "c": 1.0}
F_PURCHASE = {"a": (1 + 1) / (2 * R_PURCHASE[1] + R_PURCHASE[2] + R_PURCHASE[3] + 1),
              "b": (0 + 1) / (R_PURCHASE[2] + R_PURCHASE[1] + R_PURCHASE[0] + 1), "c": 1.0}
# History weight per category (first 3 events, click 1 / cart 2 / purchase 3): x 9, y 6, z 1;
# add-one shares over 16 + 3.
CATEGORY_PRIOR = [10 / 19, 7 / 19, 2 / 19]
# Lift (a = 2): (W_c + 2 g_c) / ((W + 2) g_c); 1 without history.
LIFT = [1.0, (1 + 20 / 19) / (6 * 10 / 19), (1 + 20 / 19) / (3 * 10 / 19),
        (3 + 14 / 19) / (6 * 7 / 19), 1.0, (3 + 20 / 19) / (6 * 10 / 19), 1.0,
        (0 + 14 / 19) / (5 * 7 / 19)]


def test_hand_made_statistics():
    vocab = V.fit_vocabulary(hand_features(), HAND_CONFIG)
    assert json.loads(json.dumps(vocab)) == vocab
    assert vocab["item_id"] == ["a", "b"]  # c capped away (1 impression)
    assert vocab["item_impressions"] == [4, 3]
    assert vocab["category"] == ["x", "y", "z"]
    np.testing.assert_allclose(vocab["position_click_rate"], R_CLICK, rtol=1e-12)
    np.testing.assert_allclose(vocab["position_purchase_rate"], R_PURCHASE, rtol=1e-12)
    np.testing.assert_allclose(vocab["item_click_factor"], [F_CLICK["a"], F_CLICK["b"]],
                               rtol=1e-12)
    np.testing.assert_allclose(vocab["item_purchase_factor"],
                               [F_PURCHASE["a"], F_PURCHASE["b"]], rtol=1e-12)
    np.testing.assert_allclose(vocab["category_prior"], CATEGORY_PRIOR, rtol=1e-12)
    assert vocab["click"]["rate"] == G_CLICK and vocab["purchase"]["rate"] == G_PURCHASE

    # The lift of each example, and the scale that matches the mean click rate.
    enc = V.encode(vocab, HAND_CONFIG, hand_features())
    lift = V.affinity_lift(enc["category"], enc["hist_category"], enc["hist_weight"],
                           vocab["category_prior"], 2.0)
    np.testing.assert_allclose(lift, LIFT, rtol=1e-12)
    for task, rates, factor, y in (("click", R_CLICK, F_CLICK, G_CLICK * 8),
                                   ("purchase", R_PURCHASE, F_PURCHASE, G_PURCHASE * 8)):
        e = vocab[task]["exponent"]
        assert e in V.EXPONENTS
        base = [rates[b] * factor[r[0]] for b, r in zip(BUCKET, ROWS)]
        np.testing.assert_allclose(vocab[task]["scale"],
                                   y / sum(b * l ** e for b, l in zip(base, LIFT)), rtol=1e-12)

    # Price: median of the distinct items' prices (a 10, b 30, c 50, e 50); labels 0: 1, 1: 3.
    assert vocab["price_edges"] == [40.0]
    np.testing.assert_allclose(vocab["price_prior"], [2 / 6, 4 / 6], rtol=1e-12)

    # Demand: item means of the earlier half (mean 3/4, 1 pseudo-impression), coefficients
    # on the later half; served item means from all rows (mean 7/8).
    a_early, b_early = (3 + 0.75) / (3 + 1), (0 + 0.75) / (1 + 1)
    X = np.array([[1, 1, b_early], [1, 1, a_early], [1, 0, b_early], [1, 0, 0.75]])
    a = V.nonnegative_poisson(X, np.array([3.0, 1.0, 0.0, 0.0]))
    d = vocab["demand"]
    np.testing.assert_allclose([d["intercept"], d["purchases_7d"], d["item_mean"]], a,
                               rtol=1e-9)
    assert d["mean"] == 7 / 8
    np.testing.assert_allclose(vocab["item_demand"], [(4 + 7 / 8) / 5, (3 + 7 / 8) / 4],
                               rtol=1e-12)


def test_only_labelled_rows_feed_the_label_statistics():
    # Two more impressions of c, with labels the trainer marks as not to be used.
    extra = [("c", "y", 50.0, 0, 1, 1, 0, 9.0, 5.0)] * 2
    features = hand_features(ROWS + extra, HISTORIES + [[], []])
    features["timestamp"] = np.arange(len(ROWS) + 2)
    features["labelled"] = np.arange(len(ROWS) + 2) < len(ROWS)
    vocab = V.fit_vocabulary(features, HAND_CONFIG)
    hand = V.fit_vocabulary(hand_features(), HAND_CONFIG)
    assert (vocab["num_examples"], vocab["num_labelled"]) == (10, 8)
    assert {k: v for k, v in vocab.items() if not k.startswith("num_")} == \
        {k: v for k, v in hand.items() if not k.startswith("num_")}
    # Every row labelled: the extra clicks count.
    features["labelled"][:] = True
    assert V.fit_vocabulary(features, HAND_CONFIG)["click"]["rate"] == 5 / 10


def test_nonnegative_poisson_by_hand():
    X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    # An exact fit exists: y = 1 + 2 x.
    np.testing.assert_allclose(V.nonnegative_poisson(X, np.array([1.0, 3.0, 5.0, 7.0]),
                                                     iterations=5000), [1.0, 2.0], atol=1e-3)
    # A falling y would want a negative slope: the slope stays 0, the intercept = mean.
    a = V.nonnegative_poisson(X, np.array([4.0, 3.0, 2.0, 1.0]), iterations=5000)
    np.testing.assert_allclose(a, [2.5, 0.0], atol=1e-3)
    assert np.all(a >= 0)


def test_price_edges_pinned_to_the_label_buckets():
    features = hand_features()
    # The label's buckets say b (30) is already in bucket 1: the edge lies in (10, 30].
    features["hist_price_bucket"] = np.where(features["hist_price"] >= 30, 1, 0)
    vocab = V.fit_vocabulary(features, HAND_CONFIG)
    assert vocab["price_edges"] == [20.0]  # the quantile (40) moved to the interval's middle
    features["hist_price_bucket"] = np.where(features["hist_price"] >= 50, 1, 0)
    assert V.fit_vocabulary(features, HAND_CONFIG)["price_edges"] == [40.0]  # consistent


def test_model_matches_the_hand_numbers():
    features = hand_features()
    vocab = V.fit_vocabulary(features, HAND_CONFIG)
    model = task_lib.build(HAND_CONFIG, vocab)
    raw, _ = split_labels(features)
    out = _np(model(model.preprocessor(raw), training=False))
    for task, rates, factor in (("click", R_CLICK, F_CLICK),
                                ("purchase", R_PURCHASE, F_PURCHASE)):
        fit = vocab[task]
        want = [fit["scale"] * rates[b] * factor[r[0]] * l ** fit["exponent"]
                for b, r, l in zip(BUCKET, ROWS, LIFT)]
        np.testing.assert_allclose(out[task], np.clip(want, 1e-4, 1 - 1e-4), rtol=1e-5)
    # Price (edge 40, smoothing 2, the candidate counts once): row 1 has 4 weight in bucket 0
    # (+1 candidate), row 7 three clicks (the 4th is past max_history) and a 50 candidate.
    prior = np.array([1 / 3, 2 / 3])
    np.testing.assert_allclose(out["price_range"][0], (np.array([1, 0]) + 2 * prior) / 3,
                               rtol=1e-5)
    np.testing.assert_allclose(out["price_range"][1], (np.array([5, 0]) + 2 * prior) / 7,
                               rtol=1e-5)
    np.testing.assert_allclose(out["price_range"][7], (np.array([3, 1]) + 2 * prior) / 6,
                               rtol=1e-5)
    d = vocab["demand"]
    item_mean = [vocab["item_demand"][0] if r[0] == "a" else
                 vocab["item_demand"][1] if r[0] == "b" else d["mean"] for r in ROWS]
    want = [d["intercept"] + d["purchases_7d"] * r[8] + d["item_mean"] * m
            for r, m in zip(ROWS, item_mean)]
    np.testing.assert_allclose(out["demand"], np.maximum(want, 1e-6), rtol=1e-5)
    ref = V.reference_outputs(vocab, HAND_CONFIG, raw)
    for k in TASKS:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-7)


def test_unseen_item_and_user_without_history_fall_back_to_global_statistics():
    vocab = V.fit_vocabulary(hand_features(), HAND_CONFIG)
    config = dict(HAND_CONFIG, candidate_price_weight=0.0)
    model = task_lib.build(config, vocab)
    # Row 0: a never-seen item and category, unknown rank, no history. Row 1: item a,
    # category x at rank 0, no history. Row 2: as row 1 with a history.
    rows = [("never", "seen", 77.0, -1, 0, 0, -1, 0.0, 0.0),
            ("a", "x", 10.0, 0, 0, 0, -1, 0.0, 0.0),
            ("a", "x", 10.0, 0, 0, 0, -1, 0.0, 0.0)]
    raw, _ = split_labels(hand_features(rows, [[], [], HISTORIES[1]]))
    out = _np(model(model.preprocessor(raw), training=False))
    click, purchase = vocab["click"], vocab["purchase"]
    # Unknown item: factor 1 (the global rate through the rank curve); no history: lift 1.
    np.testing.assert_allclose(out["click"][0], click["scale"] * R_CLICK[0], rtol=1e-6)
    np.testing.assert_allclose(out["purchase"][0], purchase["scale"] * R_PURCHASE[0],
                               rtol=1e-6)
    np.testing.assert_allclose(out["click"][1], click["scale"] * R_CLICK[1] * F_CLICK["a"],
                               rtol=1e-6)
    lift = (1 + 20 / 19) / (6 * 10 / 19)
    np.testing.assert_allclose(out["click"][2], out["click"][1] * lift ** click["exponent"],
                               rtol=1e-6)
    # No history and no candidate weight: the label prior itself.
    np.testing.assert_allclose(out["price_range"][:2], [vocab["price_prior"]] * 2, rtol=1e-6)
    d = vocab["demand"]  # an unknown item has the global mean demand
    np.testing.assert_allclose(out["demand"][0],
                               max(d["intercept"] + d["item_mean"] * d["mean"], 1e-6), rtol=1e-6)


# ---- random batches: ranges, saving, serving ---------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    reg = _registry()
    config = reg.config("popularity", "tiny")
    train = random_raw_batch(batch_size=256, history_length=50, seed=0)
    vocab = reg.spec("popularity").fit(train, config)
    model = reg.get("popularity", "tiny", vocabulary=vocab)
    return config, vocab, model


@pytest.fixture(scope="module")
def batch():
    return split_labels(random_raw_batch(batch_size=32, history_length=50, seed=7))[0]


def test_registration_and_no_trainable_weights(fitted):
    reg = _registry()
    spec = reg.spec("popularity")
    assert spec.default_preset == "small" and spec.build_args == ("vocabulary",)
    assert spec.keras_module == "zoo.models.popularity.task"
    assert set(spec.presets) == {"tiny", "small"}
    _, _, model = fitted
    assert model.trainable_variables == []
    assert len(model.non_trainable_weights) == len(scorer_lib.PopularityScorer.TABLES)
    # Placeholder statistics build too, and count like `zoo.count_preset_params` does.
    with keras.StatelessScope():
        stateless = zoo.count_params(reg.get("popularity", "tiny"))
    assert stateless == zoo.count_params(reg.get("popularity", "tiny")) > 0


def test_outputs_in_range_and_equal_to_the_numpy_reference(fitted, batch):
    config, vocab, model = fitted
    out = _np(model(model.preprocessor(batch), training=False))
    B = len(batch["item_id"])
    assert out["click"].shape == out["purchase"].shape == out["demand"].shape == (B,)
    assert out["price_range"].shape == (B, 5)
    for k in ("click", "purchase"):
        assert np.all((out[k] >= 1e-4 - 1e-9) & (out[k] <= 1 - 1e-4 + 1e-9))
    np.testing.assert_allclose(out["price_range"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(out["price_range"] > 0) and np.all(out["demand"] > 0)
    ref = V.reference_outputs(vocab, config, batch)
    for k in TASKS:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-7)
    # Histories of another length (short and long) are padded / cut by the preprocessor;
    # missing and unknown event types weigh like clicks; the numeric part compiles under XLA.
    for length in (7, 80):
        other = split_labels(random_raw_batch(batch_size=8, history_length=length, seed=3))[0]
        other["hist_event"][0, :3] = ["view", "", "purchase"]
        got = _np(model(model.preprocessor(other)))
        ref = V.reference_outputs(vocab, config, other)
        for k in TASKS:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-7)
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    got = _np(xla(model.preprocessor(batch)))
    for k in TASKS:
        np.testing.assert_allclose(got[k], out[k], rtol=1e-6, atol=1e-7)


def test_save_reload_and_serving_signature_give_identical_outputs(fitted, batch, tmp_path):
    from export import saved_model

    _, _, model = fitted
    before = _np(model(model.preprocessor(batch), training=False))
    path = str(tmp_path / "popularity.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is task_lib.Popularity and loaded.trainable_variables == []
    after = _np(loaded(loaded.preprocessor(batch), training=False))
    e2e = _np(task_lib.end_to_end(loaded)(batch))
    for k in TASKS:
        np.testing.assert_array_equal(after[k], before[k])
        np.testing.assert_allclose(e2e[k], before[k], rtol=1e-6, atol=1e-7)

    export_dir = str(tmp_path / "saved_model")
    saved_model.write_saved_model(loaded, export_dir, history_length=50)
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    out = serving(**{k: tf.constant(batch[k]) for k in RAW_FEATURES})
    for k in TASKS:
        np.testing.assert_allclose(out[k].numpy(), before[k], rtol=1e-5, atol=1e-5)


# ---- the small simulated shop -------------------------------------------------------------
def _read(builder, split):
    from zoo.data import pipeline

    parts = {}
    for b in pipeline.make_dataset(pipeline.split_files(builder, split), batch_size=4096,
                                   history_length=16):
        for k, v in b.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_beats_trivial_baselines_on_the_small_shop(shop):
    import helpers
    from trainers.core.metrics import multitask_metrics
    from zoo.data import prepare

    builder = prepare.prepare(*shop, helpers.LABEL_CFG)
    train, evaluation = _read(builder, "train"), _read(builder, "eval")
    reg = _registry()
    config = reg.config("popularity", "small", max_history=16)
    vocab = reg.spec("popularity").fit(train, config)
    # The label edges are recovered exactly (float32 prices).
    np.testing.assert_allclose(vocab["price_edges"], builder.info.metadata["price_edges"],
                               rtol=1e-6)
    model = reg.get("popularity", "small", max_history=16, vocabulary=vocab)
    raw, labels = split_labels(evaluation)
    preds = _np(model(model.preprocessor(raw), training=False))
    metrics = multitask_metrics(labels, preds, evaluation["user_id"])
    print("\npopularity/small on the small shop's eval split:",
          json.dumps({k: round(v, 4) for k, v in metrics.items()}))

    n = len(labels["click"])
    prior = np.tile(vocab["price_prior"], (n, 1))
    trivial = multitask_metrics(labels, {
        "click": np.full(n, vocab["click"]["rate"]),
        "purchase": np.full(n, vocab["purchase"]["rate"]),
        "price_range": prior, "demand": np.full(n, vocab["demand"]["mean"])},
        evaluation["user_id"])
    assert metrics["click/auc"] > 0.65 and metrics["click/gauc"] > 0.6
    assert metrics["purchase/auc"] > 0.6
    assert metrics["click/logloss"] < trivial["click/logloss"]
    assert metrics["purchase/logloss"] < trivial["purchase/logloss"]
    assert metrics["price_range/accuracy"] > trivial["price_range/accuracy"]
    assert metrics["price_range/logloss"] < trivial["price_range/logloss"]
    assert metrics["demand/poisson_deviance"] < trivial["demand/poisson_deviance"]
    # An unseen item at an unknown rank with no history: the global click rate (the shop
    # shows no unknown ranks, so that rank's rate is the global one) times the scale.
    assert vocab["position_click_rate"][0] == pytest.approx(vocab["click"]["rate"])
    one = {k: v[:1].copy() for k, v in raw.items()}
    one.update(item_id=np.array([b"never-seen"]), position=np.array([-1]),
               hist_item_id=np.full((1, 16), b""))
    click = _np(model(model.preprocessor(one)))["click"][0]
    assert click == pytest.approx(vocab["click"]["scale"] * vocab["click"]["rate"], rel=1e-5)


def test_price_knobs_fitted_to_what_the_history_says():
    """An uninformative history sends the prior's weight to the top of the grid; a history
    that names the next purchase's range brings it down; the candidate's weight follows the
    candidate's price when that is what is bought."""
    rng = np.random.default_rng(0)
    n, H = 3000, 6
    hist = rng.integers(0, 2, (n, H))
    weight = np.ones((n, H))
    cand = rng.integers(0, 2, n)
    enc = {"hist_price_bucket": hist, "hist_weight": weight, "price_bucket": cand}
    present = np.ones(n, bool)
    noise = rng.integers(0, 2, n)
    by_history = (hist.mean(1) > 0.5).astype(int)
    fit = V._fit_price(enc, noise, present, [0.5, 0.5])
    assert fit["smoothing"] == max(V.PRICE_SMOOTHING_GRID)
    assert fit["candidate_weight"] <= 0.01 * fit["smoothing"]  # a trace beside the prior
    fit = V._fit_price(enc, np.where(rng.random(n) < 0.9, by_history, noise), present,
                       [0.5, 0.5])
    assert fit["smoothing"] <= 3.0 and fit["candidate_weight"] <= 1.0
    fit = V._fit_price(enc, np.where(rng.random(n) < 0.9, cand, noise), present, [0.5, 0.5])
    assert fit["candidate_weight"] >= 10.0
    # The fitted knobs reach the model: vocabulary -> build -> outputs = reference_outputs.
    vocab = V.fit_vocabulary(hand_features(), dict(HAND_CONFIG, price_fit=True))
    assert set(vocab["price_fit"]) == {"smoothing", "candidate_weight"}
    model = task_lib.build(dict(HAND_CONFIG, price_fit=True), vocab)
    assert (model.scorer.price_smoothing, model.scorer.candidate_price_weight) == (
        vocab["price_fit"]["smoothing"], vocab["price_fit"]["candidate_weight"])
