"""One custom training loop for every tf.distribute strategy.

The step is `strategy.run` of a replica function inside a `tf.function`; the forward and
backward pass are a separate `tf.function(jit_compile=...)` so XLA compiles the numeric
model while string preprocessing stays in tf.data. Losses are per example and averaged
over the GLOBAL batch (`tf.nn.compute_average_loss`), so gradients summed across replicas
equal the single-device gradient. The Keras model, optimizer and progress bar are used as
they are: no Keras internals are patched.

Under ParameterServerStrategy the same loop function is `schedule`d on the workers by a
`ClusterCoordinator`; large tables are ShardedVariables on the parameter servers, and the
optimizer updates their shards (Keras cannot take the gradient of a Keras variable that
holds a ShardedVariable: BUILD_NOTES.md has the reproduction).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zoo.models import losses as losses_lib

# Steps per closure scheduled on a parameter-server worker: small enough that a killed
# worker loses little and the workers share the remaining steps evenly.
PS_STEPS_PER_CLOSURE = 5
# Exit code of a worker that saved a checkpoint on SIGTERM (preemption) and stopped.
PREEMPTED_EXIT_CODE = 42


def train_variables(model: keras.Model) -> list:
    """What the optimizer updates: the model's trainable variables, with a sharded table
    replaced by its shards (each shard is a plain variable on one parameter server)."""
    out = []
    for v in model.trainable_variables:
        inner = getattr(v, "value", v)
        if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
            out.extend(inner.variables)
        else:
            out.append(v)
    return out


@dataclasses.dataclass
class LoopConfig:
    total_steps: int
    global_batch_size: int
    task_weights: dict
    steps_per_loop: int = 50
    checkpoint_every: int = 500
    max_checkpoints: int = 3
    jit_compile: bool = True
    eval_every: int = 0  # 0: only after training


class Trainer:
    """Holds the compiled step functions, the checkpoint manager and summary writer."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, config: LoopConfig,
                 checkpoint_dir: str, summary_dir: str | None,
                 tasks: tuple, restore_dir: str | None = None):
        """checkpoint_dir: where this process saves; restore_dir: where every process
        restores from (the chief's checkpoints; defaults to checkpoint_dir).
        The model declares its loss: `model.per_example_losses(labels, outputs)` ->
        {task: per-example loss [B]} for the names in `tasks` (the loop never looks inside
        the model to choose one).
        """
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir, max_to_keep=config.max_checkpoints)
        self.restore_dir = restore_dir or checkpoint_dir
        self.summary = (tf.summary.create_file_writer(summary_dir) if summary_dir
                        else tf.summary.create_noop_writer())
        self._tasks = list(tasks)
        self.history: list[dict] = []  # mean losses per loop call, for curves and tests
        self.coordinator = (tf.distribute.coordinator.ClusterCoordinator(strategy)
                            if isinstance(strategy, tf.distribute.ParameterServerStrategy)
                            else None)
        self.preemption = None  # multi-worker: saves and exits on SIGTERM (see restore)
        self._variables = train_variables(model)
        # XLA cannot compile a step whose variables live on other tasks (parameter servers).
        self._forward_backward = tf.function(
            self._forward_backward_fn, jit_compile=config.jit_compile and not self.coordinator)
        self._train_loop = tf.function(self._train_loop_fn)

    # --- state ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restores the latest checkpoint, if any; returns the step reached.

        Under multi_worker_mirrored it also installs TF's PreemptionCheckpointHandler: a
        SIGTERM to any worker makes every worker save at the same step and exit with
        PREEMPTED_EXIT_CODE; a re-launch resumes there."""
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Its own Checkpoint object: the handler adds a run counter to the one it gets,
            # which would make checkpoints written without it fail to restore.
            self.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
                self.strategy.cluster_resolver,
                tf.train.Checkpoint(model=self.model, optimizer=self.optimizer),
                checkpoint_dir=self.restore_dir,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    exit_fn=_exit_preempted, grace_period=0))
        state = tf.train.get_checkpoint_state(self.restore_dir)
        candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
        latest = tf.train.latest_checkpoint(self.restore_dir)
        if latest and latest not in candidates:
            candidates.insert(0, latest)
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
                raise ValueError(
                    f"checkpoint {path} does not fit this model: written with another "
                    "model, preset or overrides, or by an ecom-zoo release whose layers "
                    "differ; resume with what wrote it, or use a new --model_dir. "
                    f"({type(e).__name__}: {str(e)[:300]})") from None
            except (IndexError, OSError, tf.errors.DataLossError, tf.errors.OutOfRangeError,
                    tf.errors.NotFoundError) as e:
                # A checkpoint cut short (a full disk, a copy in progress): the one before
                # it is the latest good state.
                logging.warning("checkpoint %s is unreadable (%s: %s); trying the one "
                                "before it", path, type(e).__name__, str(e)[:200])
                continue
            logging.info("restored %s at step %d", path, self.step)
            return self.step
        if candidates:
            raise ValueError(f"{self.restore_dir}: no readable checkpoint among "
                             f"{[os.path.basename(c) for c in candidates]}; use a new "
                             "--model_dir or remove the broken ones")
        return self.step

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.step)

    # --- the step ------------------------------------------------------------------------
    def _forward_backward_fn(self, features, labels):
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            per_task = self.model.per_example_losses(labels, outputs)
            per_example = losses_lib.combine(per_task, self.config.task_weights)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.config.global_batch_size)
        grads = tape.gradient(loss, self._variables)
        task_means = {t: tf.nn.compute_average_loss(
            v, global_batch_size=self.config.global_batch_size) for t, v in per_task.items()}
        return loss, task_means, grads

    def _replica_step(self, batch):
        features, labels = batch
        loss, task_means, grads = self._forward_backward(features, labels)
        self.optimizer.apply_gradients(zip(grads, self._variables))
        return loss, task_means

    def _train_loop_fn(self, iterator, num_steps, limit):
        """Up to num_steps steps, none past step `limit` (a parameter-server closure that is
        re-run after its worker died must not train past the configured steps)."""
        sums = tf.zeros([1 + len(self._tasks)])  # total loss, then one per task
        count = tf.constant(0.0)
        for _ in tf.range(num_steps):
            if self.optimizer.iterations >= limit:
                break
            loss, task_means = self.strategy.run(self._replica_step, args=(next(iterator),))
            values = [loss] + [task_means[t] for t in self._tasks]
            sums += tf.stack([self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                              for v in values])
            count += 1.0
        return sums, count

    def run_steps(self, iterator, num_steps: int):
        """Runs `num_steps` training steps; returns their mean losses.

        One tf.function call, or under parameter_server closures of PS_STEPS_PER_CLOSURE
        steps scheduled on whichever worker is free (a dead worker's closures go to the
        others), joined before returning."""
        limit = tf.constant(self.step + num_steps, tf.int64)
        if self.coordinator is None:
            sums, count = self._train_loop(iterator, tf.constant(num_steps), limit)
            sums, count = sums.numpy(), float(count)
        else:
            remote = []
            for start in range(0, num_steps, PS_STEPS_PER_CLOSURE):
                n = min(PS_STEPS_PER_CLOSURE, num_steps - start)
                remote.append(self.coordinator.schedule(
                    self._train_loop, args=(iterator, tf.constant(n), limit)))
            self.coordinator.join()
            fetched = [r.fetch() for r in remote]
            sums = np.sum([f[0] for f in fetched], axis=0)
            count = float(sum(f[1] for f in fetched))
        means = sums / max(count, 1.0)
        return means[0], {t: means[i + 1] for i, t in enumerate(self._tasks)}

    def distribute_dataset(self, dataset_fn: Callable):
        """The strategy's distributed dataset of `dataset_fn(input_context)`: per worker
        under parameter_server (each worker runs its own pipeline)."""
        if self.coordinator is not None:
            return self.coordinator.create_per_worker_dataset(
                lambda: self.strategy.distribute_datasets_from_function(dataset_fn))
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # --- the loop ------------------------------------------------------------------------
    def train(self, dist_dataset, evaluate: Callable[[int], dict] | None = None,
              verbose: bool = True) -> dict:
        """Trains from the current step to `total_steps`; returns the last mean losses."""
        cfg = self.config
        iterator = iter(dist_dataset)
        start = self.step
        bar = keras.utils.Progbar(cfg.total_steps, stateful_metrics=["loss", *self._tasks],
                                  verbose=1 if verbose else 0)
        bar.update(start)
        last = {}
        every = cfg.checkpoint_every if cfg.checkpoint_every > 0 else cfg.total_steps
        next_ckpt = (start // every + 1) * every
        next_eval = ((start // cfg.eval_every + 1) * cfg.eval_every) if cfg.eval_every else None
        t0, s0 = time.time(), start
        while self.step < cfg.total_steps:
            step = self.step
            boundary = min(cfg.total_steps, next_ckpt, next_eval or cfg.total_steps,
                           step + cfg.steps_per_loop)
            n = boundary - step
            loss, tasks = self.run_steps(iterator, n)
            step = self.step
            last = {"loss": float(loss), **{t: float(v) for t, v in tasks.items()}}
            self.history.append({"step": step, **last})
            if not np.isfinite(last["loss"]):
                raise FloatingPointError(f"loss is {last['loss']} at step {step}")
            bar.update(step, [(k, v) for k, v in last.items()])
            with self.summary.as_default(step=step):
                tf.summary.scalar("loss/total", last["loss"])
                for t in self._tasks:
                    tf.summary.scalar(f"loss/{t}", last[t])
                lr = self.optimizer.learning_rate
                tf.summary.scalar("learning_rate", float(lr.numpy() if hasattr(lr, "numpy")
                                                         else lr))
                tf.summary.scalar("examples_per_second",
                                  (step - s0) * cfg.global_batch_size / max(time.time() - t0,
                                                                            1e-9))
            if step >= next_ckpt or step >= cfg.total_steps:
                self.save()
                next_ckpt = (step // every + 1) * every
            if self.preemption is not None:
                self.preemption.save_checkpoint_if_preempted(checkpoint_number=step)
            if next_eval and step >= next_eval and step < cfg.total_steps and evaluate:
                metrics = evaluate(step)
                with self.summary.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(f"eval/{k}", v)
                next_eval = (step // cfg.eval_every + 1) * cfg.eval_every
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(
                f"-{self.step}"):
            self.save()
        self.summary.flush()
        return last


def _exit_preempted():
    logging.info("preempted: checkpoint saved, exiting with %d", PREEMPTED_EXIT_CODE)
    sys.stdout.flush()
    sys.exit(PREEMPTED_EXIT_CODE)


def cleanup_worker_dir(path: str, chief_dir: str) -> None:
    if os.path.abspath(path) != os.path.abspath(chief_dir):
        shutil.rmtree(path, ignore_errors=True)


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset,
                    jit_compile: bool = False, progress=None) -> tuple[dict, dict]:
    """Runs the model over (preprocessed features, extras) batches.

    Returns (outputs, extras) as numpy arrays; extras are the ids and labels carried along.
    `progress(n)` is called with each batch's size.
    """
    from zoo.models.features import TASKS

    forward = tf.function(lambda features: model(features, training=False), autograph=False,
                          jit_compile=jit_compile)
    preds: dict[str, list] = {}
    extras: dict[str, list] = {}
    for features, extra in dataset:
        out = forward(features)
        for k in TASKS:
            preds.setdefault(k, []).append(out[k].numpy())
        for k, v in extra.items():
            extras.setdefault(k, []).append(v.numpy())
        if progress is not None:
            progress(len(out[TASKS[0]]))
    return ({k: np.concatenate(v) for k, v in preds.items()},
            {k: np.concatenate(v) for k, v in extras.items()})
