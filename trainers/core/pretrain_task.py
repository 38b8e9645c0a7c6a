"""`PretrainTask`: self-supervised pre-training of a family's encoder on the logs.

Masked behaviour modelling (BERT4Rec: mask history events, predict their item and category),
masked WordPiece modelling of the query and next-event prediction at the candidate slot
(`zoo.models.bert_mtl.pretrainer`), on every training impression's input sequence; the
impression labels are unused, the next event comes from the log. Leaves

  model_dir/encoder/encoder*     the backbone's weights: `--init_checkpoint model_dir` of
                                 the multi-task trainer starts from them (heads fresh)
  model_dir/vocabulary.json      the fine-tuning run reuses it (embedding rows must match)
  model_dir/pretrain_config.json, metrics.json (top-1 accuracy of every task on the eval
                                 split)
"""

from __future__ import annotations

import dataclasses
import os

from trainers.core import base_task, evaluation, rundir

DEFAULT_TASK_WEIGHTS = "item=1,category=1,query=1,next_item=1,next_category=1"
ENCODER_PREFIX = os.path.join("encoder", "encoder")
# Batches of the eval split the top-1 accuracies are measured on.
EVAL_BATCHES = 20


def encoder_path(model_dir: str) -> str:
    return os.path.join(model_dir, ENCODER_PREFIX)


class PretrainTask(base_task.Task):
    name = "pretrain"
    flag_defaults = {"task_weights": DEFAULT_TASK_WEIGHTS, "learning_rate": 1e-3}
    task_weights_help = ("Loss weight per pre-training task (item, category, query, "
                         "next_item, next_category); a task left out weighs 1, =0 turns it "
                         "off.")

    def __init__(self):
        self._masker = None

    @property
    def loss_names(self):
        from zoo.models.bert_mtl.pretrainer import TASKS

        return TASKS

    def default_model_dir(self, config) -> str:
        return os.path.join("runs", f"{config.model}_{config.preset}_pretrain")

    def check(self, config, model_config, spec) -> None:
        if not spec.pretrainable:
            raise ValueError(f"--model {config.model} has no transformer encoder to pre-train")
        if config.export_base or config.init_checkpoint or config.labels_fraction < 1.0:
            raise ValueError("--export_base, --init_checkpoint and --labels_fraction do not "
                             "apply to pre-training")
        if config.strategy == "parameter_server":
            # The masked-item head is tied to the item table: every step would read the
            # whole table from the parameter servers (a sampled softmax would be needed).
            raise ValueError("trainers.pretrain does not support --strategy=parameter_server "
                             "yet; use one_device, mirrored or multi_worker_mirrored")

    def run_spec(self, config, model_config):
        return {"model": config.model, "preset": config.preset, "model_config": model_config,
                "label_config": dataclasses.asdict(config.label_config), "task": "pretrain"}

    def build_network(self, run):
        import keras
        import zoo
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        config = run.config
        # Seeded right before the build (as the multi-task task): preparation and
        # vocabulary fitting, which a resumed run skips, must not move the initial weights.
        keras.utils.set_random_seed(config.seed)
        run.model = zoo.get(config.model, config.preset, vocabulary=run.vocabulary,
                            num_price_ranges=config.label_config.num_price_ranges,
                            **config.model_overrides)
        self._masker = pretrainer_lib.make_masker(run.model.preprocessor, run.model_config)
        net = pretrainer_lib.BertMtlPretrainer(run.model.backbone, self._masker.num_events,
                                               self._masker.num_tokens, name="pretrainer")
        net(self._masker(run.model.preprocessor(evaluation.raw_features(run.sample)))[0])
        return net

    def _masked(self, run):
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        preprocessor, masker = run.model.preprocessor, self._masker

        def masked(batch):
            x, targets = masker(preprocessor(evaluation.raw_features(batch)))
            return x, {**targets, **pretrainer_lib.next_event_targets(preprocessor, batch)}

        return masked

    def train_dataset(self, run, ctx):
        import tensorflow as tf
        from zoo.data import pipeline

        config = run.config
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        ds = pipeline.make_dataset(
            run.train_files, batch_size=per_replica, shuffle=True, repeat=True,
            seed=config.seed, cache=config.cache_dataset, drop_remainder=True,
            with_labels=False, with_pretext=True,
            history_length=config.label_config.history_length, input_context=ctx,
            skip_batches=run.start_step * per_step)
        return ds.map(self._masked(run), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def describe(self, run):
        c = run.config
        backbone = run.model.backbone.count_params()
        return (f"pre-training the {c.model}/{c.preset} encoder ({backbone:,} parameters; "
                f"heads {run.network.count_params() - backbone:,}) under {c.strategy} for "
                f"{run.steps} steps of {c.batch_size}, from step {run.start_step}; "
                f"model_dir={run.model_dir}")

    def evaluate(self, run, result):
        """Top-1 accuracy on (a part of) the eval split, with a fixed masking seed."""
        import tensorflow as tf
        from zoo.data import pipeline
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        config, net = run.config, run.network
        split = "eval" if run.has_eval else "train"
        tf.random.set_seed(config.seed)
        eval_ds = pipeline.make_dataset(pipeline.split_files(run.builder, split),
                                        batch_size=config.eval_batch_size, with_labels=False,
                                        with_pretext=True,
                                        history_length=config.label_config.history_length)
        forward = tf.function(lambda x: net(x, training=False))
        sums, batches = {}, 0
        for batch in eval_ds.map(self._masked(run)).take(EVAL_BATCHES):
            acc = pretrainer_lib.masked_accuracy(batch[1], forward(batch[0]))
            sums = {k: sums.get(k, 0.0) + v for k, v in acc.items()}
            batches += 1
        result["metrics"] = {
            f"{k}/{'accuracy' if k.startswith('next_') else 'masked_accuracy'}":
                v / max(batches, 1) for k, v in sums.items()}
        if config.verbose:
            print("top-1 accuracy on the eval split: " + ", ".join(
                f"{k} {v:.4f}" for k, v in result["metrics"].items()))

    def save(self, run, result):
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        pretrainer_lib.save_encoder(run.model.backbone, encoder_path(run.model_dir))
        rundir.write_json(os.path.join(run.model_dir, "pretrain_config.json"), {
            **rundir.jsonable(dataclasses.asdict(run.config)), "model_dir": run.model_dir,
            "total_steps": run.steps, "model_config": run.model_config})
