"""LazyAdamW: the looked-up rows get exactly Keras' AdamW update; the other rows, nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers.optimizers import LazyAdamW, adamw

ROWS, DIM = 10, 3


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(ROWS, DIM)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(1)(x))


def _step(model, optimizer, ids, y, densify=False):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(ids)[:, 0] - y))
    grads = tape.gradient(loss, model.trainable_variables)
    if densify:  # the reference: Adam of the dense gradient (duplicate ids summed)
        grads = [tf.convert_to_tensor(g) for g in grads]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return grads


def _weights(model):
    return [np.array(v) for v in model.trainable_variables]


# Batches naming rows 0-4 (row 1 twice, so duplicates are summed), then rows 5-8.
BATCHES = [(tf.constant([[0, 1, 1, 2], [3, 4, 1, 0]]), tf.constant([1.0, -1.0])),
           (tf.constant([[5, 6, 7, 8], [8, 7, 6, 5]]), tf.constant([0.5, 2.0]))]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_first_step_equals_adamw_on_the_looked_up_rows(weight_decay):
    lazy_model, dense_model = _model(), _model()
    lazy = LazyAdamW(learning_rate=0.05, weight_decay=weight_decay)
    dense = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=weight_decay)
    before = _weights(lazy_model)
    grads = _step(lazy_model, lazy, *BATCHES[0])
    assert isinstance(grads[0], tf.IndexedSlices)  # the path under test
    _step(dense_model, dense, *BATCHES[0], densify=True)
    (table_l, *rest_l), (table_d, *rest_d) = _weights(lazy_model), _weights(dense_model)
    looked_up = [0, 1, 2, 3, 4]
    np.testing.assert_allclose(table_l[looked_up], table_d[looked_up], rtol=1e-6, atol=1e-7)
    assert not np.allclose(table_l[looked_up], before[0][looked_up])
    # Other rows: untouched here; Keras' AdamW decays them (zero gradient, zero moments).
    np.testing.assert_array_equal(table_l[5:], before[0][5:])
    if weight_decay:
        np.testing.assert_allclose(table_d[5:], before[0][5:] * (1 - 0.05 * weight_decay),
                                   rtol=1e-6)
    for a, b in zip(rest_l, rest_d):  # dense variables: Keras' AdamW exactly
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_rows_not_looked_up_keep_weights_and_moments():
    model = _model()
    opt = LazyAdamW(learning_rate=0.05, weight_decay=0.1)
    _step(model, opt, *BATCHES[0])
    after_first = _weights(model)[0]
    m = np.array(opt._momentums[0])
    v = np.array(opt._velocities[0])
    _step(model, opt, *BATCHES[1])
    table = _weights(model)[0]
    np.testing.assert_array_equal(table[:5], after_first[:5])  # rows 0-4: not in batch 2
    np.testing.assert_array_equal(np.array(opt._momentums[0])[:5], m[:5])
    np.testing.assert_array_equal(np.array(opt._velocities[0])[:5], v[:5])
    assert not np.allclose(table[5:9], after_first[5:9])
    np.testing.assert_array_equal(table[9], after_first[9])  # never looked up


def test_second_step_matches_lazy_adam_by_hand():
    """Rows 5-8 at step 2: their moments start at zero, but the bias correction is step 2's."""
    model = _model()
    opt = LazyAdamW(learning_rate=0.05, weight_decay=0.0)
    _step(model, opt, *BATCHES[0])
    before = _weights(model)[0]
    grads = _step(model, opt, *BATCHES[1])
    g = tf.math.unsorted_segment_sum(grads[0].values, grads[0].indices, ROWS).numpy()
    b1, b2, eps, t = 0.9, 0.999, 1e-7, 2
    m, v = (1 - b1) * g, (1 - b2) * g ** 2
    alpha = 0.05 * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    expect = before - alpha * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(_weights(model)[0][5:9], expect[5:9], rtol=1e-5, atol=1e-6)


def test_under_tf_function_and_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _model()
        opt = adamw(0.05, 0.1, lazy_tables=True)
        assert isinstance(opt, LazyAdamW)
    before = _weights(model)[0]

    @tf.function
    def step(ids, y):
        strategy.run(lambda a, b: _step(model, opt, a, b) and None, args=(ids, y))

    step(*BATCHES[1])
    table = _weights(model)[0]
    np.testing.assert_array_equal(table[:5], before[:5])
    assert not np.allclose(table[5:9], before[5:9])


def test_checkpoint_interchangeable_with_adamw(tmp_path):
    model = _model()
    opt = LazyAdamW(learning_rate=0.05, weight_decay=0.1)
    _step(model, opt, *BATCHES[0])
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
    other, dense = _model(seed=1), keras.optimizers.AdamW(learning_rate=0.05,
                                                          weight_decay=0.1)
    dense.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=dense).restore(path).assert_consumed()
    np.testing.assert_array_equal(np.array(dense._momentums[0]), np.array(opt._momentums[0]))


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdamW(amsgrad=True)


def test_auto_picks_lazy_for_large_tables_only():
    from trainers.optimizers import LAZY_AUTO_ROWS, use_lazy

    def model(rows):
        ids = keras.Input((2,), dtype="int32")
        return keras.Model(ids, keras.layers.Embedding(rows, 2)(ids))

    small, large = model(1000), model(LAZY_AUTO_ROWS + 1)
    assert not use_lazy("auto", small) and use_lazy("auto", large)
    assert use_lazy("true", small) and not use_lazy("false", large)
    with pytest.raises(ValueError, match="auto, true or false"):
        use_lazy("yes", small)
