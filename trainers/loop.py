"""One custom training loop for every tf.distribute strategy.

The step is `strategy.run` of a replica function inside a `tf.function`; the forward and
backward pass are a separate `tf.function(jit_compile=...)` so XLA compiles the numeric
model while string preprocessing stays in tf.data. Losses are per example and averaged
over the GLOBAL batch (`tf.nn.compute_average_loss`), so gradients summed across replicas
equal the single-device gradient. The Keras model, optimizer and progress bar are used as
they are: no Keras internals are patched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from zoo.models import losses as losses_lib
from zoo.models.features import TASKS


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
                 restore_dir: str | None = None, loss_fn: Callable | None = None,
                 tasks: tuple = TASKS):
        """checkpoint_dir: where this process saves; restore_dir: where every process
        restores from (the chief's checkpoints; defaults to checkpoint_dir).
        loss_fn(labels, outputs) -> {task: per-example loss [B]} for the names in `tasks`
        (default: the multi-task losses of `zoo.models.losses`; pre-training passes its own).
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
        self.loss_fn = loss_fn
        self.history: list[dict] = []  # mean losses per loop call, for curves and tests
        self._forward_backward = tf.function(self._forward_backward_fn,
                                             jit_compile=config.jit_compile)
        self._train_loop = tf.function(self._train_loop_fn)

    # --- state ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restores the latest checkpoint, if any; returns the step reached."""
        latest = tf.train.latest_checkpoint(self.restore_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("restored %s at step %d", latest, self.step)
        return self.step

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.step)

    # --- the step ------------------------------------------------------------------------
    def _forward_backward_fn(self, features, labels):
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            per_task = (self.loss_fn(labels, outputs) if self.loss_fn else
                        losses_lib.per_example_losses(
                            labels, outputs, purchase_on_clicks_only=(
                                losses_lib.purchase_loss_on_clicks_only(self.model))))
            per_example = losses_lib.combine(per_task, self.config.task_weights)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.config.global_batch_size)
        grads = tape.gradient(loss, self.model.trainable_variables)
        task_means = {t: tf.nn.compute_average_loss(
            v, global_batch_size=self.config.global_batch_size) for t, v in per_task.items()}
        return loss, task_means, grads

    def _replica_step(self, batch):
        features, labels = batch
        loss, task_means, grads = self._forward_backward(features, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, task_means

    def _train_loop_fn(self, iterator, num_steps):
        sums = tf.zeros([1 + len(self._tasks)])  # total loss, then one per task
        for _ in tf.range(num_steps):
            loss, task_means = self.strategy.run(self._replica_step, args=(next(iterator),))
            values = [loss] + [task_means[t] for t in self._tasks]
            sums += tf.stack([self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                              for v in values])
        means = sums / tf.cast(num_steps, tf.float32)
        return means[0], {t: means[i + 1] for i, t in enumerate(self._tasks)}

    def run_steps(self, iterator, num_steps: int):
        """Runs `num_steps` training steps in one tf.function call; returns mean losses."""
        return self._train_loop(iterator, tf.constant(num_steps))

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


def cleanup_worker_dir(path: str, chief_dir: str) -> None:
    if os.path.abspath(path) != os.path.abspath(chief_dir):
        shutil.rmtree(path, ignore_errors=True)


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset,
                    jit_compile: bool = False) -> tuple[dict, dict]:
    """Runs the model over (preprocessed features, extras) batches.

    Returns (outputs, extras) as numpy arrays; extras are the ids and labels carried along.
    """
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
    return ({k: np.concatenate(v) for k, v in preds.items()},
            {k: np.concatenate(v) for k, v in extras.items()})
