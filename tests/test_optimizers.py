"""LazyAdamW: the looked-up rows get exactly Keras' AdamW update; the other rows, nothing."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers.core.optimizers import LazyAdamW, adamw

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


def test_two_replicas_give_the_one_device_update(tmp_path):
    """MirroredStrategy over 2 logical CPUs (a fresh process: devices are set at start-up):
    each replica takes half the batch; the summed sparse gradients must give the one-device
    weights."""
    import subprocess
    import sys

    from helpers import REPO, subprocess_env
    script = f"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import sys; sys.path.insert(0, {os.path.join(REPO, "tests")!r})
from test_optimizers import BATCHES, _model, _step, _weights
from trainers.core.optimizers import LazyAdamW

def train(strategy, replicas):
    with strategy.scope():
        model, opt = _model(), LazyAdamW(learning_rate=0.05, weight_decay=0.1)
        opt.build(model.trainable_variables)  # as the trainers do
    @tf.function
    def step(ids, y):
        def replica(a, b):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(a)[:, 0] - b)) / 2.0
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(replica, args=(ids, y))
    for ids, y in BATCHES:
        data = strategy.experimental_distribute_values_from_function(
            lambda ctx: (ids[ctx.replica_id_in_sync_group::replicas],
                         y[ctx.replica_id_in_sync_group::replicas]))
        step(*data)
    return _weights(model)

one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), 1)
two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2)
for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
print("EQUAL")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=subprocess_env(), cwd=REPO, timeout=300)
    assert out.returncode == 0 and "EQUAL" in out.stdout, out.stdout + out.stderr[-3000:]


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


def test_adamw_checkpoint_resumes_with_lazy(tmp_path):
    """What `auto` does to an old model_dir whose tables grew past 100k rows."""
    model, dense = _model(), keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1)
    _step(model, dense, *BATCHES[0])
    path = tf.train.Checkpoint(model=model, optimizer=dense).save(str(tmp_path / "ckpt"))
    other, lazy = _model(seed=1), LazyAdamW(learning_rate=0.05, weight_decay=0.1)
    lazy.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=lazy).restore(path).assert_consumed()
    np.testing.assert_array_equal(np.array(lazy._velocities[0]), np.array(dense._velocities[0]))
    assert int(lazy.iterations) == 1


@pytest.mark.parametrize("option", [{"amsgrad": True}, {"global_clipnorm": 1.0},
                                    {"gradient_accumulation_steps": 2},
                                    {"loss_scale_factor": 128.0}])
def test_unsupported_options_are_refused(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        LazyAdamW(**option)


def test_auto_picks_lazy_for_large_tables_only():
    from trainers.core.optimizers import LAZY_AUTO_ROWS, use_lazy

    def model(rows):
        ids = keras.Input((2,), dtype="int32")
        return keras.Model(ids, keras.layers.Embedding(rows, 2)(ids))

    small, large = model(1000), model(LAZY_AUTO_ROWS + 1)
    assert not use_lazy("auto", small) and use_lazy("auto", large)
    assert use_lazy("true", small) and not use_lazy("false", large)
    with pytest.raises(ValueError, match="auto, true or false"):
        use_lazy("yes", small)


def test_ema_of_the_weights_is_swapped_in_at_the_end():
    """--ema_momentum: the optimizer keeps a moving average of the weights (Keras' EMA; the
    first step's weights start it) and `finalize_variable_values` writes it into them."""
    v = keras.Variable(np.zeros(3, np.float32))
    opt = adamw(0.1, 0.0, ema_momentum=0.5)
    opt.build([v])
    after = []
    for g in ([1.0, 1.0, 1.0], [-2.0, 0.0, 1.0], [0.5, 0.5, 0.5]):
        opt.apply([tf.constant(g)], [v])
        after.append(v.numpy().copy())
    average = after[0]
    for w in after[1:]:
        average = 0.5 * average + 0.5 * w
    assert np.abs(after[-1] - average).max() > 1e-3
    opt.finalize_variable_values([v])
    np.testing.assert_allclose(v.numpy(), average, rtol=1e-5)


def test_ema_momentum_outside_0_1_is_refused():
    from trainers.core import config as config_lib

    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="--ema_momentum"):
            config_lib.validate(config_lib.TrainConfig(ema_momentum=bad))


@pytest.mark.parametrize("lazy", [False, True])
def test_carried_moments_continue_the_bias_correction(lazy):
    """`moment_steps` T: the first step's update is Adam's at step T + 1 from the carried
    moments (numpy reference), for dense and sparse gradients; T = 0 is Keras' AdamW."""
    from trainers.core.optimizers import ContinuedAdamW

    ids, y = BATCHES[0]
    model = _model()
    before = _weights(model)
    steps, lr, (b1, b2, eps) = 40, 0.05, (0.9, 0.999, 1e-7)
    opt = (LazyAdamW if lazy else ContinuedAdamW)(learning_rate=lr, weight_decay=0.0,
                                                  moment_steps=steps)
    opt.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    m0 = [rng.normal(size=v.shape) * 0.01 for v in model.trainable_variables]
    v0 = [rng.uniform(1e-4, 1e-3, size=v.shape) for v in model.trainable_variables]
    for slot, a in zip(opt._momentums, m0):
        slot.assign(a)
    for slot, a in zip(opt._velocities, v0):
        slot.assign(a)
    grads = [np.asarray(tf.convert_to_tensor(g)) for g in _step(model, opt, ids, y)]
    t = steps + 1
    alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    for w0, w1, g, m, v, var in zip(before, _weights(model), grads, m0, v0,
                                    model.trainable_variables):
        m1, v1 = m + (g - m) * (1 - b1), v + (g * g - v) * (1 - b2)
        expected = w0 - alpha * m1 / (np.sqrt(v1) + eps)
        if lazy and var.shape[0] == ROWS:  # rows the batch did not look up stay
            untouched = ~np.isin(np.arange(ROWS), ids.numpy())
            expected[untouched] = w0[untouched]
        np.testing.assert_allclose(w1, expected, rtol=1e-5, atol=1e-7)

    # moment_steps 0: exactly Keras' AdamW.
    a, b = _model(), _model()
    plain = keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.0)
    ours = ContinuedAdamW(learning_rate=lr, weight_decay=0.0)
    for batch in BATCHES:
        _step(a, plain, *batch)
        _step(b, ours, *batch)
    for x, z in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, z)
    with pytest.raises(ValueError, match="moment_steps must be >= 0"):
        ContinuedAdamW(learning_rate=lr, moment_steps=-1)
