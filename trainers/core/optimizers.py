"""AdamW whose embedding tables are updated row by row (`--lazy_table_updates`).

Keras 3's AdamW turns an embedding lookup's sparse gradient (`tf.IndexedSlices`) into a
dense update: every row's two moments, weight decay and weight, every step. That is
O(vocabulary) work per step whatever the batch: 60 ms of a 294 ms `small` step with the
nominal 20k-id tables on 2 cores, and 0.119 s against LazyAdamW's 0.012 s per step for a
1M x 16 table on a parameter server (same machine, BUILD_NOTES.md). `LazyAdamW` updates
only the rows a step looked up, as LazyAdam (TF Addons, `tf.contrib.opt.LazyAdamOptimizer`)
does, the usual optimizer of recommender embeddings. `--lazy_table_updates=auto` (default)
uses it when a table has more than LAZY_AUTO_ROWS rows: on the demo's small fitted
vocabulary it is no faster and trains slightly worse than Keras' AdamW, while at 1M-10M
item ids a step stays flat in N (BUILD_NOTES.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ecom_zoo")
class ContinuedAdamW(keras.optimizers.AdamW):
    """AdamW whose moments may continue another run's (`--warm_start_optimizer`).

    Adam divides its moments by 1 - beta^t to undo their zero start. Moments carried from
    a parent run were formed over the parent's t steps; counted from this run's step 0
    again, that correction would inflate them (x10 for the first moment at step 1) and
    the steps would be ~3x too small for hundreds of steps. `moment_steps` (the parent's
    steps) is added to t in the correction only; the learning-rate schedule, checkpoints
    and the loop still count this run's steps from 0. With moment_steps = 0 the update is
    Keras' own.
    """

    def __init__(self, *args, moment_steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if moment_steps < 0:
            raise ValueError(f"moment_steps must be >= 0, got {moment_steps}")
        self.moment_steps = int(moment_steps)

    def _local_step(self, dtype):
        return tf.cast(self.iterations + 1 + self.moment_steps, dtype)

    def update_step(self, gradient, variable, learning_rate):
        if not self.moment_steps:
            return super().update_step(gradient, variable, learning_rate)
        if self.amsgrad:
            raise ValueError("moment_steps does not implement amsgrad")
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        step = self._local_step(dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, dtype), step)) / (
            1 - tf.pow(tf.cast(self.beta_1, dtype), step))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (tf.square(gradient) - v) * (1 - self.beta_2))
        self.assign_sub(variable, m * alpha / (tf.sqrt(v) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "moment_steps": self.moment_steps}


@keras.saving.register_keras_serializable(package="ecom_zoo")
class LazyAdamW(ContinuedAdamW):
    """AdamW; a variable whose gradient is sparse has only its looked-up rows updated.

    A row's moments, weight decay and weight advance on the steps that look it up and
    stay as they are on the others (Keras' AdamW would decay its moments, keep moving it by
    them and decay its weight). Duplicate ids in a batch are summed first, so a row gets
    the same gradient as from the dense update. Dense gradients get Keras' AdamW
    unchanged, and the slot variables are the same, so checkpoints are interchangeable.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdamW does not implement amsgrad")
        # Each of these makes Keras densify the gradient before update_step, so the rows'
        # weight decay (applied there for sparse gradients) would be skipped silently.
        for option in ("global_clipnorm", "gradient_accumulation_steps",
                       "loss_scale_factor"):
            if getattr(self, option, None):
                raise ValueError(f"LazyAdamW does not support {option}")
        self._sparse_keys: set = set()

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = (getattr(self, "_trainable_variables", []) if trainable_variables is None
                     else list(trainable_variables))
        # Read at trace time by _use_weight_decay: these are decayed row by row instead.
        self._sparse_keys = {self._var_key(v) for g, v in zip(grads, variables)
                             if isinstance(g, tf.IndexedSlices)}
        return super().apply(grads, trainable_variables and variables)

    def _use_weight_decay(self, variable):
        if self._var_key(variable) in self._sparse_keys:
            return False
        return super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        rows, position = tf.unique(gradient.indices)
        grad = tf.cast(tf.math.unsorted_segment_sum(
            gradient.values, position, tf.shape(rows)[0]), dtype)
        lr = tf.cast(learning_rate, dtype)
        step = self._local_step(dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        # As Keras' update (m += (g - m) * (1 - beta_1)), 1 - beta in Python floats.
        m_old, v_old = _rows(m, rows), _rows(v, rows)
        m_rows = m_old + (grad - m_old) * (1 - self.beta_1)
        v_rows = v_old + (tf.square(grad) - v_old) * (1 - self.beta_2)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        delta = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if self.weight_decay and super()._use_weight_decay(variable):
            delta += lr * tf.cast(self.weight_decay, dtype) * _rows(variable, rows)
        self.assign_sub(variable, tf.IndexedSlices(delta, rows))


def _rows(variable, rows):
    """The rows of a Keras or tf variable (a gather on the variable: no dense read)."""
    return tf.gather(variable.value if isinstance(variable, keras.Variable) else variable,
                     rows)


# Above this many rows in one embedding table, `auto` picks LazyAdamW: the dense update of
# N x d elements at 9-19 ns each (measured) then costs ~0.1 s or more per step at d = 128,
# as much as the `small` step itself.
LAZY_AUTO_ROWS = 100_000


def use_lazy(setting: str, model: keras.Model) -> bool:
    """--lazy_table_updates: "true", "false", or "auto" (any table over LAZY_AUTO_ROWS)."""
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"--lazy_table_updates must be auto, true or false, got {setting!r}")
    if setting != "auto":
        return setting == "true"
    return any(isinstance(layer, keras.layers.Embedding) and layer.input_dim > LAZY_AUTO_ROWS
               for layer in model._flatten_layers(include_self=False))


def adamw(learning_rate, weight_decay: float, lazy_tables: bool = False,
          ema_momentum: float = 0.0, moment_steps: int = 0):
    """The trainers' optimizer: Keras' AdamW, or LazyAdamW with `lazy_tables=True`; with
    `ema_momentum` > 0 it also keeps Keras' moving average of the weights
    (`finalize_variable_values` swaps it in); `moment_steps` > 0: moments carried from a
    run of that many steps (`ContinuedAdamW`)."""
    cls = (LazyAdamW if lazy_tables else ContinuedAdamW if moment_steps
           else keras.optimizers.AdamW)
    ema = {"use_ema": True, "ema_momentum": float(ema_momentum)} if ema_momentum else {}
    steps = {"moment_steps": int(moment_steps)} if moment_steps else {}
    return cls(learning_rate=learning_rate, weight_decay=weight_decay, **ema, **steps)
