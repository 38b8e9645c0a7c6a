"""Multi-task structures (shared bottom, MMoE, PLE), the naive purchase head, dnn_mtl."""

import numpy as np
import pytest
import tensorflow as tf

import zoo
from zoo.models.features import TASKS
from zoo.models import losses
from zoo.models.bert_mtl import MultitaskRanker, end_to_end, fit_vocabulary
from zoo.models.testing import random_raw_batch, split_labels

NEW_MODELS = ("shared_bottom", "mmoe", "ple", "dnn_mtl")
HISTORY = 50


def _np(x):
    return np.asarray(tf.convert_to_tensor(x))


@pytest.fixture(scope="module")
def vocab():
    train, _ = split_labels(random_raw_batch(batch_size=128, history_length=HISTORY, seed=0))
    return fit_vocabulary(train, "tiny")


@pytest.fixture(scope="module")
def batch():
    features, labels = split_labels(random_raw_batch(batch_size=32, history_length=HISTORY,
                                                     seed=7))
    return features, {k: tf.constant(v) for k, v in labels.items()}


def _preprocessed(model, features):
    return {k: tf.constant(v) for k, v in model.preprocessor(features).items()}


def _trainer(model, tmp_path, batch_size=32):
    import keras

    from trainers.core import loop

    config = loop.LoopConfig(total_steps=10, global_batch_size=batch_size, task_weights={},
                             jit_compile=False)
    return loop.Trainer(tf.distribute.get_strategy(), model,
                        keras.optimizers.Adam(1e-2), config,
                        checkpoint_dir=str(tmp_path / "ckpt"), summary_dir=None, tasks=TASKS)


def test_registry_lists_the_new_models_with_tiny_and_small():
    listing = zoo.list()
    bert = zoo.get_config("bert_mtl", "tiny")
    for name in NEW_MODELS:
        assert listing[name] == ("tiny", "small"), name
        assert zoo.describe(name)["description"]
        config = zoo.get_config(name, "tiny")
        assert config["structure"] == ("shared_bottom" if name == "dnn_mtl" else name)
        assert config["purchase_head"] == "esmm"
        # Same preprocessing, hence the same vocabularies, as bert_mtl.
        from zoo.models.dnn_mtl.presets import PREPROCESSING_KEYS
        assert {k: config[k] for k in PREPROCESSING_KEYS} == {
            k: bert[k] for k in PREPROCESSING_KEYS}, name
    # bert_mtl is the shared-bottom ESMM model; its structure keys can be overridden.
    assert bert["structure"] == "shared_bottom" and bert["purchase_head"] == "esmm"
    assert zoo.get_config("mmoe", "tiny")["num_experts"] == 3
    assert zoo.get_config("ple", "small")["num_levels"] >= 2
    with pytest.raises(ValueError, match="structure"):
        zoo.get("mmoe", "tiny", structure="moe")
    with pytest.raises(ValueError, match="purchase_head"):
        zoo.get("ple", "tiny", purchase_head="both")


def test_shared_bottom_is_bert_mtl(vocab, batch):
    features, _ = batch
    bert = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    shared = zoo.get("shared_bottom", "tiny", vocabulary=vocab)
    assert [w.shape for w in shared.weights] == [w.shape for w in bert.weights]
    shared.set_weights(bert.get_weights())
    x = _preprocessed(bert, features)
    a, b = bert(x), shared(x)
    for k in a:
        np.testing.assert_array_equal(_np(a[k]), _np(b[k]), err_msg=k)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_trains_saves_reloads_and_exports(name, vocab, batch, tmp_path):
    from export.saved_model import SIGNATURE_RAW, write_saved_model

    features, labels = batch
    # No dropout, and the rank as a feature: at this test's learning rate (1e-2) PAL's
    # scaled position logits move ~1 a step and the six steps on one batch oscillate.
    model = zoo.get(name, "tiny", vocabulary=vocab, dropout=0.0, position_bias="feature")
    assert isinstance(model, MultitaskRanker)
    x = _preprocessed(model, features)
    trainer = _trainer(model, tmp_path)
    totals = [float(trainer._replica_step((x, labels))[0]) for _ in range(6)]
    assert all(np.isfinite(totals)) and totals[-1] < totals[0] - 0.05, totals

    before = {k: _np(v) for k, v in model(x).items()}
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = zoo.load_model(path)  # safe mode
    assert type(loaded) is MultitaskRanker and type(loaded.backbone) is type(model.backbone)
    for key in ("structure", "num_experts", "expert_dim", "num_shared_experts",
                "num_task_experts", "num_levels", "purchase_head"):
        assert loaded.get_config()[key] == model.get_config()[key], key
    after = loaded(_preprocessed(loaded, features))
    for key, value in before.items():
        np.testing.assert_allclose(_np(after[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)

    export_dir = str(tmp_path / "export")
    write_saved_model(loaded, export_dir, HISTORY)
    serving = tf.saved_model.load(export_dir).signatures[SIGNATURE_RAW]
    served = serving(**{k: tf.constant(v) for k, v in features.items()})
    keras_out = end_to_end(loaded)(features)
    for key in before:
        np.testing.assert_allclose(served[key].numpy(), _np(keras_out[key]), rtol=1e-5,
                                   atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["mmoe", "ple"])
def test_gates_sum_to_one_per_task_and_example(name, vocab, batch):
    features, _ = batch
    model = zoo.get(name, "tiny", vocabulary=vocab)
    gates = {k: _np(v) for k, v in model.gate_weights(_preprocessed(model, features)).items()}
    towers = ("click", "conversion", "price_range", "demand")
    B = len(features["query"])
    if name == "mmoe":
        assert set(gates) == set(towers)
        expected = {t: model.num_experts for t in towers}
    else:
        final = model.num_levels - 1
        own = model.num_task_experts + model.num_shared_experts
        expected = {f"level{level}/{t}": own for level in range(model.num_levels)
                    for t in towers}
        expected.update({f"level{level}/shared": 4 * model.num_task_experts
                         + model.num_shared_experts for level in range(final)})
        assert set(gates) == set(expected)
    for key, gate in gates.items():
        assert gate.shape == (B, expected[key]), key
        assert np.all(gate >= 0), key
        np.testing.assert_allclose(gate.sum(-1), 1.0, atol=1e-6, err_msg=key)
    # The gates are input-dependent mixtures, not constants.
    first = next(iter(gates.values()))
    assert np.ptp(first, axis=0).max() > 0


def test_ple_task_experts_get_no_gradient_from_other_tasks(vocab, batch):
    features, labels = batch
    model = zoo.get("ple", "tiny", vocabulary=vocab, dropout=0.0)
    heads = model.multitask_heads
    x = _preprocessed(model, features)
    final = heads.num_levels - 1

    def variables(layers):
        return [v for layer in layers for v in layer.trainable_variables]

    with tf.GradientTape(persistent=True) as tape:
        per_task = losses.per_example_losses(labels, model(x, training=True))
        demand_loss = tf.reduce_mean(per_task["demand"])
        click_loss = tf.reduce_mean(per_task["click"])

    def grads(loss, layers):
        return tape.gradient(loss, variables(layers))

    def silent(gs):
        return all(g is None or not np.any(_np(g)) for g in gs)

    def active(gs):
        return all(g is not None for g in gs) and any(np.any(_np(g)) for g in gs)

    # Final-level experts (and gate) of click: nothing from the demand loss.
    click_final = heads.task_experts(final, "click") + [heads._task_gate(final, 0)]
    assert silent(grads(demand_loss, click_final))
    assert active(grads(click_loss, click_final))
    # ... and the other way round.
    assert silent(grads(click_loss, heads.task_experts(final, "demand")))
    assert active(grads(demand_loss, heads.task_experts(final, "demand")))
    # Shared experts serve every task, at every level.
    for level in range(heads.num_levels):
        assert active(grads(demand_loss, heads.shared_experts(level)))
        assert active(grads(click_loss, heads.shared_experts(level)))
    # Below the final level a task's experts also feed the shared gate, hence every task
    # (PLE by design: only the final level is task-exclusive).
    assert active(grads(demand_loss, heads.task_experts(0, "click")))


def test_naive_purchase_head(vocab, batch, tmp_path):
    features, labels = batch
    esmm = zoo.get("mmoe", "tiny", vocabulary=vocab, dropout=0.0)
    naive = zoo.get("mmoe", "tiny", vocabulary=vocab, dropout=0.0, purchase_head="naive")
    # Push the towers apart: conversion high, click low.
    for w in esmm.weights:
        if "logits" in w.path and w.path.endswith("bias"):
            w.assign(np.full(w.shape, 3.0 if "conversion" in w.path else -2.0, np.float32))
    naive.set_weights(esmm.get_weights())
    x = _preprocessed(esmm, features)
    e, n = esmm(x), naive(x)
    for key in ("click", "price_range", "demand"):
        np.testing.assert_array_equal(_np(e[key]), _np(n[key]), err_msg=key)
    click = _np(e["click"])
    assert np.all(_np(e["purchase"]) <= click)
    assert np.any(_np(n["purchase"]) > click)  # p(purchase | click): not bounded by click
    np.testing.assert_allclose(_np(n["purchase"]) * click, _np(e["purchase"]), rtol=1e-5)
    assert set(n) == {"click", "purchase", "price_range", "demand"}

    # The loss: exactly 0 on non-clicked impressions, BCE on clicked ones.
    masked = _np(losses.per_example_losses(labels, n, purchase_on_clicks_only=True)["purchase"])
    full = _np(losses.per_example_losses(labels, n)["purchase"])
    # Each model declares the loss it trains on: naive the masked one, ESMM the full one.
    np.testing.assert_array_equal(_np(naive.per_example_losses(labels, n)["purchase"]), masked)
    np.testing.assert_array_equal(
        _np(esmm.per_example_losses(labels, e)["purchase"]),
        _np(losses.per_example_losses(labels, e)["purchase"]))
    clicked = _np(labels["click"]) == 1
    assert clicked.any() and (~clicked).any()
    assert np.all(masked[~clicked] == 0.0)
    np.testing.assert_array_equal(masked[clicked], full[clicked])
    # A purchase label on a non-clicked row changes nothing.
    flipped = dict(labels, purchase=tf.where(tf.constant(clicked), labels["purchase"], 1))
    np.testing.assert_array_equal(
        _np(losses.per_example_losses(flipped, n, purchase_on_clicks_only=True)["purchase"]),
        masked)
    with pytest.raises(ValueError, match="click"):
        losses.per_example_losses({"purchase": labels["purchase"]}, n,
                                  purchase_on_clicks_only=True)

    # The trainer picks the masking from the model.
    B = len(clicked)
    _, task_means, grads = _trainer(naive, tmp_path, batch_size=B)._forward_backward_fn(x, labels)
    np.testing.assert_allclose(float(task_means["purchase"]), masked.sum() / B, rtol=1e-5)
    assert all(g is not None for g in grads)
    _, task_means, _ = _trainer(esmm, tmp_path / "e", batch_size=B)._forward_backward_fn(
        x, labels)
    np.testing.assert_allclose(float(task_means["purchase"]),
                               _np(losses.per_example_losses(labels, e)["purchase"]).mean(),
                               rtol=1e-5)

    # The head survives a config round trip.
    clone = MultitaskRanker.from_config(naive.get_config())
    assert clone.purchase_head == "naive" and clone.structure == "mmoe"
