"""`run_experiment(task, config)`: the one skeleton of every training run.

strategy -> run folder -> prepared data -> same-run check -> vocabulary -> network and
optimizer (in the strategy's scope) -> run spec -> loop (restore, train, checkpoints,
TensorBoard) -> evaluation -> what the task saves. Every entry point of `trainers/` is a
thin `main` over this function with its `Task`; what differs between kinds of training
lives in the task (`base_task.Task`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

from absl import logging

from trainers.core import base_task, config as config_lib, rundir
from zoo.data import prepare as prepare_lib


def use_jit(setting: str, model: str, model_config: dict) -> bool:
    """--jit_compile: true / false, or auto = what the model family declares."""
    import zoo

    if setting not in ("auto", "true", "false"):
        raise ValueError(f"--jit_compile must be auto, true or false, got {setting!r}")
    if setting == "auto":
        return zoo.spec(model).jit_compile(model_config)
    return setting == "true"


def learning_rate_schedule(config, total_steps: int):
    import keras

    warmup = min(config.warmup_steps, total_steps // 2)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), alpha=0.05,
        warmup_target=config.learning_rate, warmup_steps=warmup)


def check(task: base_task.Task, config) -> dict:
    """Every check that needs no data: flags, the model's config, the task's own rules.
    Returns the resolved model config. Runs before anything is created."""
    import zoo

    config_lib.validate(config)
    model_config = config_lib.model_config_of(config)
    task.task_weights(config)
    spec = zoo.spec(config.model)
    task.check(config, model_config, spec)
    if config.train_start and not task.trains_from_start:
        raise ValueError(f"--train_start: {config.model} ({task.name}) trains on the whole "
                         "training split; it is honoured by the multi-task rankers")
    if config.calibration_fraction and not (task.calibrates and spec.calibratable):
        raise ValueError(f"--calibration_fraction: {config.model} ({task.name}) has no "
                         "post-hoc calibration; it is fitted for the multi-task rankers "
                         "(bert_mtl and its structures, dnn_mtl)")
    return model_config


def run_experiment(task: base_task.Task, config,
                   after_save: Callable[[str, dict], None] | None = None) -> dict:
    """Trains `task` as `config` says; returns the result (also model_dir/metrics.json).

    after_save(model_dir, result): called on the chief once everything is saved (the
    multi-task entry point exports there)."""
    import keras
    from trainers.core import distribute, loop, optimizers
    from zoo.data import pipeline

    if distribute.serves_only(config.strategy):  # a parameter_server worker or ps task
        distribute.serve_forever(config.strategy)
        return {}
    model_config = check(task, config)
    run = base_task.Run(config=config, model_dir=config.model_dir
                        or task.default_model_dir(config), model_config=model_config)
    run.strategy = distribute.make_strategy(config.strategy, config.ps_min_shard_bytes)
    run.parameter_server = distribute.is_parameter_server(run.strategy)
    run.chief = distribute.is_chief(run.strategy)
    run.write_dir = distribute.write_dir(run.model_dir, run.strategy)
    keras.utils.set_random_seed(config.seed)

    # In a cluster the chief prepares the examples; the others wait for them to appear.
    run.builder = prepare_lib.prepare(config.data_dir, config.tfds_dir, config.label_config,
                                      wait_for_chief=not run.chief)
    if config.verbose:
        print(prepare_lib.describe(run.builder))
    run.train_files = pipeline.split_files(run.builder, "train")
    run.num_train = task.num_training_examples(run)
    run.steps = task.total_steps(config, run.num_train)
    try:  # after the data is known to be readable
        os.makedirs(run.write_dir, exist_ok=True)
    except OSError as e:  # what check_writable_dir cannot see (root on a read-only mount)
        raise ValueError(f"--model_dir {run.model_dir}: cannot create {run.write_dir}: "
                         f"{e.strerror or e}") from None

    # Vocabulary: fitted once per model_dir, then reused so checkpoints stay compatible.
    new_spec = rundir.check_same_run(run.model_dir, task.run_spec(config, model_config),
                                     ignore=task.spec_ignore)
    def fit():
        return rundir.fit_vocabulary(config, model_config, run.train_files)

    run.vocabulary = (rundir.read_vocabulary(run.model_dir)
                      or task.initial_vocabulary(config, fit) or fit())
    run.sample = next(iter(pipeline.make_dataset(
        run.train_files, batch_size=2, history_length=config.label_config.history_length)))
    run.jit_compile = use_jit(config.jit_compile, config.model, model_config)

    with run.strategy.scope():
        run.network = task.build_network(run)
        # No gradient clipping: Keras clips each replica's gradient before the cross-replica
        # sum, which would make multi-replica training differ from one device.
        lazy = optimizers.use_lazy(config.lazy_table_updates, run.model)
        logging.info("optimizer: %s", "LazyAdamW" if lazy else "AdamW")
        optimizer = optimizers.adamw(learning_rate_schedule(config, run.steps),
                                     config.weight_decay, lazy, config.ema_momentum,
                                     task.moment_steps(config))
        # Build the optimizer slots now, so a restore can match every object.
        optimizer.build(loop.train_variables(run.network))
        task.init_optimizer(run, optimizer)
    rundir.record_run(run.model_dir, run.write_dir, new_spec, run.vocabulary)
    if run.chief:
        config_lib.write_flagfile(run.model_dir, dataclasses.replace(
            config, model_dir=run.model_dir))
    if run.parameter_server and config.verbose:
        tables = distribute.sharded_tables(run.network)
        print(f"sharded across the parameter servers ({len(tables)} tables; other variables "
              "whole, round robin):")
        for path, shards in tables.items():
            print(f"  {path}: " + ", ".join(f"{rows} rows on {device}"
                                            for rows, device in shards))

    if not run.network.trainable_variables:  # statistics only (the popularity baseline)
        run.steps = 0
    loop_config = loop.LoopConfig(
        total_steps=run.steps, global_batch_size=config.batch_size,
        task_weights=task.task_weights(config), steps_per_loop=config.steps_per_loop,
        checkpoint_every=config.checkpoint_every, jit_compile=run.jit_compile,
        eval_every=config.eval_every)
    run.trainer = loop.Trainer(run.strategy, run.network, optimizer, loop_config,
                               checkpoint_dir=os.path.join(run.write_dir, "checkpoints"),
                               summary_dir=os.path.join(run.write_dir, "train"),
                               restore_dir=os.path.join(run.model_dir, "checkpoints"),
                               tasks=task.loss_names)
    run.start_step = run.trainer.restore()  # every worker restores the chief's latest
    dist_ds = run.trainer.distribute_dataset(lambda ctx: task.train_dataset(run, ctx))
    evaluate = task.periodic_evaluation(run)
    if config.verbose:
        print(task.describe(run))
    t0 = time.time()
    run.trainer.train(dist_ds, evaluate=evaluate, verbose=config.verbose)
    if config.ema_momentum and run.network.trainable_variables:
        # The moving average replaces the last weights for evaluation and saving.
        with run.strategy.scope():
            optimizer.finalize_variable_values(loop.train_variables(run.network))
    train_seconds = time.time() - t0
    result = {"step": run.trainer.step, "train_seconds": train_seconds,
              "start_step": run.start_step, "loss_curve": run.trainer.history,
              "examples_per_second": (run.trainer.step - run.start_step) * config.batch_size
              / max(train_seconds, 1e-9)}
    task.finalize(run, result)
    task.evaluate(run, result)
    if run.chief:
        task.save(run, result)
        rundir.write_json(os.path.join(run.model_dir, "metrics.json"), result)
        if after_save is not None:
            after_save(run.model_dir, result)
    else:
        loop.cleanup_worker_dir(run.write_dir, run.model_dir)
    return result


def train(config, after_save: Callable[[str, dict], None] | None = None) -> dict:
    """Trains `config.model` the way its family is trained: the multi-task or the retrieval
    task under the custom loop, or LightGBM for the tree family."""
    import zoo

    spec = zoo.spec(config.model)
    if spec.trainer == "lightgbm":
        from trainers.core import gbdt_task

        return gbdt_task.run(config, after_save=after_save)
    if spec.task == "retrieval":
        from trainers.core.retrieval_task import RetrievalTask

        return run_experiment(RetrievalTask(), config, after_save=after_save)
    from trainers.core.multitask_task import MultitaskTask

    return run_experiment(MultitaskTask(), config, after_save=after_save)
