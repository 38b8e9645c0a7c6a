"""`python -m trainers.pretrain`: self-supervised pre-training of the encoder on the logs.

Masked behaviour modelling (BERT4Rec: mask history events, predict their item and category),
masked WordPiece modelling of the query and next-event prediction at the candidate slot
(`zoo.models.bert_mtl.pretrainer`), on every training impression's input sequence; the
impression labels are unused, the next event comes from the log. Same data flags, strategies, custom
loop, checkpoints/resume, TensorBoard and progress bar as `trainers.multitask`. Writes

  model_dir/encoder/encoder*     the backbone's weights: `trainers.multitask
                                 --init_checkpoint model_dir` starts from them (heads fresh)
  model_dir/vocabulary.json      the fine-tuning run reuses it (embedding rows must match)
  model_dir/pretrain_config.json, metrics.json (top-1 accuracy of every task on the eval
                                 split)
"""

from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers import multitask  # noqa: E402
from zoo.data import contract, prepare as prepare_lib  # noqa: E402

DEFAULT_TASK_WEIGHTS = "item=1,category=1,query=1,next_item=1,next_category=1"
ENCODER_PREFIX = os.path.join("encoder", "encoder")


def default_model_dir(config: multitask.TrainConfig) -> str:
    return os.path.join("runs", f"{config.model}_{config.preset}_pretrain")


def encoder_path(model_dir: str) -> str:
    return os.path.join(model_dir, ENCODER_PREFIX)


def run(config: multitask.TrainConfig) -> dict:
    """Pre-trains the encoder of `config.model`; returns the metrics (config as in multitask;
    task_weights name the pre-training tasks item, category, query, next_item,
    next_category; a task left out weighs 1)."""
    import keras
    import tensorflow as tf
    import zoo
    from trainers import distribute, loop, optimizers
    from zoo.data import pipeline
    from zoo.models.bert_mtl import pretrainer as pretrainer_lib

    model_dir = config.model_dir or default_model_dir(config)
    # Checked before anything is written or prepared.
    model_config = zoo.get_config(config.model, config.preset,
                                  num_price_ranges=config.label_config.num_price_buckets,
                                  **config.model_overrides)
    if "max_history" not in model_config or "num_layers" not in model_config:
        raise ValueError(f"--model {config.model} has no transformer encoder to pre-train")
    task_weights = multitask.parse_task_weights(config.task_weights, pretrainer_lib.TASKS)
    if config.strategy == "parameter_server":
        # The masked-item head is tied to the item table: every step would read the whole
        # table from the parameter servers (a sampled softmax would be needed first).
        raise ValueError("trainers.pretrain does not support --strategy=parameter_server "
                         "yet; use one_device, mirrored or multi_worker_mirrored")
    strategy = distribute.make_strategy(config.strategy, config.ps_min_shard_bytes)
    chief = distribute.is_chief(strategy)
    write_dir = distribute.write_dir(model_dir, strategy)
    os.makedirs(write_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    builder = prepare_lib.prepare(config.data_dir, config.tfds_dir, config.label_config,
                                  wait_for_chief=not chief)
    if config.verbose:
        print(prepare_lib.describe(builder))
    train_files = pipeline.split_files(builder, "train")
    num_train = builder.info.splits["train"].num_examples
    steps = config.steps or max(1, math.ceil(config.epochs * num_train / config.batch_size))

    new_spec = multitask.check_same_run(model_dir, {
        "model": config.model, "preset": config.preset, "model_config": model_config,
        "label_config": dataclasses.asdict(config.label_config), "task": "pretrain"})
    vocabulary = multitask.load_or_fit_vocabulary(config, model_config, train_files,
                                                  model_dir)

    with strategy.scope():
        # Seeded right before the build (as multitask.build_model): preparation and
        # vocabulary fitting, which a resumed run skips, must not move the initial weights.
        keras.utils.set_random_seed(config.seed)
        model = zoo.get(config.model, config.preset, vocabulary=vocabulary,
                        num_price_ranges=config.label_config.num_price_buckets,
                        **config.model_overrides)
        masker = pretrainer_lib.make_masker(model.preprocessor, model_config)
        net = pretrainer_lib.BertMtlPretrainer(model.backbone, masker.num_events,
                                               masker.num_tokens, name="pretrainer")
        optimizer = optimizers.adamw(multitask.learning_rate_schedule(config, steps),
                                     config.weight_decay,
                                     optimizers.use_lazy(config.lazy_table_updates, model))
        sample = next(iter(pipeline.make_dataset(
            train_files, batch_size=2, history_length=config.label_config.history_length)))
        net(masker(model.preprocessor(multitask.raw_features(sample)))[0])
        optimizer.build(loop.train_variables(net))
    multitask.record_run(model_dir, write_dir, new_spec, vocabulary)
    preprocessor = model.preprocessor

    def masked(batch):
        x, targets = masker(preprocessor(multitask.raw_features(batch)))
        return x, {**targets, **pretrainer_lib.next_event_targets(preprocessor, batch)}

    def train_input(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        ds = pipeline.make_dataset(
            train_files, batch_size=per_replica, shuffle=True, repeat=True, seed=config.seed,
            cache=config.cache_dataset, drop_remainder=True, with_labels=False,
            with_pretext=True,
            history_length=config.label_config.history_length, input_context=ctx,
            skip_batches=start_step * per_step)
        return ds.map(masked, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    loop_config = loop.LoopConfig(
        total_steps=steps, global_batch_size=config.batch_size, task_weights=task_weights,
        steps_per_loop=config.steps_per_loop, checkpoint_every=config.checkpoint_every,
        jit_compile=multitask.use_jit(config.jit_compile, model_config))
    trainer = loop.Trainer(strategy, net, optimizer, loop_config,
                           checkpoint_dir=os.path.join(write_dir, "checkpoints"),
                           summary_dir=os.path.join(write_dir, "train"),
                           restore_dir=os.path.join(model_dir, "checkpoints"),
                           loss_fn=pretrainer_lib.per_example_losses,
                           tasks=pretrainer_lib.TASKS)
    start_step = trainer.restore()
    dist_ds = trainer.distribute_dataset(train_input)
    if config.verbose:
        print(f"pre-training the {config.model}/{config.preset} encoder "
              f"({model.backbone.count_params():,} parameters; heads "
              f"{net.count_params() - model.backbone.count_params():,}) under "
              f"{config.strategy} for {steps} steps of {config.batch_size}, from step "
              f"{start_step}; model_dir={model_dir}")
    t0 = time.time()
    trainer.train(dist_ds, verbose=config.verbose)
    result = {"step": trainer.step, "train_seconds": time.time() - t0,
              "loss_curve": trainer.history}

    # Top-1 accuracy on (a part of) the eval split, with a fixed masking seed.
    split = "eval" if "eval" in builder.info.splits else "train"
    tf.random.set_seed(config.seed)
    eval_ds = pipeline.make_dataset(pipeline.split_files(builder, split),
                                    batch_size=config.eval_batch_size, with_labels=False,
                                    with_pretext=True,
                                    history_length=config.label_config.history_length)
    forward = tf.function(lambda x: net(x, training=False))
    sums, batches = {}, 0
    for batch in eval_ds.map(masked).take(20):
        acc = pretrainer_lib.masked_accuracy(batch[1], forward(batch[0]))
        sums = {k: sums.get(k, 0.0) + v for k, v in acc.items()}
        batches += 1
    result["metrics"] = {
        f"{k}/{'accuracy' if k.startswith('next_') else 'masked_accuracy'}": v / max(batches, 1)
        for k, v in sums.items()}
    if config.verbose:
        print("top-1 accuracy on the eval split: " + ", ".join(
            f"{k} {v:.4f}" for k, v in result["metrics"].items()))

    if chief:
        pretrainer_lib.save_encoder(model.backbone, encoder_path(model_dir))
        multitask.write_json(os.path.join(model_dir, "pretrain_config.json"), {
            **multitask.jsonable(dataclasses.asdict(config)), "model_dir": model_dir,
            "total_steps": steps, "model_config": model_config})
        multitask.write_json(os.path.join(model_dir, "metrics.json"), result)
    else:
        loop.cleanup_worker_dir(write_dir, model_dir)
    return result


# --- flags -------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    multitask.define_flags()
    FLAGS.set_default("task_weights", DEFAULT_TASK_WEIGHTS)
    FLAGS["task_weights"].help = ("Loss weight per pre-training task (item, category, query, "
                                  "next_item, next_category); a task left out weighs 1, "
                                  "=0 turns it off.")
    FLAGS.set_default("learning_rate", 1e-3)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from trainers import distribute

    distribute.configure_cpu_devices(FLAGS.cpu_devices)
    try:
        config = multitask.config_from_flags()
        if config.export_base or config.init_checkpoint or config.labels_fraction < 1.0:
            raise ValueError("--export_base, --init_checkpoint and --labels_fraction do not "
                             "apply to pre-training")
        run(config)
    except (contract.ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
