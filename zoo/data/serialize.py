"""Whole-batch tf.Example serialisation with `tf.io.encode_proto`.

Building one `tf.train.Example` per impression in Python (what TFDS does per example)
runs at a few thousand examples/s; millions of impressions need the batch done in C++.
`encode_proto` writes each nested message level (BytesList/FloatList/Int64List → Feature →
Features.FeatureEntry → Features → Example) for the whole batch at once. The bytes are
ordinary tf.Examples: `tf.io.parse_example` and TFDS read them as if TFDS had written them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from zoo.data import contract, examples as examples_lib

_LISTS = {tf.string: ("tensorflow.BytesList", "bytes_list"),
          tf.float32: ("tensorflow.FloatList", "float_list"),
          tf.int64: ("tensorflow.Int64List", "int64_list")}


def _encode(message_type, field_names, values, sizes):
    return tf.io.encode_proto(sizes=sizes, values=values, field_names=field_names,
                              message_type=message_type)


def _column(values, dtype):
    if dtype == tf.string:
        return tf.constant(values.astype(object) if values.dtype != object else values,
                           dtype=tf.string)
    return tf.constant(np.asarray(values, dtype=dtype.as_numpy_dtype))


def _feature_entries(name, values: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """[B] serialized Features.FeatureEntry of `name` with values[b, :lengths[b]]."""
    list_type, list_field = _LISTS[values.dtype]
    batch = tf.shape(values)[0]
    ones = tf.ones([batch, 1], tf.int32)
    lst = _encode(list_type, ["value"], [values], tf.reshape(lengths, [batch, 1]))
    feat = _encode("tensorflow.Feature", [list_field], [tf.reshape(lst, [batch, 1])], ones)
    keys = tf.fill([batch, 1], name)
    return _encode("tensorflow.Features.FeatureEntry", ["key", "value"],
                   [keys, tf.reshape(feat, [batch, 1])], tf.ones([batch, 2], tf.int32))


def _serialize(tensors: dict, lengths: tf.Tensor, with_labels: bool) -> np.ndarray:
    """tensors: name -> [n] scalar or [n, L] sequence tensor; lengths: [n] history lengths."""
    if int(lengths.shape[0]) == 0:
        return np.zeros([0], dtype=object)
    tensors = {k: v for k, v in tensors.items() if k in _names(with_labels)}
    return _serialize_tensors(tensors, lengths, with_labels).numpy()


def _names(with_labels):
    names = list(examples_lib.SCALAR_FEATURES) + list(examples_lib.SEQUENCE_FEATURES)
    return names + (list(examples_lib.LABEL_FEATURES) + list(examples_lib.PRETEXT_FEATURES)
                    if with_labels else [])


def _serialize_tensors(tensors, lengths, with_labels):
    n = tf.shape(lengths)[0]
    scalars = dict(examples_lib.SCALAR_FEATURES)
    if with_labels:
        scalars.update(examples_lib.LABEL_FEATURES)
        scalars.update(examples_lib.PRETEXT_FEATURES)
    one = tf.ones([n], tf.int32)
    entries = [_feature_entries(name, tf.reshape(tensors[name], [n, 1]), one) for name in scalars]
    entries += [_feature_entries(name, tensors[name], lengths)
                for name in examples_lib.SEQUENCE_FEATURES]
    features = _encode("tensorflow.Features", ["feature"], [tf.stack(entries, axis=1)],
                       tf.fill([n, 1], len(entries)))
    return _encode("tensorflow.Example", ["features"], [tf.reshape(features, [n, 1])],
                   tf.ones([n, 1], tf.int32))


class CodedSerializer:
    """Serialises coded chunks (`ExampleSource.chunks(text=False)`) of one log.

    Item and event-type strings are gathered from vocabulary tensors inside TensorFlow, so
    no Python string is made per history slot.
    """

    def __init__(self, tables):
        items = tables.items

        def vocab(column):  # the extra "" at the end is what padding (-1) gathers
            return tf.constant(np.append(
                items[column].to_numpy(zero_copy_only=False).astype(object), ""), tf.string)

        self._items = {name: vocab(col) for name, col in examples_lib.ITEM_TEXT.items()}
        self._hist = {name: vocab(col) for name, col in examples_lib.HIST_TEXT.items()}
        self._next = {name: vocab(col) for name, col in examples_lib.NEXT_TEXT.items()}
        self._events = tf.constant(list(contract.EVENT_TYPES) + [""], tf.string)
        self._pad = len(items["item_id"])

    def __call__(self, coded: dict) -> np.ndarray:
        every = {**examples_lib.SCALAR_FEATURES, **examples_lib.SEQUENCE_FEATURES,
                 **examples_lib.LABEL_FEATURES}
        tensors = {name: _column(np.asarray(coded[name]), examples_lib.tf_dtype(every[name]))
                   for name in every if name in coded}
        item = tf.constant(coded["item"])
        hist = tf.constant(np.where(coded["hist_item"] < 0, self._pad, coded["hist_item"]))
        for name, table in self._items.items():
            tensors[name] = tf.gather(table, item)
        for name, table in self._hist.items():
            tensors[name] = tf.gather(table, hist)
        nxt = tf.constant(np.where(coded["next_item"] < 0, self._pad, coded["next_item"]))
        for name, table in self._next.items():
            tensors[name] = tf.gather(table, nxt)
        kind = np.where(coded["hist_kind"] < 0, len(contract.EVENT_TYPES), coded["hist_kind"])
        tensors["hist_event"] = tf.gather(self._events, kind)
        lengths = tf.constant(np.asarray(coded["hist_length"], np.int32))
        return _serialize(tensors, lengths, with_labels=True)
