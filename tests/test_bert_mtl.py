"""bert_mtl: vocabulary, preprocessor, backbone under XLA, heads, losses."""

import json

import numpy as np
import pytest
import tensorflow as tf

import zoo
from zoo.models import losses
from zoo.models.bert_mtl import end_to_end, fit_vocabulary
from zoo.models.testing import random_raw_batch, split_labels

K = 5


def _np(x):
    return np.asarray(tf.convert_to_tensor(x))


@pytest.fixture(scope="module")
def vocab():
    train, _ = split_labels(random_raw_batch(batch_size=128, history_length=50, seed=0))
    return fit_vocabulary(train, "tiny")


@pytest.fixture(scope="module")
def model(vocab):
    return zoo.get("bert_mtl", "tiny", vocabulary=vocab)


@pytest.fixture(scope="module")
def batch():
    return split_labels(random_raw_batch(batch_size=32, history_length=50, seed=7))


def test_fit_vocabulary_is_json_and_frequency_ordered():
    features = {
        "query": np.array(["red shoes", "", "red phone"], dtype=object),
        "item_title": np.array([b"Red Shoes", b"blue case", b""], dtype=object),
        "item_id": np.array(["b", "a", "b"], dtype=object),
        "hist_item_id": np.array([["c", "b", ""], ["a", "", ""], ["", "", ""]], dtype=object),
        "item_category": np.array(["x", "x", "y"]),
        "item_brand": np.array(["p", "q", "r"]),
        "item_price": np.array([1.0, 10.0, 100.0], np.float32),
        "hist_price": np.array([[5.0, 0.0, 0.0], [20.0, 0.0, 0.0], [50.0, 0.0, 0.0]], np.float32),
    }
    config = zoo.get_config("bert_mtl", "tiny", item_vocab_size=2, num_price_buckets=4)
    vocab = fit_vocabulary(features, config)
    assert json.loads(json.dumps(vocab)) == vocab
    assert vocab["item_id"] == ["b", "a"]  # b: 3, a: 2, c: 1 (capped at 2); "" never
    assert vocab["category"] == ["x", "y"]
    assert vocab["wordpiece"][:5] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    assert "r" in vocab["wordpiece"] and "R" not in vocab["wordpiece"]  # lowercase
    # Frequent words become whole tokens (the learner has a count threshold).
    texts = {"query": np.array(["red shoes", "Red Phone", ""] * 20, dtype=object)}
    wordpiece = fit_vocabulary(texts, config)["wordpiece"]
    assert "red" in wordpiece and "Red" not in wordpiece
    edges = vocab["price_edges"]
    assert len(edges) == 3 and all(a < b for a, b in zip(edges, edges[1:]))


def test_wordpiece_vocabulary_is_learnt_once_per_texts_and_size(monkeypatch):
    """The same texts and size again: the learnt vocabulary, not another call to the
    learner; other texts or another size: learnt anew."""
    import keras_hub
    from zoo.models.ranker import vocabulary

    calls = []
    learner = keras_hub.tokenizers.compute_word_piece_vocabulary

    def counted(*args, **kwargs):
        calls.append(kwargs["vocabulary_size"])
        return learner(*args, **kwargs)

    monkeypatch.setattr(keras_hub.tokenizers, "compute_word_piece_vocabulary", counted)
    monkeypatch.setattr(vocabulary, "_WORDPIECE_MEMO", {})
    texts = np.array(["red shoes", "blue phone case", ""] * 30, dtype=object)
    first = vocabulary.wordpiece_vocabulary(texts, 64)
    first.append("changed by the caller")  # a copy: the memo is not touched
    again = vocabulary.wordpiece_vocabulary(texts.astype(bytes), 64)
    assert len(calls) == 1 and again == first[:-1]
    assert vocabulary.wordpiece_vocabulary(texts, 80) == again  # few words: same tokens
    other = vocabulary.wordpiece_vocabulary(np.array(["green hat"] * 30, dtype=object), 64)
    assert calls == [64, 80, 64] and "green" in other and "green" not in again


def test_outputs_shapes_and_ranges(model, batch):
    features, _ = batch
    out = {k: _np(v) for k, v in model(model.preprocessor(features)).items()}
    B = len(features["query"])
    assert out["click"].shape == (B,) and out["purchase"].shape == (B,)
    assert out["price_range"].shape == (B, K) and out["demand"].shape == (B,)
    assert np.all((out["click"] > 0) & (out["click"] < 1))
    assert np.all(out["purchase"] >= 0)
    np.testing.assert_allclose(out["price_range"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(out["demand"] > 0) and np.all(np.isfinite(out["demand"]))


def test_esmm_purchase_never_exceeds_click(vocab, batch):
    features, _ = batch
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    # Push the towers to extremes: the invariant must still hold exactly.
    for w in model.weights:
        if "logits" in w.path and w.path.endswith("bias"):
            w.assign(np.full(w.shape, 8.0 if "conversion" in w.path else -3.0, np.float32))
    for seed in range(3):
        f, _ = split_labels(random_raw_batch(batch_size=64, history_length=50, seed=seed))
        out = model(model.preprocessor(f), training=True)
        click, purchase = _np(out["click"]), _np(out["purchase"])
        assert np.all(purchase <= click), (purchase - click).max()
    assert purchase.mean() > 0.9 * click.mean()  # the biases did take effect


def test_masked_price_range_label_contributes_nothing():
    probs = tf.constant([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.1, 0.1, 0.2, 0.1]])
    outputs = {"price_range": probs}

    def loss(labels, mask):
        return _np(losses.per_example_losses(
            {"price_range": tf.constant(labels, tf.int64),
             "price_range_mask": tf.constant(mask, tf.float32)}, outputs)["price_range"])

    base = loss([-1, 0], [0.0, 1.0])
    assert base[0] == 0.0
    np.testing.assert_allclose(base[1], -np.log(0.5), rtol=1e-6)
    # Changing a masked label (even from the -1 placeholder) changes nothing ...
    np.testing.assert_array_equal(loss([3, 0], [0.0, 1.0]), base)
    np.testing.assert_array_equal(loss([4, 0], [0.0, 1.0]), base)
    # ... while changing an unmasked one does.
    changed = loss([-1, 2], [0.0, 1.0])
    assert changed[0] == 0.0 and abs(changed[1] - base[1]) > 0.1


def test_price_range_label_smoothing_by_hand():
    probs = tf.constant([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.1, 0.1, 0.2, 0.1]])
    labels = {"price_range": tf.constant([-1, 0], tf.int64),
              "price_range_mask": tf.constant([0.0, 1.0])}
    got = _np(losses.per_example_losses(labels, {"price_range": probs},
                                        price_range_label_smoothing=0.2)["price_range"])
    p = np.array([0.5, 0.1, 0.1, 0.2, 0.1])
    assert got[0] == 0.0
    np.testing.assert_allclose(got[1], 0.8 * -np.log(0.5) + 0.2 * -np.log(p).mean(), rtol=1e-6)
    # The model declares it: its per_example_losses use its own smoothing.
    model = zoo.get("bert_mtl", "tiny", price_range_label_smoothing=0.2)
    np.testing.assert_allclose(_np(model.per_example_losses(
        labels, {"price_range": probs})["price_range"]), got, rtol=1e-6)


def test_poisson_loss_against_hand_computed_value():
    outputs = {"demand": tf.constant([2.0, 0.5, 3.0])}
    labels = {"demand": tf.constant([3.0, 0.0, 1.0])}
    got = _np(losses.per_example_losses(labels, outputs)["demand"])
    # rate - y * log(rate)
    np.testing.assert_allclose(got, [2.0 - 3.0 * np.log(2.0), 0.5, 3.0 - np.log(3.0)],
                               rtol=1e-5)
    np.testing.assert_allclose(got[0], -0.0794415, atol=1e-5)


def test_bce_losses_and_combine():
    outputs = {"click": tf.constant([0.8, 0.2]), "purchase": tf.constant([0.4, 0.1])}
    labels = {"click": tf.constant([1, 0], tf.int64), "purchase": tf.constant([0, 0], tf.int64)}
    per = losses.per_example_losses(labels, outputs)
    np.testing.assert_allclose(_np(per["click"]), [-np.log(0.8), -np.log(0.8)], rtol=1e-5)
    np.testing.assert_allclose(_np(per["purchase"]), [-np.log(0.6), -np.log(0.9)], rtol=1e-5)
    total = _np(losses.combine(per, {"click": 2.0, "purchase": 0.5}))
    np.testing.assert_allclose(total, 2 * _np(per["click"]) + 0.5 * _np(per["purchase"]),
                               rtol=1e-6)
    assert total.shape == (2,)
    with pytest.raises(ValueError, match="demand"):
        losses.combine(per, {"demand": 1.0})


def test_losses_on_model_outputs_are_per_example_and_finite(model, batch):
    features, labels = batch
    out = model(model.preprocessor(features), training=True)
    per = losses.per_example_losses({k: tf.constant(v) for k, v in labels.items()}, out)
    assert set(per) == {"click", "purchase", "price_range", "demand"}
    B = len(features["query"])
    for task, value in per.items():
        assert _np(value).shape == (B,) and np.all(np.isfinite(_np(value))), task
    missing = labels["price_range_mask"] == 0
    assert missing.any() and np.all(_np(per["price_range"])[missing] == 0.0)


def test_preprocessor_handles_oov_empty_queries_and_history_lengths(model):
    pre = model.preprocessor
    n_oov = pre.num_oov_indices
    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=5, seed=2,
                                           oov_fraction=0.0))
    known = model.vocabulary["item_id"][0]
    raw["item_id"] = np.array(["never-seen-1", "never-seen-2", known, ""], dtype=object)
    raw["query"] = np.array(["", "", "red shoes", "zzqx unknownword"], dtype=object)
    raw["hist_item_id"][0] = ["unseen-a", "unseen-b", known, "", ""]
    raw["hist_event"][0] = ["click", "cart", "purchase", "", ""]
    out = {k: _np(v) for k, v in pre(raw).items()}

    assert np.all((out["item_index"][:2] >= 1) & (out["item_index"][:2] <= n_oov))  # OOV
    assert out["item_index"][2] == n_oov + 1  # the most frequent id comes first
    assert out["item_index"][3] == 0  # "" is padding
    q = out["query_tokens"]
    assert q.shape == (4, pre.max_query_tokens)
    assert np.all(q[:2] == 0) and np.all(q[2:, 0] > 0)  # empty queries are all [PAD]
    assert 3 in q[3]  # [UNK] for characters the vocabulary lacks
    H = pre.max_history
    assert out["hist_mask"].shape == (4, H)  # 5 columns padded to max_history
    np.testing.assert_array_equal(out["hist_mask"][0], [1, 1, 1] + [0] * (H - 3))
    hist_items = out["hist_item_index"][0]
    assert np.all((hist_items[:2] >= 1) & (hist_items[:2] <= n_oov))
    assert out["hist_item_index"][0, 2] == n_oov + 1
    assert np.all(out["hist_item_index"][0, 3:] == 0)
    events = out["hist_event_index"][0]
    assert len(set(events[:3])) == 3 and np.all(events[3:] == 0)
    for key in ("hist_price_bucket", "hist_gap_bucket", "hist_category_index"):
        assert np.all(out[key][out["hist_mask"] == 0] == 0), key
        assert np.all(out[key][out["hist_mask"] == 1] > 0), key
    # The model runs on it.
    res = model(pre(raw))
    assert np.all(np.isfinite(_np(res["click"])))


def test_history_is_truncated_to_the_most_recent_events(model):
    pre = model.preprocessor
    raw, _ = split_labels(random_raw_batch(batch_size=2, history_length=50, seed=4,
                                           oov_fraction=0.0))
    known = model.vocabulary["item_id"]
    raw["hist_item_id"][0] = [known[i % len(known)] for i in range(50)]
    out = _np(pre(raw)["hist_item_index"])
    assert out.shape == (2, pre.max_history)
    expected = [pre.num_oov_indices + 1 + (i % len(known)) for i in range(pre.max_history)]
    np.testing.assert_array_equal(out[0], expected)


def test_preprocessor_in_tf_data_matches_eager(model, batch):
    features, _ = batch
    eager = {k: _np(v) for k, v in model.preprocessor(features).items()}
    ds = tf.data.Dataset.from_tensor_slices(features).batch(32).map(model.preprocessor)
    mapped = next(iter(ds))
    for key, value in eager.items():
        np.testing.assert_array_equal(mapped[key].numpy(), value, err_msg=key)


def test_backbone_and_train_step_run_under_xla(model, batch):
    features, labels = batch
    x = {k: tf.constant(v) for k, v in model.preprocessor(features).items()}
    y = {k: tf.constant(v) for k, v in labels.items()}

    @tf.function(jit_compile=True)
    def encode(x):
        return model.backbone(x, training=False)["cls_output"]

    np.testing.assert_allclose(_np(encode(x)),
                               _np(model.backbone(x, training=False)["cls_output"]),
                               rtol=1e-4, atol=1e-4)

    @tf.function(jit_compile=True)
    def grads(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.nn.compute_average_loss(
                losses.combine(losses.per_example_losses(y, out)), global_batch_size=32)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, g = grads(x, y)
    assert np.isfinite(_np(loss))
    assert all(v is not None for v in g)
    assert all(np.all(np.isfinite(_np(tf.convert_to_tensor(v)))) for v in g)


def test_end_to_end_model_matches_two_step_call(model, batch):
    features, _ = batch
    serving = end_to_end(model)
    assert set(serving.input) == set(zoo.models.features.RAW_FEATURES)
    direct = model(model.preprocessor(features))
    served = serving(features)
    for key in direct:
        np.testing.assert_allclose(_np(served[key]), _np(direct[key]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("to_heads", [True, False])
def test_heads_read_the_candidate_embedding_past_the_encoder(vocab, batch, to_heads, tmp_path):
    import keras
    features, _ = batch
    # The other direct paths to the heads (target attention, context features) off.
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab, candidate_embedding_to_heads=to_heads,
                    target_attention=False, context_features=False)
    x = model.preprocessor(features)
    model(x)
    # Zeroed transformer layers (post-LN, gamma 0) output zeros: the encoder path is cut.
    for layer in model.backbone.transformer_layers:
        for w in layer.weights:
            w.assign(np.zeros(w.shape, np.float32))
    assert np.abs(_np(model.backbone(x)["candidate_output"])).max() == 0.0
    click = _np(model(x)["click"])
    if to_heads:  # the candidates still differ through their own embedding
        assert click.std() > 1e-4, click
    else:
        np.testing.assert_allclose(click, click[0], rtol=1e-6)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.candidate_embedding_to_heads == to_heads
    np.testing.assert_allclose(_np(reloaded(x)["click"]), click, rtol=1e-5, atol=1e-7)


def test_history_titles_come_from_the_vocabularys_catalogue(vocab, batch, tmp_path):
    import keras
    features, _ = batch
    from zoo.models.ranker.vocabulary import item_titles
    # The first non-empty title an item had as a candidate; "" when it never had one.
    assert item_titles(["a", "b", "c"], {
        "item_id": np.array([b"b", b"a", b"a", b"b"], dtype=object),
        "item_title": np.array([b"", b"red shoe", b"blue shoe", b"hat"], dtype=object),
    }) == ["red shoe", "hat", ""]
    titles = dict(zip(vocab["item_id"], vocab["item_titles"]))
    assert sum(t != "" for t in titles.values()) > 10
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab, history_titles=True)
    x = model.preprocessor(features)
    hist = _np(x["hist_title_tokens"])
    assert hist.shape == (32, 16, 8)
    # Each history event carries its item's title, tokenised as a candidate title is.
    rows = model.preprocessor({**features, "item_title": np.asarray(
        [titles.get(i.decode() if isinstance(i, bytes) else str(i), "")
         for i in np.asarray(features["hist_item_id"])[:, 0]], dtype=object)})
    np.testing.assert_array_equal(hist[:, 0, :], _np(rows["title_tokens"]) * _np(
        x["hist_mask"])[:, :1] * (_np(x["hist_item_index"])[:, :1] > 2))
    assert (hist[_np(x["hist_mask"]) == 0] == 0).all()
    out = model(x)
    # The titles reach the encoder: without them its history outputs change.
    y = dict(x)
    y["hist_title_tokens"] = tf.zeros_like(x["hist_title_tokens"])
    with_titles = _np(model.backbone(x)["sequence_output"])
    without = _np(model.backbone(y)["sequence_output"])
    assert np.abs(with_titles - without).max() > 1e-2
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(reloaded(reloaded.preprocessor(features))["click"]),
                               _np(out["click"]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="history_titles"):
        zoo.get("bert_mtl", "tiny", vocabulary=vocab, history_titles=True, max_title_tokens=0)


@pytest.mark.parametrize("family", ["bert_mtl", "dnn_mtl"])
def test_user_embedding_known_users_differ_new_users_share_oov(vocab, batch, family, tmp_path):
    import keras
    features, _ = batch
    users = vocab["user_id"]
    assert len(users) == 3 and set(users) == {"u0", "u1", "u2"}  # random_raw_batch's users
    model = zoo.get(family, "tiny", vocabulary=vocab)
    one = {k: np.asarray(v)[:1].repeat(4, axis=0) for k, v in features.items()}
    one["user_id"] = np.array(["u0", "u1", "never-seen-a", "never-seen-b"], dtype=object)
    x = model.preprocessor(one)
    index = _np(x["user_index"])
    num_oov = zoo.get_config(family, "tiny")["num_oov_indices"]
    assert index[0] != index[1] and min(index[:2]) > num_oov  # own rows past the OOV buckets
    assert 1 <= index[2] <= num_oov and 1 <= index[3] <= num_oov
    click = _np(model(x)["click"])
    # Same impression, other user: the user reaches what the heads read (checked there: an
    # untrained tiny model's click may move by only ~1e-6).
    heads_input = _np(model.backbone(x)["candidate_output"])
    assert np.abs(heads_input[0] - heads_input[1]).max() > 1e-2
    # user_vocab_size=0 turns it off, even with users in the vocabulary (a pre-trained
    # encoder's); a vocabulary without users gives no user input either; a smaller size
    # keeps the most active users only.
    off = zoo.get(family, "tiny", user_vocab_size=0, vocabulary=vocab)
    assert "user_index" not in off.preprocessor(one)
    assert "user_index" not in zoo.get(family, "tiny", vocabulary={
        k: v for k, v in vocab.items() if k != "user_id"}).preprocessor(one)
    two = zoo.get(family, "tiny", user_vocab_size=2, vocabulary=vocab)
    assert two.preprocessor.vocabulary["user_id"] == users[:2]
    # Fitting without a user_id column learns no users (rather than an empty lookup).
    assert "user_id" not in fit_vocabulary(
        {k: v for k, v in features.items() if k != "user_id"}, "tiny")
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(reloaded(reloaded.preprocessor(one))["click"]), click,
                               rtol=1e-5, atol=1e-7)


def test_a_model_saved_under_the_earlier_class_names_still_loads(model, batch, tmp_path):
    """`MultitaskRanker` / `RankerPreprocessor` were `BertMtl` / `BertMtlPreprocessor` in
    `zoo.models.bert_mtl.task` / `.preprocessor`: a .keras file naming those loads."""
    import zipfile

    path = str(tmp_path / "new.keras")
    model.save(path)
    old = str(tmp_path / "old.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = data.decode()
                assert "ecom_zoo>MultitaskRanker" in text
                text = (text.replace("zoo.models.ranker.task", "zoo.models.bert_mtl.task")
                        .replace("zoo.models.ranker.preprocessor",
                                 "zoo.models.bert_mtl.preprocessor")
                        .replace("MultitaskRanker", "BertMtl")
                        .replace("RankerPreprocessor", "BertMtlPreprocessor"))
                assert "MultitaskRanker" not in text and "RankerPreprocessor" not in text
                data = text.encode()
            dst.writestr(item, data)
    reloaded = zoo.load_model(old)
    x = model.preprocessor(batch[0])
    for k, v in model(x).items():
        np.testing.assert_allclose(_np(reloaded(reloaded.preprocessor(batch[0]))[k]), _np(v),
                                   rtol=1e-5, atol=1e-6, err_msg=k)
