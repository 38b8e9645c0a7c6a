"""Pre-training, loading the pre-trained encoder, LoRA and frozen-encoder fine-tuning."""

import dataclasses
import json
import os

import numpy as np
import pytest

from helpers import LABEL_CFG
from trainers.core import config as config_lib, multitask_task, pretrain_task


@pytest.fixture(scope="module")
def pretrained(shop, tmp_path_factory):
    from trainers import pretrain
    data, tfds_dir = shop
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=str(tmp_path_factory.mktemp("pretrain") / "tiny"), steps=120, batch_size=64,
        learning_rate=3e-3, warmup_steps=10, task_weights=pretrain_task.DEFAULT_TASK_WEIGHTS,
        steps_per_loop=20, checkpoint_every=1000, verbose=False)
    return config, pretrain.run(config)


def _weights(layer):
    return {v.path: np.array(v.numpy()) for v in layer.weights}


def test_pretraining_learns_and_writes_an_encoder(pretrained):
    config, result = pretrained
    assert result["step"] == 120
    first, last = result["loss_curve"][0], result["loss_curve"][-1]
    for task in ("loss", "item", "category", "query", "next_item", "next_category"):
        assert last[task] < first[task], (task, first, last)
    assert set(result["metrics"]) == {"item/masked_accuracy", "category/masked_accuracy",
                                      "query/masked_accuracy", "next_item/accuracy",
                                      "next_category/accuracy"}
    # Categories are few and predictable from the neighbouring events: better than chance.
    assert result["metrics"]["category/masked_accuracy"] > 0.05
    assert os.path.exists(pretrain_task.encoder_path(config.model_dir) + ".index")
    for name in ("vocabulary.json", "pretrain_config.json", "metrics.json"):
        assert os.path.exists(os.path.join(config.model_dir, name))


def test_the_encoder_loads_into_a_fresh_model_and_the_heads_stay_fresh(pretrained):
    import keras
    import zoo
    from zoo.models.testing import random_raw_batch, split_labels

    config, _ = pretrained
    with open(os.path.join(config.model_dir, "vocabulary.json")) as f:
        vocab = json.load(f)
    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    models = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        m = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
        m(m.preprocessor(raw))
        models.append(m)
    a, b = models
    backbone_before = _weights(a.backbone)
    heads_before = {k: v for k, v in _weights(a).items() if k not in backbone_before}
    assert heads_before
    for m in models:
        multitask_task.init_encoder(m, config.model_dir)
    backbone_a, backbone_b = _weights(a.backbone), _weights(b.backbone)
    for k, v in backbone_a.items():  # the same pre-trained values in both models
        np.testing.assert_array_equal(v, backbone_b[k], err_msg=k)
    assert any(not np.array_equal(v, backbone_before[k]) for k, v in backbone_a.items())
    for k, v in heads_before.items():  # heads untouched by the load
        np.testing.assert_array_equal(v, _weights(a)[k], err_msg=k)
    # A different encoder size cannot take these weights: a clear error, not a partial load.
    other = zoo.get("bert_mtl", "tiny", vocabulary=vocab, hidden_dim=48)
    other(other.preprocessor(raw))
    with pytest.raises(ValueError, match="does not fit"):
        multitask_task.init_encoder(other, config.model_dir)


def test_lora_fine_tuning_trains_adapters_and_heads_only(pretrained, shop, tmp_path):
    import zoo
    from export import saved_model
    from trainers import multitask

    pt_config, _ = pretrained
    data, tfds_dir = shop
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=str(tmp_path / "lora"), steps=40, batch_size=64, learning_rate=3e-3,
        init_checkpoint=pt_config.model_dir, lora_rank=2, labels_fraction=0.5,
        steps_per_loop=20, checkpoint_every=1000, verbose=False)
    result = multitask.run(config)
    trained = zoo.load_model(os.path.join(config.model_dir, "model.keras"))
    # What trains in the encoder is the adapters (and the biases beside them): a few
    # hundred numbers; the heads, which read the context features too, train whole.
    encoder = {id(w) for w in trained.backbone.weights}
    heads = sum(int(np.prod(w.shape)) for w in trained.weights if id(w) not in encoder)
    encoder_trainable = result["trainable_parameters"] - heads
    assert 0 < encoder_trainable < 0.02 * (result["parameters"] - heads), (
        encoder_trainable, heads, result)
    with open(os.path.join(config.model_dir, "vocabulary.json")) as f:
        vocab = json.load(f)
    assert vocab == json.load(open(os.path.join(pt_config.model_dir, "vocabulary.json")))
    reference = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    from zoo.models.testing import random_raw_batch, split_labels
    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    reference(reference.preprocessor(raw))
    multitask_task.init_encoder(reference, pt_config.model_dir)
    ref, got = _weights(reference.backbone), _weights(trained.backbone)
    frozen = [k for k in ref if "query" not in k and "value" not in k]
    assert len(frozen) > 10
    for k in frozen:  # embeddings, feed-forward, norms: exactly the pre-trained values
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # The adapters moved the attention's query/value projections; the heads trained too.
    assert any(not np.allclose(got[k], ref[k]) for k in ref if k not in frozen)
    # The LoRA model exports and serves unchanged (export checks it against Keras).
    saved_model.export(config.model_dir, str(tmp_path / "exports"), "lora")


@pytest.mark.parametrize("flags", [{"lora_train_embeddings": True},
                                   {"lora_rank": 2, "freeze_encoder": True}])
def test_conflicting_fine_tuning_flags_fail_before_anything_is_written(flags, shop, tmp_path):
    from trainers import multitask
    data, tfds_dir = shop
    config = config_lib.TrainConfig(data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG,
                                   preset="tiny", model_dir=str(tmp_path / "m"), steps=2,
                                   verbose=False, **flags)
    with pytest.raises(ValueError, match="lora"):
        multitask.run(config)
    assert not os.path.exists(config.model_dir)  # checked before the model_dir is made


def test_freeze_encoder_trains_the_heads_only():
    import zoo
    from zoo.models.testing import random_raw_batch, split_labels
    raw, _ = split_labels(random_raw_batch(batch_size=16, history_length=16, seed=0))
    from zoo.models.bert_mtl import fit_vocabulary
    model = zoo.get("bert_mtl", "tiny", vocabulary=fit_vocabulary(raw, "tiny"))
    model(model.preprocessor(raw))
    config = config_lib.TrainConfig(freeze_encoder=True)
    multitask_task.adapt_for_fine_tuning(model, config)
    trainable = {id(v) for v in model.trainable_variables}
    assert trainable and not trainable & {id(v) for v in model.backbone.weights}
    with pytest.raises(ValueError, match="exclude"):
        multitask_task.adapt_for_fine_tuning(model, dataclasses.replace(config, lora_rank=2))


def test_lora_train_embeddings_adds_the_input_embeddings_only():
    import zoo
    from zoo.models.bert_mtl import fit_vocabulary
    from zoo.models.testing import random_raw_batch, split_labels
    raw, _ = split_labels(random_raw_batch(batch_size=16, history_length=16, seed=0))
    vocab = fit_vocabulary(raw, "tiny")

    def trainable_paths(**kw):
        model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
        model(model.preprocessor(raw))
        multitask_task.adapt_for_fine_tuning(model, config_lib.TrainConfig(lora_rank=2, **kw))
        backbone = {id(v) for v in model.backbone.weights}
        return {v.path for v in model.trainable_variables if id(v) in backbone}

    lora = trainable_paths()
    # The adapters (Keras keeps the adapted layers' biases trainable too).
    assert any("lora" in p for p in lora)
    assert all(p.split("/")[-2] in ("query", "value") for p in lora), lora
    with_emb = trainable_paths(lora_train_embeddings=True)
    added = with_emb - lora
    assert {"item_embedding", "user_embedding", "impression_position_embedding"} <= {
        p.split("/")[-2] for p in added}
    assert all(p.startswith("embeddings/") for p in added)  # not the transformer layers
    with pytest.raises(ValueError, match="needs --lora_rank"):
        multitask_task.adapt_for_fine_tuning(zoo.get("bert_mtl", "tiny", vocabulary=vocab),
                                        config_lib.TrainConfig(lora_train_embeddings=True))


@pytest.mark.parametrize("unit", ["item", "position"])
def test_masking_by_item_leaves_no_visible_copy_of_a_masked_item(unit):
    import tensorflow as tf
    from zoo.models.bert_mtl.pretrainer import EventMasker

    tf.random.set_seed(3)
    rng = np.random.default_rng(0)
    B, H = 64, 20
    items = rng.integers(1, 8, (B, H))  # few items: every row repeats some
    items[:, 15:] = 0                   # padding
    x = {"hist_item_index": tf.constant(items, tf.int32),
         "hist_category_index": tf.constant(items % 3 + 1, tf.int32),
         "hist_brand_index": tf.constant(items % 5 + 1, tf.int32),
         "hist_price_bucket": tf.constant(items % 4 + 1, tf.int32),
         "query_tokens": tf.constant(rng.integers(5, 50, (B, 8)), tf.int32),
         "hist_title_tokens": tf.constant(np.repeat(items[:, :, None], 3, axis=2) + 10,
                                          tf.int32)}
    masker = EventMasker({"item": 8, "wordpiece": 50}, max_history=H, max_query_tokens=8,
                         mask_token_id=4, event_rate=0.15, mask_unit=unit)
    inputs, targets = masker(x)
    masked_items = inputs["hist_item_index"].numpy()
    target_items = targets["item"].numpy()
    weights = targets["event_weights"].numpy()
    positions = inputs["event_mask_positions"].numpy()
    visible_copies = 0
    for b in range(B):
        for t, w, p in zip(target_items[b], weights[b], positions[b]):
            if w > 0:
                assert t == items[b, p] and masked_items[b, p] == 0  # the target is masked
                assert inputs["hist_category_index"].numpy()[b, p] == 0
                assert (inputs["hist_title_tokens"].numpy()[b, p] == 0).all()  # no title
                visible_copies += int((masked_items[b] == t).any())
    assert weights.sum() > 0
    # Padding stays padding; events of unmasked items keep every field.
    kept = masked_items != 0
    np.testing.assert_array_equal(masked_items[kept], items[kept])
    np.testing.assert_array_equal(inputs["hist_title_tokens"].numpy()[kept][:, 0],
                                  items[kept] + 10)
    assert (masked_items[:, 15:] == 0).all()
    if unit == "item":
        assert visible_copies == 0
    else:  # masking by position leaves copies (this data repeats every item)
        assert visible_copies > 0
    with pytest.raises(ValueError, match="pretrain_mask_unit"):
        EventMasker({"item": 8, "wordpiece": 50}, H, 8, 4, mask_unit="token")


def test_next_event_targets_and_head_read_the_candidate_slot():
    """The next-event pretext: "" (no next event) weighs 0, a known item is its lookup
    index, and the head reads the candidate's output (the slot the multi-task towers read),
    so changing only the candidate changes its logits."""
    import tensorflow as tf
    import zoo
    from zoo.models.bert_mtl import pretrainer as pretrainer_lib
    from zoo.models.testing import random_raw_batch, split_labels

    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    model = zoo.get("bert_mtl", "tiny")
    pre = model.preprocessor
    known = pre.vocabulary["item_id"][5]
    raw["next_item_id"] = np.array([known, "", "never-seen", known], dtype=object)
    raw["next_category"] = np.array([pre.vocabulary["category"][2], "", "x", ""], dtype=object)
    t = pretrainer_lib.next_event_targets(pre, {k: tf.constant(v) for k, v in raw.items()})
    np.testing.assert_array_equal(t["next_weights"].numpy()[:, 0], [1, 0, 1, 1])
    idx = t["next_item"].numpy()[:, 0]
    assert idx[0] == idx[3] == 1 + pre.num_oov_indices + 5  # padding, OOV buckets, items
    assert 1 <= idx[2] <= pre.num_oov_indices  # an unknown item lands in an OOV bucket

    masker = pretrainer_lib.make_masker(pre, zoo.get_config("bert_mtl", "tiny"))
    net = pretrainer_lib.BertMtlPretrainer(model.backbone, masker.num_events,
                                           masker.num_tokens)
    tf.random.set_seed(0)
    x, _ = masker(pre({k: tf.constant(v) for k, v in raw.items()}))
    a = net(x)["next_item"].numpy()
    assert a.shape == (4, 1, model.backbone.vocabulary_sizes["item"])
    # The logits are the head applied to the backbone's candidate output (the last slot),
    # not to [CLS] or a history slot (attention mixes every position, so a changed
    # candidate alone would not tell them apart).
    backbone_inputs = {k: v for k, v in x.items() if k in model.backbone.input}
    candidate = model.backbone(backbone_inputs)["candidate_output"][:, None, :]
    want = net.next_item_head(candidate, mask_positions=tf.zeros([4, 1], tf.int32)).numpy()
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-5)
    cls = model.backbone(backbone_inputs)["cls_output"][:, None, :]
    assert np.abs(a - net.next_item_head(
        cls, mask_positions=tf.zeros([4, 1], tf.int32)).numpy()).max() > 1e-3


def test_mask_candidate_hides_the_candidate_from_pre_training():
    """pretrain_mask_candidate (the default): the candidate's fields become the [MASK]
    event (0), so the next-event pretext cannot see which item was shown; the user and the
    history stay."""
    import tensorflow as tf
    import zoo
    from zoo.models.bert_mtl import pretrainer as pretrainer_lib
    from zoo.models.testing import random_raw_batch, split_labels

    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    model = zoo.get("bert_mtl", "tiny")
    pre = model.preprocessor
    config = {**zoo.get_config("bert_mtl", "tiny"), "pretrain_mask_candidate": True}
    masker = pretrainer_lib.make_masker(pre, config)
    net = pretrainer_lib.BertMtlPretrainer(model.backbone, masker.num_events,
                                           masker.num_tokens)
    shown = pre({k: tf.constant(v) for k, v in raw.items()})
    x, _ = masker(shown)
    for name in pretrainer_lib.CANDIDATE_FIELDS:
        if name in shown:
            assert np.any(shown[name].numpy()), name  # there was a candidate to hide
            assert not np.any(x[name].numpy()), name
    np.testing.assert_array_equal(x["user_index"], shown["user_index"])
    np.testing.assert_array_equal(x["hist_event_index"], shown["hist_event_index"])
    # What was hidden mattered: the same masked input with the candidate put back gives
    # other next-event logits.
    back = {**x, **{k: shown[k] for k in pretrainer_lib.CANDIDATE_FIELDS if k in shown}}
    assert np.abs(net(x)["next_item"].numpy() - net(back)["next_item"].numpy()).max() > 1e-4


def test_the_pre_trained_encoder_initialises_the_retriever(pretrained, shop, tmp_path):
    """`--model two_tower --init_checkpoint P`: the towers start from the encoder's tables and
    layer (equal values right after the build), the run trains and records its parent; an
    encoder of another width is a clear error before any step."""
    from trainers import multitask
    from trainers.core import retrieval_task
    from zoo.models.testing import random_raw_batch, split_labels
    import zoo

    pre_config, _ = pretrained
    with open(os.path.join(pre_config.model_dir, "vocabulary.json")) as f:
        vocab = json.load(f)
    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    encoder = retrieval_task.pretrained_encoder(pre_config.model_dir, raw)
    retriever = zoo.get("two_tower", "tiny", vocabulary=vocab)
    retriever(retriever.preprocess(raw))
    before = np.array(retriever.backbone.item_embedding.embeddings.numpy())
    copied = retriever.initialise_from_encoder(encoder, vocab)
    assert {"item_embedding", "word_embedding", "transformer_layer_0"} <= set(copied)
    for name in ("item_embedding", "category_embedding", "word_embedding"):
        np.testing.assert_array_equal(
            getattr(retriever.backbone, name).embeddings.numpy(),
            getattr(encoder.embeddings, name).embeddings.numpy(), err_msg=name)
    assert not np.array_equal(before, retriever.backbone.item_embedding.embeddings.numpy())
    for a, b in zip(retriever.backbone.encoder_layers[0].weights,
                    encoder.transformer_layers[0].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = dict(vocab, item_id=vocab["item_id"][::-1])
    with pytest.raises(ValueError, match="'item_id'"):
        retriever.initialise_from_encoder(encoder, other)
    wide = zoo.get("two_tower", "tiny", vocabulary=vocab, hidden_dim=48)
    wide(wide.preprocess(raw))
    with pytest.raises(ValueError, match="hidden_dim=32"):
        wide.initialise_from_encoder(encoder, vocab)

    data, tfds_dir = shop
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model="two_tower", model_dir=str(tmp_path / "tt"), steps=20, batch_size=64,
        init_checkpoint=pre_config.model_dir, checkpoint_every=1000, verbose=False)
    result = multitask.run(config)
    assert result["step"] == 20 and 0.0 <= result["metrics"]["recall@200"] <= 1.0
    with open(os.path.join(config.model_dir, "run_spec.json")) as f:
        assert json.load(f)["init_checkpoint"] == pre_config.model_dir
    bad = dataclasses.replace(config, model_dir=str(tmp_path / "bad"),
                              init_checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="trainers.pretrain run"):
        multitask.run(bad)
    assert not os.path.exists(bad.model_dir)


def test_next_session_candidates_put_a_clicked_item_first_and_no_clicked_item_after(shop):
    from zoo.data import contract, requests as requests_lib

    data, _ = shop
    tables = contract.read_contract(data)
    ts = np.asarray(tables.events["timestamp"])
    cut = contract.split_time(ts, LABEL_CFG.eval_fraction)
    before = requests_lib.events_before(tables, cut)
    assert np.asarray(before.events["timestamp"]).max() < cut
    assert len(before.events["event_id"]) == int((ts < cut).sum())
    reqs = requests_lib.session_requests(before, int(ts.min()), cut)
    kept, cand = requests_lib.next_session_candidates(before, reqs, int(ts.min()), cut, 7, 3)
    assert 0 < len(kept) < len(reqs)  # sessions without a click have no positive
    assert len(kept) == sum(len(c) > 0 for c in reqs.clicked)
    assert cand.shape == (len(kept), 8)
    category = np.asarray(tables.items["category"].to_numpy(zero_copy_only=False), str)
    same = 0
    for clicked, row in zip(kept.clicked, cand):
        assert row[0] in clicked
        assert not np.isin(row[1:], clicked).any()
        same += int((category[row[1:4]] == category[row[0]]).sum())
    assert same >= 0.9 * 3 * len(kept)  # the first half: the clicked item's category
    again = requests_lib.next_session_candidates(before, reqs, int(ts.min()), cut, 7, 3)[1]
    np.testing.assert_array_equal(cand, again)  # one seed, one draw


def test_next_session_loss_is_the_groups_softmax_cross_entropy():
    import tensorflow as tf
    from zoo.models.bert_mtl import pretrainer as pretrainer_lib

    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], np.float32)
    targets = np.array([1, 0, 0, 0, 0, 1], np.float32)
    net = pretrainer_lib.NextSessionPretrainer.__new__(pretrainer_lib.NextSessionPretrainer)
    net.num_candidates = 3
    got = net.per_example_losses({"next_session": tf.constant(targets)},
                                 {"next_session": tf.constant(logits)})["next_session"]
    want = [np.log(np.exp(r).sum()) - r[k] for r, k in zip(logits, (0, 2))]
    np.testing.assert_allclose(got.numpy(), np.repeat(want, 3), rtol=1e-5)
    acc = pretrainer_lib.group_accuracy(targets.reshape(2, 3), logits)
    assert acc == {"next_session/accuracy": 0.5, "next_session/mrr": 0.75}


def test_next_session_pretext_trains_an_encoder_that_fine_tuning_loads(shop, tmp_path):
    from trainers import pretrain

    data, tfds_dir = shop
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=str(tmp_path / "ns"), steps=80, batch_size=64, learning_rate=3e-3,
        warmup_steps=10, steps_per_loop=20, checkpoint_every=1000, verbose=False)
    with pytest.raises(ValueError, match="multiple of the 16 candidates"):
        pretrain.run(dataclasses.replace(config, batch_size=60), "next_session", 15)
    assert not os.path.exists(config.model_dir)  # refused before anything was written
    with pytest.raises(ValueError, match="--pretext must be one of"):
        pretrain.run(config, "next_click", 7)
    result = pretrain.run(config, "next_session", 7)
    assert result["step"] == 80
    first, last = result["loss_curve"][0], result["loss_curve"][-1]
    assert last["next_session"] < first["next_session"] - 0.1, (first, last)
    # Chance is 1/8: 80 steps of a tiny model already pick the clicked item 1.5x as often.
    assert result["metrics"]["next_session/accuracy"] > 1.5 / 8, result["metrics"]
    assert 0.0 < result["metrics"]["next_session/mrr"] <= 1.0
    _assert_fine_tuning_loads_the_encoder(config.model_dir)


def test_joint_pretext_trains_both_pretexts_on_one_encoder(shop, tmp_path):
    from trainers import pretrain

    data, tfds_dir = shop
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=str(tmp_path / "joint"), steps=60, batch_size=64, learning_rate=3e-3,
        warmup_steps=10, steps_per_loop=20, checkpoint_every=1000, verbose=False,
        task_weights=pretrain_task.DEFAULT_TASK_WEIGHTS)
    with pytest.raises(ValueError, match="unknown task 'retrieval'"):
        pretrain.run(dataclasses.replace(config, task_weights="retrieval=1"), "joint", 7)
    assert not os.path.exists(config.model_dir)
    # next_session alone has one loss: the masked tasks' weights are refused by name.
    with pytest.raises(ValueError, match="unknown task 'item'"):
        pretrain.run(dataclasses.replace(config, task_weights="item=2"), "next_session", 7)
    result = pretrain.run(config, "joint", 7)
    assert result["step"] == 60
    first, last = result["loss_curve"][0], result["loss_curve"][-1]
    for task in ("item", "category", "next_item", "next_session"):
        assert last[task] < first[task] - 0.05, (task, first, last)
    # The default weighs the masked tasks at 0.2: the total is that weighted sum.
    weights = config_lib.parse_task_weights(pretrain_task.JOINT_TASK_WEIGHTS,
                                            pretrain_task.make_task("joint").loss_names)
    assert weights["item"] == 0.2 and weights["next_session"] == 1.0
    np.testing.assert_allclose(last["loss"], sum(w * last[t] for t, w in weights.items()),
                               rtol=1e-4)
    metrics = result["metrics"]
    assert metrics["next_session/accuracy"] > 1.5 / 8, metrics
    assert 0.0 <= metrics["item/masked_accuracy"] <= 1.0 and "next_item/accuracy" in metrics
    # The encoder it leaves is the one both pretexts trained: fine-tuning loads it.
    _assert_fine_tuning_loads_the_encoder(config.model_dir)


def _assert_fine_tuning_loads_the_encoder(model_dir):
    """A fresh tiny model on the run's vocabulary takes the encoder, and it changes it."""
    from zoo.models.testing import random_raw_batch, split_labels
    import zoo

    with open(os.path.join(model_dir, "vocabulary.json")) as f:
        vocab = json.load(f)
    raw, _ = split_labels(random_raw_batch(batch_size=4, history_length=16, seed=1))
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    model(model.preprocessor(raw))
    before = _weights(model.backbone)
    multitask_task.init_encoder(model, model_dir)
    assert any(not np.array_equal(v, before[k]) for k, v in _weights(model.backbone).items())
