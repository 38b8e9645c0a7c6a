"""The encoder layer written for speed computes what keras-hub's TransformerEncoder does."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from zoo.models.layers import LastAxisLayerNormalization, TransformerEncoderBlock

B, S, D, HEADS, FFN = 4, 9, 16, 4, 24


def _np(x):
    return np.asarray(tf.convert_to_tensor(x))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, S, D)).astype("float32")
    mask = rng.random((B, S)) > 0.3
    mask[:, 0] = True
    mask[1] = False  # a row with every key padded attends uniformly, in keras-hub too
    return x, mask


def _weight_pairs(hub, block):
    """keras-hub's EinsumDense kernels [D, N, D/N] / [N, D/N, D] are our [D, D] kernels."""
    attention = hub._self_attention_layer
    layers = [(attention._query_dense, block.query_dense),
             (attention._key_dense, block.key_dense),
             (attention._value_dense, block.value_dense),
             (attention._output_dense, block.attention_output_dense),
             (hub._feedforward_intermediate_dense, block.feedforward_intermediate_dense),
             (hub._feedforward_output_dense, block.feedforward_output_dense),
             (hub._self_attention_layer_norm, block.self_attention_layer_norm),
             (hub._feedforward_layer_norm, block.feedforward_layer_norm)]
    pairs = []
    for source, target in layers:
        assert len(source.weights) == len(target.weights), (source.name, target.name)
        pairs += list(zip(source.weights, target.weights))
    assert len(pairs) == len(hub.weights) == len(block.weights)
    return pairs


def _copy_hub_weights(hub, block):
    for s, t in _weight_pairs(hub, block):
        t.assign(np.reshape(_np(s), t.shape))


def test_block_matches_keras_hub_transformer_encoder_outputs_and_gradients():
    x, mask = _inputs()
    hub = keras_hub.layers.TransformerEncoder(
        intermediate_dim=FFN, num_heads=HEADS, activation="gelu", layer_norm_epsilon=1e-12,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.5))
    block = TransformerEncoderBlock(HEADS, FFN, layer_norm_epsilon=1e-12)
    hub(x, padding_mask=mask)
    block(x, padding_mask=mask)
    assert (sum(int(np.prod(w.shape)) for w in block.weights)
            == sum(int(np.prod(w.shape)) for w in hub.weights))
    _copy_hub_weights(hub, block)
    # Random layer-norm weights too, so that a swapped gamma / beta would show.
    rng = np.random.default_rng(1)
    for ln in (hub._self_attention_layer_norm, hub._feedforward_layer_norm):
        for w in ln.weights:
            w.assign(rng.normal(size=w.shape).astype("float32"))
    _copy_hub_weights(hub, block)

    np.testing.assert_allclose(_np(block(x, padding_mask=mask)),
                               _np(hub(x, padding_mask=mask)), rtol=1e-4, atol=1e-5)
    # Padding matters (the check above would pass if both ignored the mask).
    assert np.abs(_np(block(x, padding_mask=mask)) - _np(block(x))).max() > 1e-3

    def grads(layer, weights):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.sin(layer(xt, padding_mask=mask)))
        return tape.gradient(loss, [xt] + weights)

    pairs = _weight_pairs(hub, block)
    g_hub = grads(hub, [s for s, _ in pairs])
    g_block = grads(block, [t for _, t in pairs])
    for ours, theirs in zip(g_block, g_hub):
        np.testing.assert_allclose(_np(ours).ravel(), _np(theirs).ravel(),
                                   rtol=1e-3, atol=1e-4)


def test_block_under_xla_and_after_save_and_reload(tmp_path):
    x, mask = _inputs(2)
    inputs = keras.Input((S, D))
    padding = keras.Input((S,), dtype="bool")
    outputs = TransformerEncoderBlock(HEADS, FFN, dropout=0.1)(inputs, padding_mask=padding)
    model = keras.Model([inputs, padding], outputs)
    eager = _np(model([x, mask]))
    compiled = tf.function(lambda a, m: model([a, m]), jit_compile=True)
    np.testing.assert_allclose(_np(compiled(x, mask)), eager, rtol=1e-4, atol=1e-5)
    # Dropout acts in training only.
    assert np.abs(_np(model([x, mask], training=True)) - eager).max() > 1e-3
    path = str(tmp_path / "block.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)  # safe mode
    np.testing.assert_allclose(_np(reloaded([x, mask])), eager, rtol=1e-6, atol=1e-6)


def test_lora_finds_the_query_and_value_projections():
    block = TransformerEncoderBlock(HEADS, FFN)
    inputs = keras.Input((S, D))
    model = keras_hub.models.Backbone(inputs=inputs, outputs=block(inputs))
    model.enable_lora(2)
    lora = sorted(w.path for w in model.trainable_weights)
    # As with keras-hub's attention: the adapters (and biases) of query and value train.
    assert {p.split("/")[-2] for p in lora} == {"query", "value"}, lora
    assert {p.split("/")[-1] for p in lora} == {"lora_kernel_a", "lora_kernel_b", "bias"}


def test_last_axis_layer_norm_matches_keras():
    x = np.random.default_rng(3).normal(3.0, 2.0, size=(5, 7, 32)).astype("float32")
    ours = LastAxisLayerNormalization(epsilon=1e-6)
    theirs = keras.layers.LayerNormalization(epsilon=1e-6)
    ours.build(x.shape)
    theirs.build(x.shape)
    rng = np.random.default_rng(4)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    np.testing.assert_allclose(_np(ours(x)), _np(theirs(x)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="last axis"):
        LastAxisLayerNormalization(axis=1)


def test_block_config_round_trip_and_unknown_sequence_length():
    block = TransformerEncoderBlock(HEADS, FFN, dropout=0.2, layer_norm_epsilon=1e-6,
                                    kernel_initializer=keras.initializers.TruncatedNormal(
                                        stddev=0.3))
    clone = TransformerEncoderBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert (clone.dropout, clone.layer_norm_epsilon) == (0.2, 1e-6)
    x, mask = _inputs(5)
    eager = _np(block(x, padding_mask=mask))
    traced = tf.function(lambda a, m: block(a, padding_mask=m), input_signature=[
        tf.TensorSpec([None, None, D]), tf.TensorSpec([None, None], tf.bool)])
    np.testing.assert_allclose(_np(traced(x, mask)), eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_block_and_layer_norm_under_mixed_precision(policy):
    x, mask = _inputs(6)
    reference = TransformerEncoderBlock(HEADS, FFN)
    expected = _np(reference(x, padding_mask=mask))
    block = TransformerEncoderBlock(HEADS, FFN, dtype=policy)
    block(x, padding_mask=mask)
    block.set_weights(reference.get_weights())
    got = _np(block(x, padding_mask=mask)).astype("float32")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=0.1)
    # The moments in float32: a large mean does not wash out the normalised values.
    big = np.random.default_rng(7).normal(100.0, 1.0, size=(3, 5, 48)).astype("float32")
    ln = LastAxisLayerNormalization(epsilon=1e-6, dtype=policy)
    want = _np(keras.layers.LayerNormalization(epsilon=1e-6)(big))
    np.testing.assert_allclose(_np(ln(big)).astype("float32"), want, atol=0.05)
