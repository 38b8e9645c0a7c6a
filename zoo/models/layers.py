"""Layers shared by the model families."""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf
from keras import ops


_state = threading.local()


@contextlib.contextmanager
def _creating_table():
    _state.table = True
    try:
        yield
    finally:
        _state.table = False


def creating_table() -> bool:
    """True while an IdEmbedding creates its table: the one variable a parameter-server
    partitioner should shard (`trainers.distribute.TablePartitioner`)."""
    return getattr(_state, "table", False)


@keras.saving.register_keras_serializable(package="ecom_zoo")
class IdEmbedding(keras.layers.Embedding):
    """`keras.layers.Embedding` whose lookup gathers the rows where the table lives.

    Keras' own lookup (`ops.take` of the variable) first reads the whole table. Under
    ParameterServerStrategy with a `variable_partitioner` the table is a ShardedVariable on
    the parameter servers, and that read copies every shard to the worker on every step
    (measured: 64 MB per step for a 1M x 16 table, against 0.15 MB with this lookup; see
    BUILD_NOTES.md). `tf.nn.embedding_lookup` on the variable itself runs the gather on
    each shard's server, so only the looked-up rows travel. On one device the two are the
    same gather with the same gradient; the weights and the config are Embedding's, so
    saving, loading and LoRA are unchanged.

    A checkpoint holds the sharded table under the same key as an unsharded one (as
    slices), so checkpoints move between strategies and numbers of parameter servers.
    """

    def build(self, input_shape=None):
        with _creating_table():
            super().build(input_shape)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        inner = getattr(children.get("_embeddings"), "value", None)
        if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
            # Keras' variable cannot checkpoint a ShardedVariable (it has no single device);
            # the ShardedVariable itself saves its shards as slices of one tensor.
            children["_embeddings"] = inner
        return children

    def call(self, inputs):
        if self.lora_enabled or self.quantization_mode:
            return super().call(inputs)  # their weights are computed, not one variable
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        outputs = tf.nn.embedding_lookup(self._embeddings.value, inputs)
        return ops.cast(outputs, dtype=self.compute_dtype)
