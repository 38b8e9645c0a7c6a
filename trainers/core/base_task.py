"""What a kind of training is, to the one run skeleton (`train_lib.run_experiment`).

In the shape of TF Model Garden's `base_task.Task`: the skeleton owns what every run shares
(strategy, data preparation, the run folder, vocabulary, optimizer, the custom loop,
checkpoints, TensorBoard, the flagfile); a task owns what differs: which network it builds
and trains, what one training batch is, how it is evaluated and what it leaves in the
model_dir. The network declares its own loss (`per_example_losses`), so neither the
skeleton nor the loop looks inside a model. A new kind of training (a retriever, a model
fitted outside TensorFlow) is a new `Task` subclass beside `MultitaskTask` and
`PretrainTask`, and a thin entry point that hands it to `run_experiment`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable


@dataclasses.dataclass
class Run:
    """The state of one run, filled in by the skeleton as it goes and read by the task."""

    config: Any  # config.TrainConfig
    model_dir: str
    write_dir: str = ""
    strategy: Any = None
    chief: bool = True
    parameter_server: bool = False
    builder: Any = None  # the prepared examples (zoo.data.ecom_events.EcomEvents)
    train_files: list = dataclasses.field(default_factory=list)
    num_train: int = 0
    steps: int = 0
    model_config: dict = dataclasses.field(default_factory=dict)
    vocabulary: dict | None = None
    sample: dict | None = None  # two raw training examples: builds models the same way
    model: Any = None  # the zoo model (what is saved and exported)
    network: Any = None  # what the loop trains: the model, or the model inside a pre-trainer
    jit_compile: bool = False
    trainer: Any = None  # loop.Trainer
    start_step: int = 0

    @property
    def has_eval(self) -> bool:
        return "eval" in self.builder.info.splits


class Task:
    """A kind of training. Subclasses set `name` and `loss_names` and implement the hooks."""

    name = "task"
    loss_names: tuple = ()
    # Defaults of this task's entry point that differ from TrainConfig's (flags only).
    flag_defaults: dict = {}
    # Model config key prefixes a resumed run does not compare (they do not change it).
    spec_ignore: tuple = ()
    # Whether the task fits `--calibration_fraction`'s post-hoc calibration.
    calibrates = False
    # Whether the task trains from `--train_start` (the impressions before it as context).
    trains_from_start = False

    def default_model_dir(self, config) -> str:
        return os.path.join("runs", f"{config.model}_{config.preset}")

    def check(self, config, model_config: dict, spec) -> None:
        """Refuses a config this task cannot run, before anything is created."""

    def task_weights(self, config) -> dict:
        from trainers.core.config import parse_task_weights

        return parse_task_weights(config.task_weights, self.loss_names)

    def num_training_examples(self, run: Run) -> int:
        """What one epoch passes over (`total_steps` reads it)."""
        return run.builder.info.splits["train"].num_examples

    def total_steps(self, config, num_train: int) -> int:
        return config.steps or max(1, math.ceil(
            config.epochs * num_train * config.labels_fraction / config.batch_size))

    def run_spec(self, config, model_config: dict) -> dict:
        """What must match for a model_dir to be resumed."""
        raise NotImplementedError

    def initial_vocabulary(self, config, fit=None) -> dict | None:
        """A vocabulary that a new run must take over (None: fit one on the train split);
        `fit()` fits one, for a task that grows it from another."""
        return None

    def moment_steps(self, config) -> int:
        """Steps the optimizer's carried moments were formed over (0: a fresh optimizer)."""
        return 0

    def init_optimizer(self, run: Run, optimizer) -> None:
        """Sets the built optimizer's state before training (a carried state), if any."""

    def build_network(self, run: Run):
        """Builds the zoo model (`run.model`) and returns the network the loop trains,
        its weights built, inside the strategy's scope."""
        raise NotImplementedError

    def train_dataset(self, run: Run, ctx) -> Any:
        """The training tf.data.Dataset of (inputs, targets) for one input pipeline."""
        raise NotImplementedError

    def describe(self, run: Run) -> str:
        return ""

    def periodic_evaluation(self, run: Run) -> Callable[[int], dict] | None:
        """A callable(step) -> metrics for --eval_every, or None."""
        return None

    def finalize(self, run: Run, result: dict) -> None:
        """What the task does with the trained network before it is evaluated and saved
        (the multi-task task fits its post-hoc calibration)."""

    def evaluate(self, run: Run, result: dict) -> None:
        """Adds the final evaluation to `result` (and prints it when verbose)."""

    def save(self, run: Run, result: dict) -> None:
        """Writes what the run leaves in model_dir (chief only)."""
        raise NotImplementedError
