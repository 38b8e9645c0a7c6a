"""What every family's preprocessor does the same way: cut or pad the history columns to the
model's length, look ids up as int32 indices and bucket the impression rank. One copy,
so the neural ranker and the popularity baseline cannot read the same raw features
differently."""

from __future__ import annotations

import keras_hub
import tensorflow as tf


class BehaviourPreprocessor(keras_hub.models.Preprocessor):
    """Base of the zoo's preprocessors; subclasses set `max_history` and `max_position`."""

    def _history(self, x, pad_value):
        """The first max_history columns (the most recent events), padded to that length."""
        x = x[:, : self.max_history]
        pad = self.max_history - tf.shape(x)[1]
        x = tf.pad(x, [[0, 0], [0, pad]], constant_values=pad_value)
        return tf.reshape(x, [-1, self.max_history])

    @staticmethod
    def _index(layer, x):
        return tf.cast(layer(x), tf.int32)

    def _position_bucket(self, position):
        """0 = unknown rank (-1), else 1 + min(rank, max_position - 1)."""
        position = tf.cast(position, tf.int32)
        return tf.where(position < 0, 0, tf.minimum(position, self.max_position - 1) + 1)
