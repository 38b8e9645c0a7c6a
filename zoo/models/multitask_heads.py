"""Multi-task structures between a shared representation and the task towers.

    heads = MMoE(TOWERS, num_experts=4, expert_dim=128)
    per_task = heads(features)                        # {tower: [B, expert_dim]}
    per_task, gates = heads(features, return_gates=True)

  shared_bottom  every tower reads the shared features (no layer here)
  MMoE           Ma et al. 2018: E expert MLPs on the shared features, one softmax gate per
                 task over the experts; tasks that conflict can use different experts.
  PLE            Tang et al. 2020: stacked Customized Gate Control levels. Each level has
                 task-specific experts per task and shared experts; a task's gate mixes its
                 own and the shared experts, the shared gate (non-final levels) mixes all.
                 Only the shared path crosses tasks, so a task's final-level experts are
                 trained by that task alone (fewer seesaw effects than MMoE).

Gates are float32 softmaxes (they sum to 1 per example); `return_gates=True` returns them
beside the outputs, for tests and analysis.
"""

from __future__ import annotations

import keras
from keras import ops

STRUCTURES = ("shared_bottom", "mmoe", "ple")
# The towers of `MultitaskRanker` (purchase is derived from click and conversion).
TOWERS = ("click", "conversion", "price_range", "demand")


def _dense(units, activation, initializer_range, name, dtype):
    return keras.layers.Dense(
        int(units), activation=activation,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
        dtype=dtype, name=name)


def _gate(gate_layer, x):
    """A softmax in float32: exact sums under mixed precision."""
    return ops.softmax(ops.cast(gate_layer(x), "float32"), axis=-1)


def _mix(gate, experts):
    """sum_e gate[b, e] * experts[b, e, :] -> [B, D]."""
    return ops.einsum("be,bed->bd", ops.cast(gate, experts.dtype), experts)


class _ExpertLayerBase(keras.layers.Layer):
    """Config and the expert MLP shared by `MMoE` and `PLE`."""

    def __init__(self, task_names=TOWERS, expert_dim=128, dropout=0.0,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.task_names = [str(t) for t in task_names]
        if not self.task_names or len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task_names must be distinct and non-empty, got {task_names}")
        self.expert_dim = int(expert_dim)
        self.dropout = float(dropout)
        self.initializer_range = float(initializer_range)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="expert_dropout")

    def _expert(self, name):
        return _dense(self.expert_dim, "gelu", self.initializer_range, name, self.dtype_policy)

    def _gate_layer(self, units, name):
        return _dense(units, None, self.initializer_range, name, self.dtype_policy)

    def _run_experts(self, experts, x, training):
        return [self.dropout_layer(e(x), training=training) for e in experts]

    def get_config(self):
        config = super().get_config()
        config.update({
            "task_names": list(self.task_names),
            "expert_dim": self.expert_dim,
            "dropout": self.dropout,
            "initializer_range": self.initializer_range,
        })
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class MMoE(_ExpertLayerBase):
    """Multi-gate Mixture-of-Experts: [B, F] -> {task: [B, expert_dim]}.

    `call(x, training=None, return_gates=False)`; with `return_gates`, also
    {task: [B, num_experts]} softmax gates.
    """

    def __init__(self, task_names=TOWERS, num_experts=4, expert_dim=128, dropout=0.0,
                 initializer_range=0.02, **kwargs):
        super().__init__(task_names, expert_dim, dropout, initializer_range, **kwargs)
        self.num_experts = int(num_experts)
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.experts = [self._expert(f"expert_{i}") for i in range(self.num_experts)]
        self.gates = [self._gate_layer(self.num_experts, f"{task}_gate")
                      for task in self.task_names]

    def build(self, input_shape):
        for layer in self.experts + self.gates:
            layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None, return_gates=False):
        experts = ops.stack(self._run_experts(self.experts, inputs, training), axis=1)
        outputs, gates = {}, {}
        for task, gate_layer in zip(self.task_names, self.gates):
            gates[task] = _gate(gate_layer, inputs)
            outputs[task] = _mix(gates[task], experts)
        return (outputs, gates) if return_gates else outputs

    def get_config(self):
        config = super().get_config()
        config["num_experts"] = self.num_experts
        return config


@keras.saving.register_keras_serializable(package="ecom_zoo")
class PLE(_ExpertLayerBase):
    """Progressive Layered Extraction: [B, F] -> {task: [B, expert_dim]}.

    Level l reads, per task, that task's output of level l - 1 (its experts and its gate)
    and, for the shared experts and shared gate, the shared output of level l - 1 (level 0
    reads the input everywhere). num_levels = 1 is a single CGC layer.

    `call(x, training=None, return_gates=False)`; with `return_gates`, also the softmax
    gates {"level{l}/{task}": [B, num_task_experts + num_shared_experts],
    "level{l}/shared": [B, T * num_task_experts + num_shared_experts] (non-final levels)}.
    Experts are in the order: the task's own experts, then the shared ones (the shared gate:
    every task's experts in `task_names` order, then the shared ones).
    """

    def __init__(self, task_names=TOWERS, num_shared_experts=1, num_task_experts=1,
                 num_levels=2, expert_dim=128, dropout=0.0, initializer_range=0.02, **kwargs):
        super().__init__(task_names, expert_dim, dropout, initializer_range, **kwargs)
        self.num_shared_experts = int(num_shared_experts)
        self.num_task_experts = int(num_task_experts)
        self.num_levels = int(num_levels)
        if self.num_levels < 1 or self.num_shared_experts < 0 or self.num_task_experts < 0:
            raise ValueError("PLE needs num_levels >= 1 and non-negative expert counts")
        if self.num_task_experts + self.num_shared_experts < 1:
            raise ValueError("PLE needs at least one expert per gate")
        T, L = len(self.task_names), self.num_levels
        # Flat lists (simple Keras tracking); see `task_experts` / `shared_experts` for the
        # (level, task) layout.
        self._task_experts = [
            self._expert(f"level{l}_{task}_expert_{k}")
            for l in range(L) for task in self.task_names for k in range(self.num_task_experts)]
        self._shared_experts = [self._expert(f"level{l}_shared_expert_{k}")
                                for l in range(L) for k in range(self.num_shared_experts)]
        self._task_gates = [
            self._gate_layer(self.num_task_experts + self.num_shared_experts,
                             f"level{l}_{task}_gate")
            for l in range(L) for task in self.task_names]
        self._shared_gates = [
            self._gate_layer(T * self.num_task_experts + self.num_shared_experts,
                             f"level{l}_shared_gate")
            for l in range(L - 1)]

    # ---- layout ----
    def task_experts(self, level: int, task: str) -> list:
        """The expert layers specific to `task` at `level`."""
        t, n = self.task_names.index(task), self.num_task_experts
        start = (level * len(self.task_names) + t) * n
        return self._task_experts[start:start + n]

    def shared_experts(self, level: int) -> list:
        n = self.num_shared_experts
        return self._shared_experts[level * n:(level + 1) * n]

    def _task_gate(self, level, t):
        return self._task_gates[level * len(self.task_names) + t]

    def build(self, input_shape):
        dims = tuple(input_shape[:-1])
        for level in range(self.num_levels):
            shape = input_shape if level == 0 else dims + (self.expert_dim,)
            layers = (self.shared_experts(level)
                      + [self._task_gate(level, t) for t in range(len(self.task_names))]
                      + [layer for task in self.task_names
                         for layer in self.task_experts(level, task)])
            if level < self.num_levels - 1:
                layers.append(self._shared_gates[level])
            for layer in layers:
                layer.build(shape)
        self.built = True

    def call(self, inputs, training=None, return_gates=False):
        task_inputs = [inputs] * len(self.task_names)
        shared_input = inputs
        gates = {}
        for level in range(self.num_levels):
            shared = self._run_experts(self.shared_experts(level), shared_input, training)
            own = [self._run_experts(self.task_experts(level, task), x, training)
                   for task, x in zip(self.task_names, task_inputs)]
            next_inputs = []
            for t, (task, x) in enumerate(zip(self.task_names, task_inputs)):
                gate = _gate(self._task_gate(level, t), x)
                gates[f"level{level}/{task}"] = gate
                next_inputs.append(_mix(gate, ops.stack(own[t] + shared, axis=1)))
            if level < self.num_levels - 1:
                gate = _gate(self._shared_gates[level], shared_input)
                gates[f"level{level}/shared"] = gate
                every = [e for task_experts in own for e in task_experts] + shared
                shared_input = _mix(gate, ops.stack(every, axis=1))
            task_inputs = next_inputs
        outputs = dict(zip(self.task_names, task_inputs))
        return (outputs, gates) if return_gates else outputs

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "num_levels": self.num_levels,
        })
        return config
