"""What the tree sees, given to the neural models: the examples' context features, the
in-graph match features, DIN target attention and the PAL position tower."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixtures
import zoo
from zoo.data import contract, examples, labels, log_features
from zoo.models import layers
from zoo.models.features import CONTEXT_FEATURES
from zoo.models.ranker import preprocessor as prep_lib

CFG = labels.LabelConfig(num_price_ranges=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = fixtures.write_csv(str(tmp_path_factory.mktemp("log")))
    return examples.ExampleSource(contract.read_contract(folder), CFG)


def _rows(source):
    out = {}
    for split in ("train", "eval"):
        for chunk in source.chunks(split):
            for i, e in enumerate(chunk["event_id"]):
                out[e.decode() if isinstance(e, bytes) else e] = {
                    k: chunk[k][i] for k in CONTEXT_FEATURES}
    return out


def test_examples_carry_the_log_features_with_missing_as_minus_one(source):
    rows = _rows(source)
    built = log_features.build(source.tables)
    assert set(rows) == set(built["event_id"])
    for i, e in enumerate(built["event_id"]):
        for name in CONTEXT_FEATURES:
            want = built[name][i]
            want = examples.MISSING if np.isnan(want) else want
            assert rows[e][name] == pytest.approx(want, rel=1e-6), (e, name)
    # By hand (fixtures.EVENTS), strictly before: e8 is u1's first event of s2, a day later.
    e8 = rows["e8"]
    assert e8["session_events"] == 0 and e8["session_category_share"] == examples.MISSING
    assert e8["user_item_clicks"] == 1 and e8["user_category_purchases"] == 1
    assert e8["user_item_seconds"] == fixtures.DAY - 50
    assert e8["price_vs_user_purchases"] == pytest.approx(2.0)
    # B is +h against shoes' level, u1's clicks, cart and purchase before it -h, -h, -h, +h
    # (h = log(2) / 2): the relative prices' ratios, as the tree sees them.
    h = np.log(2.0) / 2
    assert e8["relative_price_vs_user"] == pytest.approx(np.exp(1.5 * h), rel=1e-6)
    assert e8["relative_price_vs_user_category"] == pytest.approx(np.exp(1.5 * h), rel=1e-6)
    assert e8["relative_price_sd_user"] == pytest.approx(h * np.sqrt(3) / 2, rel=1e-6)
    assert rows["e3"]["relative_price_vs_user"] == examples.MISSING  # nothing before
    # e2 and e3 share a second with nothing of u1 before them but the search.
    assert rows["e3"]["session_impressions"] == 0 and rows["e3"]["session_searches"] == 1
    assert rows["e3"]["user_item_seconds"] == examples.MISSING


def test_context_features_are_in_every_serialized_example(tmp_path):
    from zoo.data import pipeline, prepare

    folder = fixtures.write_csv(str(tmp_path / "log"))
    builder = prepare.prepare(folder, str(tmp_path / "tfds"), CFG)
    files = pipeline.split_files(builder, "train")
    batch = next(iter(pipeline.make_dataset(files, batch_size=64)))
    got = {e.decode(): i for i, e in enumerate(batch["event_id"].numpy())}
    assert "e8" in got
    assert float(batch["user_item_clicks"][got["e8"]]) == 1.0
    assert float(batch["session_category_share"][got["e8"]]) == examples.MISSING


def _vocabulary(config):
    texts = {"query": np.array(["red shoe", "trail backpack", "gps watch"], object),
             "item_title": np.array(["blue running shoe", "trail backpack", "gps watch"],
                                    object),
             "item_id": np.array(["A", "B", "C"], object),
             "item_category": np.array(["shoes", "shoes", "outdoor"], object),
             "item_brand": np.array(["acme", "zoom", "acme"], object),
             "item_price": np.array([10.0, 20.0, 30.0])}
    for name in CONTEXT_FEATURES:
        texts[name] = np.array([-1.0, 0.0, 3.0, 7.0])
    return zoo.fit_vocabulary("bert_mtl", texts, config)


def test_vocabulary_holds_context_statistics_of_defined_values():
    config = zoo.get_config("bert_mtl", "tiny")
    vocab = _vocabulary(config)
    stats = vocab["context"]
    assert stats["names"] == list(CONTEXT_FEATURES)
    values = np.log1p([0.0, 3.0, 7.0])  # -1 (undefined) is left out
    np.testing.assert_allclose(stats["mean"], values.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], values.std(), rtol=1e-6)
    json.dumps(vocab)
    bad = {**vocab, "context": {**stats, "names": stats["names"][:-1]}}
    with pytest.raises(ValueError, match="context"):
        zoo.get("bert_mtl", "tiny", vocabulary=bad)


def _raw(history, candidate, query, title, price, context_value):
    """One impression: history = [(item, category, brand, event, price, gap)], newest first."""
    h = list(history) + [("", "", "", "", 0.0, 0.0)] * (4 - len(history))
    cols = list(zip(*h))
    row = {"user_id": "u", "query": query, "item_id": candidate[0],
           "item_category": candidate[1], "item_brand": candidate[2], "item_title": title,
           "item_price": price, "position": 0, "item_clicks_7d": 0.0,
           "item_purchases_7d": 0.0, "hist_item_id": cols[0], "hist_category": cols[1],
           "hist_brand": cols[2], "hist_event": cols[3], "hist_price": cols[4],
           "hist_gap": cols[5]}
    row.update({name: context_value for name in CONTEXT_FEATURES})
    return row


def _batch(rows):
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        if isinstance(values[0], str) or (isinstance(values[0], tuple)
                                          and isinstance(values[0][0], str)):
            out[k] = tf.constant(values, tf.string)
        elif k == "position":
            out[k] = tf.constant(values, tf.int64)
        else:
            out[k] = tf.constant(values, tf.float32)
    return out


def test_in_graph_features_by_hand():
    config = zoo.get_config("bert_mtl", "tiny")
    model = zoo.get("bert_mtl", "tiny", vocabulary=_vocabulary(config))
    pre = model.preprocessor
    rows = [
        # Candidate A (shoes, acme, 10) after: a purchase of B (shoes, zoom) 10 s ago, a
        # click on A 100 s ago, a cart of A 500 s ago, a click on C (outdoor, acme) 1000 s ago.
        _raw([("B", "shoes", "zoom", "purchase", 20.0, 10.0),
              ("A", "shoes", "acme", "click", 10.0, 100.0),
              ("A", "shoes", "acme", "cart", 10.0, 500.0),
              ("C", "outdoor", "acme", "click", 40.0, 1000.0)],
             ("A", "shoes", "acme"), "red shoe", "blue running shoe", 10.0, 3.0),
        # No history, no query, every context feature undefined.
        _raw([], ("C", "outdoor", "acme"), "", "steel bottle", 30.0, -1.0),
    ]
    dense = pre(_batch(rows))["dense_features"].numpy()
    C = len(CONTEXT_FEATURES)
    assert dense.shape == (2, pre.num_dense_features)
    stats = pre.vocabulary["context"]
    np.testing.assert_allclose(
        dense[0, :C], (np.log1p(3.0) - np.array(stats["mean"])) / np.array(stats["std"]),
        rtol=1e-5)
    np.testing.assert_array_equal(dense[0, C:2 * C], 0.0)
    np.testing.assert_array_equal(dense[1, :C], 0.0)
    np.testing.assert_array_equal(dense[1, C:2 * C], 1.0)

    first = pre.num_dense_features - len(pre.in_graph_features)
    got = [dict(zip(pre.in_graph_features, row[first:])) for row in dense]
    # The query's word pieces found in the title, by the tokenizer itself.
    q = pre.tokenizer("red shoe").numpy().tolist()[:pre.max_query_tokens]
    t = set(pre.tokenizer("blue running shoe").numpy().tolist()[:pre.max_title_tokens])
    assert got[0]["has_query"] == 1.0
    assert got[0]["title_coverage"] == pytest.approx(sum(x in t for x in q) / len(q))
    assert 0.0 < got[0]["title_coverage"] < 1.0
    # Whole words: "shoe" of "red shoe" is in "blue running shoe".
    assert got[0]["query_words"] == pytest.approx(np.log1p(2.0))
    assert got[0]["word_coverage"] == pytest.approx(0.5)
    assert got[0]["price_vs_history"] == pytest.approx(np.log(10.0 / 20.0), rel=1e-5)
    assert got[0]["history_empty"] == 0.0
    expected_counts = {"item_clicks": 1, "item_carts": 1, "item_purchases": 0,
                       "category_clicks": 1, "category_carts": 1, "category_purchases": 1,
                       "brand_clicks": 2, "brand_carts": 1, "brand_purchases": 0}
    for name, count in expected_counts.items():
        assert got[0][name] == pytest.approx(np.log1p(count)), name
    top = np.log1p(prep_lib.MAX_GAP_SECONDS)
    assert got[0]["item_freshness"] == pytest.approx(1 - np.log1p(100.0) / top, rel=1e-5)
    assert got[0]["category_freshness"] == pytest.approx(1 - np.log1p(10.0) / top, rel=1e-5)
    assert got[0]["brand_freshness"] == pytest.approx(1 - np.log1p(100.0) / top, rel=1e-5)
    decay = np.exp(-np.array([10.0, 100.0, 500.0, 1000.0]) / prep_lib.RECENT_SECONDS)
    assert got[0]["item_recent"] == pytest.approx(np.log1p(decay[1] + decay[2]), rel=1e-5)
    assert got[0]["category_recent"] == pytest.approx(np.log1p(decay[:3].sum()), rel=1e-5)
    assert got[0]["brand_recent"] == pytest.approx(np.log1p(decay[1:].sum()), rel=1e-5)
    # All four events are within the hour: item A twice, shoes three times, acme three.
    assert got[0]["item_last_hour"] == pytest.approx(np.log1p(2.0))
    assert got[0]["category_last_hour"] == pytest.approx(np.log1p(3.0))
    assert got[0]["brand_last_hour"] == pytest.approx(np.log1p(3.0))
    assert {k: got[1][k] for k in prep_lib.IN_GRAPH_FEATURES} == {
        **{k: 0.0 for k in prep_lib.IN_GRAPH_FEATURES}, "history_empty": 1.0}

    # Prices against their category's level: shoes = mean log of A (10) and B (20), outdoor
    # = log 30 (the vocabulary's distinct training items).
    level = {"shoes": np.log([10.0, 20.0]).mean(), "outdoor": np.log(30.0)}
    r = np.log(10.0) - level["shoes"]
    hist = np.array([np.log(20.0) - level["shoes"], np.log(10.0) - level["shoes"],
                     np.log(10.0) - level["shoes"], np.log(40.0) - level["outdoor"]])
    want = {"relative_price": r, "history_relative_price": hist.mean(),
            "history_relative_price_sd": hist.std(), "relative_price_gap": r - hist.mean(),
            "relative_price_over": max(r - hist.mean(), 0.0),
            "relative_price_under": max(hist.mean() - r, 0.0),
            "category_relative_price_gap": r - hist[:3].mean()}
    for name, value in want.items():
        assert got[0][name] == pytest.approx(value, abs=1e-5), name
    assert got[0]["relative_price_under"] > 0.1  # A is the cheap one of its category
    # No history: only the candidate's own relative price (C is its category's level).
    assert {k: got[1][k] for k in prep_lib.RELATIVE_PRICE_FEATURES} == pytest.approx(
        {k: 0.0 for k in prep_lib.RELATIVE_PRICE_FEATURES}, abs=1e-6)


def test_relative_price_levels_and_an_older_preprocessor():
    config = zoo.get_config("bert_mtl", "tiny")
    vocab = _vocabulary(config)
    # Distinct items: A and B are shoes, C outdoor; an unseen category gets the overall level.
    levels = dict(zip(vocab["category"], vocab["category_log_price"]))
    assert levels["shoes"] == pytest.approx(np.log([10.0, 20.0]).mean())
    assert levels["outdoor"] == pytest.approx(np.log(30.0))
    assert vocab["log_price_mean"] == pytest.approx(np.log([10.0, 20.0, 30.0]).mean())
    twice = {k: np.concatenate([v, v]) for k, v in {
        "item_id": np.array(["A", "B"], object), "item_category": np.array(["s", "s"], object),
        "item_price": np.array([10.0, 40.0])}.items()}
    from zoo.models.ranker import vocabulary as vocab_lib
    got = vocab_lib.category_price_levels(["s", "new"], twice)
    assert got["category_log_price"] == pytest.approx([np.log(20.0), np.log(20.0)])
    assert got["log_price_mean"] == pytest.approx(np.log(20.0))
    with pytest.raises(ValueError, match="category_log_price"):
        zoo.get("bert_mtl", "tiny", vocabulary={**vocab, "category_log_price": [0.0]})
    # A preprocessor saved before relative prices existed (no such key in its config) keeps
    # the width it was trained with.
    pre = zoo.get("bert_mtl", "tiny", vocabulary=vocab).preprocessor
    old = pre.get_config()
    old.pop("relative_price")
    older = prep_lib.RankerPreprocessor.from_config(old)
    assert older.num_dense_features == pre.num_dense_features - len(
        prep_lib.RELATIVE_PRICE_FEATURES)


def test_target_attention_pools_by_the_candidate():
    layer = layers.TargetAttention(hidden_dim=8, initializer_range=0.5)
    rng = np.random.default_rng(0)
    history = tf.constant(rng.normal(size=(2, 5, 4)), tf.float32)
    mask = tf.constant([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], tf.int32)
    c1 = tf.constant(rng.normal(size=(2, 4)), tf.float32)
    c2 = tf.constant(rng.normal(size=(2, 4)), tf.float32)
    out1, out2 = layer(history, c1, mask).numpy(), layer(history, c2, mask).numpy()
    w = layer.attention_weights(history, c1, mask).numpy()
    np.testing.assert_allclose(w[0].sum(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(w[0, 3:], 0.0)
    np.testing.assert_array_equal(w[1], 0.0)  # empty history: nothing pooled
    np.testing.assert_allclose(out1[0], (w[0][:, None] * history.numpy()[0]).sum(0),
                               rtol=1e-5)
    np.testing.assert_array_equal(out1[1], 0.0)
    # Same history, another candidate: other weights, another pooled history.
    assert np.abs(out1[0] - out2[0]).max() > 1e-4
    # A padded slot's content changes nothing.
    padded = history.numpy()
    padded[0, 3:] = 100.0
    np.testing.assert_allclose(layer(tf.constant(padded), c1, mask).numpy(), out1, rtol=1e-5)


def test_model_target_attention_changes_with_the_candidate_only(tmp_path):
    from zoo.models.testing import random_raw_batch
    from zoo.models.features import split_labels

    model = zoo.get("bert_mtl", "tiny", initializer_range=0.3)
    features, _ = split_labels(random_raw_batch(4, 16, seed=3))
    x = model.preprocessor(features)
    other = dict(x)
    other["item_index"] = (x["item_index"] + 7) % 50 + 2
    encoded, encoded_other = model.backbone(x), model.backbone(other)
    # The history is the same (row 0 is a full one); what the candidate pools from it is not.
    assert int(x["hist_mask"][0].numpy().sum()) == model.backbone.max_history
    assert np.abs(encoded["target_attention_output"][0].numpy()
                  - encoded_other["target_attention_output"][0].numpy()).max() > 1e-5
    # The heads read it: without the attention the model has fewer inputs to its towers.
    plain = zoo.get("bert_mtl", "tiny", target_attention=False)
    assert (model.towers["click"][0].kernel.shape[0]
            == plain.towers["click"][0].kernel.shape[0] + model.backbone.hidden_dim)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again(x)["click"].numpy(), model(x)["click"].numpy(),
                               rtol=1e-5)


def test_pal_position_tower_factors_out_the_rank(tmp_path):
    from zoo.models.testing import random_raw_batch
    from zoo.models.features import split_labels

    model = zoo.get("bert_mtl", "tiny", position_bias="pal", position_dropout=0.5)
    tower = model.position_tower
    tower.weights_per_bucket.assign(np.linspace(2.0, -2.0, tower.num_buckets).astype(
        np.float32) / tower.LOGIT_SCALE)
    logits = tower.bucket_logits().numpy()
    np.testing.assert_allclose(logits[[0, -1]], [2.0, -2.0], rtol=1e-5)
    features, _ = split_labels(random_raw_batch(6, 16, seed=4))
    x = model.preprocessor(features)

    def click(bucket):
        return model({**x, "position_bucket": tf.fill(tf.shape(x["position_bucket"]),
                                                       bucket)})["click"].numpy()

    sig = 1 / (1 + np.exp(-logits))
    # The rank multiplies every candidate by the same factor: the order among candidates
    # shown at one rank (or with none, bucket 0) is the relevance order.
    np.testing.assert_allclose(click(5) / click(1), sig[5] / sig[1], rtol=1e-4)
    np.testing.assert_array_equal(np.argsort(click(0)), np.argsort(click(9)))
    # The backbone never sees the rank.
    e1 = model.backbone(model._backbone_inputs({**x, "position_bucket": x["position_bucket"]}))
    e2 = model.backbone(model._backbone_inputs({**x, "position_bucket": x["position_bucket"]
                                                + 3}))
    np.testing.assert_array_equal(e1["candidate_output"].numpy(), e2["candidate_output"].numpy())
    # Training hides about position_dropout of the ranks (bucket 0).
    hidden = tower(tf.fill([20000], 7), training=True).numpy()
    assert np.mean(hidden == logits[0]) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(tower(tf.fill([100], 7)).numpy(), logits[7])
    path = str(tmp_path / "pal.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again(x)["click"].numpy(), model(x)["click"].numpy(), rtol=1e-5)


def test_a_model_dir_of_older_examples_is_refused_by_name(tmp_path):
    from trainers.core import rundir

    model_dir = str(tmp_path / "old_run")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, rundir.MODEL), "w") as f:
        f.write("not read")
    rundir.write_json(os.path.join(model_dir, rundir.TRAIN_CONFIG),
                      {"label_config": {}, "model_dir": model_dir})
    with pytest.raises(ValueError, match=r"old_run was trained on examples version 3 or "
                                         r"older; this code writes version \d+"):
        rundir.load_trained(model_dir)


def test_feature_cross_layers_feed_the_towers_and_reload(tmp_path):
    import keras_rs
    from zoo.models.testing import random_raw_batch
    from zoo.models.features import split_labels

    model = zoo.get("bert_mtl", "tiny", feature_cross_layers=2, feature_cross_projection=8)
    assert [type(layer) for layer in model.feature_cross] == [keras_rs.layers.FeatureCross] * 2
    features, _ = split_labels(random_raw_batch(4, 16, seed=5))
    x = model.preprocessor(features)
    before = model(x)["click"].numpy()
    # Zeroing the cross weights leaves x0 (x_{i+1} = x0 * (W x_i + b) + x_i with W, b = 0).
    for layer in model.feature_cross:
        for w in layer.weights:
            w.assign(np.zeros(w.shape, np.float32))
    plain = model(x)["click"].numpy()
    assert np.abs(before - plain).max() > 1e-6
    path = str(tmp_path / "fc.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x)["click"].numpy(), plain,
                               rtol=1e-5)


def test_piecewise_linear_encoding_by_hand():
    from zoo.models.ranker import vocabulary as vocab_lib

    config = zoo.get_config("bert_mtl", "tiny", context_bins=True)
    vocab = _vocabulary(config)
    T = vocab_lib.CONTEXT_BINS
    # Edges 0, 1, ..., T on the log1p scale; the first feature's bins 2..3 are one point
    # (zero width: a step).
    edges = [list(map(float, range(T + 1))) for _ in CONTEXT_FEATURES]
    edges[0] = [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0][:T + 1]
    vocab["context"]["edges"] = edges
    pre = zoo.get("bert_mtl", "tiny", vocabulary=vocab, context_bins=True).preprocessor
    C = len(CONTEXT_FEATURES)
    rows = [_raw([], ("A", "shoes", "acme"), "", "t", 10.0, float(np.expm1(2.5))),
            _raw([], ("A", "shoes", "acme"), "", "t", 10.0, -1.0),
            _raw([], ("A", "shoes", "acme"), "", "t", 10.0, float(np.expm1(100.0)))]
    dense = pre(_batch(rows))["dense_features"].numpy()
    assert dense.shape == (3, (2 + T) * C + len(pre.in_graph_features))
    encoded = dense[:, 2 * C:(2 + T) * C].reshape(3, C, T)
    np.testing.assert_allclose(encoded[0, 1], [1, 1, 0.5, 0, 0, 0, 0, 0][:T], atol=1e-5)
    np.testing.assert_allclose(encoded[0, 0], [1, 1, 1, 0.5, 0, 0, 0, 0][:T], atol=1e-5)
    np.testing.assert_array_equal(encoded[1], 0.0)  # undefined: nothing, the flag says so
    np.testing.assert_array_equal(encoded[2], 1.0)  # above every edge
    # Fitted edges are the training quantiles of log1p over the defined values.
    fitted = _vocabulary(config)["context"]["edges"][0]
    np.testing.assert_allclose(fitted, np.quantile(np.log1p([0.0, 3.0, 7.0]),
                                                   np.linspace(0, 1, T + 1)), rtol=1e-6)


def test_numeric_embedding_gives_each_feature_its_own_linear_relu():
    layer = layers.NumericEmbedding(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 6)).astype(np.float32)  # [B, F, W]
    out = layer(x).numpy()
    assert out.shape == (5, 4, 3)
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    assert kernel.shape == (4, 6, 3) and bias.shape == (4, 3)
    want = np.maximum(np.einsum("bfw,fwd->bfd", x, kernel) + bias, 0.0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # Feature 0's inputs move feature 0's embedding only.
    layer.kernel.assign(np.abs(kernel) + 0.1)
    layer.bias.assign(np.abs(bias) + 0.1)
    before = layer(np.abs(x)).numpy()
    moved = np.abs(x)
    moved[:, 0, :] += 1.0
    after = layer(moved).numpy()
    assert np.abs(after[:, 0] - before[:, 0]).min() > 1e-3
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])
    again = layers.NumericEmbedding.from_config(layer.get_config())
    assert again.embedding_dim == 3


def test_context_groups_follow_the_dense_features_layout():
    from zoo.models.bert_mtl.backbone import context_group_indices
    from zoo.models.ranker import vocabulary as vocab_lib

    config = zoo.get_config("bert_mtl", "tiny")
    pre = zoo.get("bert_mtl", "tiny", vocabulary=_vocabulary(config)).preprocessor
    sizes = pre.vocabulary_sizes()
    C, T = len(CONTEXT_FEATURES), vocab_lib.CONTEXT_BINS
    assert (sizes["context_features"], sizes["context_bins"]) == (C, T)
    rows = [_raw([], ("A", "shoes", "acme"), "", "t", 10.0, v)
            for v in (-1.0, 0.0, 2.0, 50.0)]
    dense = pre(_batch(rows))["dense_features"].numpy()
    groups = dense[:, np.asarray(context_group_indices(C, T))]  # [B, C, 2 + T]
    np.testing.assert_array_equal(groups[:, :, 0], dense[:, :C])  # standardised value
    np.testing.assert_array_equal(groups[:, :, 1], dense[:, C:2 * C])  # missing flag
    np.testing.assert_array_equal(groups[:, :, 2:],
                                  dense[:, 2 * C:(2 + T) * C].reshape(-1, C, T))
    np.testing.assert_array_equal(groups[0, :, 1], 1.0)  # -1: undefined


def test_context_embedding_per_feature_in_the_backbone_and_reload(tmp_path):
    from zoo.models.testing import random_raw_batch
    from zoo.models.features import split_labels

    d = 4
    model = zoo.get("bert_mtl", "tiny", context_embedding_dim=d)
    backbone = model.backbone
    sizes = backbone.vocabulary_sizes
    C, T = sizes["context_features"], sizes["context_bins"]
    extra = sizes["dense_features"] - (2 + T) * C  # the in-graph features, kept flat
    assert isinstance(backbone.context_embedding, layers.NumericEmbedding)
    assert tuple(backbone.context_embedding.kernel.shape) == (C, 2 + T, d)
    # Positive weights: every ReLU is open, so any input of a feature moves its embedding.
    emb = backbone.context_embedding
    emb.kernel.assign(np.random.default_rng(1).uniform(0.1, 1.0, emb.kernel.shape)
                      .astype(np.float32))
    emb.bias.assign(np.full(emb.bias.shape, 0.5, np.float32))
    features, _ = split_labels(random_raw_batch(4, 16, seed=6))
    x = model.preprocessor(features)
    base = backbone(x)["context_output"].numpy()
    assert base.shape[1] == C * d + extra + backbone.hidden_dim
    for c, column in [(0, 0), (0, C), (0, 2 * C + T - 1), (3, 2 * C + 3 * T + 2),
                      (C - 1, C - 1)]:
        dense = x["dense_features"].numpy().copy()
        dense[:, column] += 0.7
        got = backbone({**x, "dense_features": tf.constant(dense)})["context_output"].numpy()
        changed = np.abs(got[:, :C * d] - base[:, :C * d]).max(axis=0) > 1e-6
        np.testing.assert_array_equal(np.flatnonzero(changed), np.arange(c * d, (c + 1) * d),
                                      err_msg=f"column {column}")
        # The in-graph features pass as they are.
        np.testing.assert_array_equal(got[:, C * d:C * d + extra], base[:, C * d:C * d + extra])
    # An in-graph feature moves none of the embeddings.
    dense = x["dense_features"].numpy().copy()
    dense[:, -1] += 0.7
    got = backbone({**x, "dense_features": tf.constant(dense)})["context_output"].numpy()
    np.testing.assert_array_equal(got[:, :C * d], base[:, :C * d])
    assert np.abs(got[:, C * d + extra - 1] - base[:, C * d + extra - 1]).min() > 0.5

    # Off by default: the flat vector, as before.
    plain = zoo.get("bert_mtl", "tiny")
    assert plain.backbone.context_embedding is None
    assert (plain.towers["click"][0].kernel.shape[0] - model.towers["click"][0].kernel.shape[0]
            == sizes["dense_features"] - (C * d + extra))
    joined = zoo.get("bert_mtl", "tiny", context_embedding_dim=d, context_embedding_mode="join")
    assert (joined.towers["click"][0].kernel.shape[0] - plain.towers["click"][0].kernel.shape[0]
            == C * d)

    for m, name in ((model, "ne.keras"), (joined, "join.keras")):
        path = str(tmp_path / name)
        m.save(path)
        again = keras.models.load_model(path)
        assert again.backbone.context_embedding_dim == d
        want, got = m(x), again(x)
        for task in ("click", "purchase", "demand"):
            np.testing.assert_allclose(got[task].numpy(), want[task].numpy(), rtol=1e-5)
