"""`RetrievalTask`: train a retriever (`two_tower`) on the clicked impressions.

The same skeleton as every run (`train_lib.run_experiment`: strategies, checkpoints,
TensorBoard, the progress bar); what differs is here. A training step is a batch of
clicked impressions (the request's query and history, the clicked item); the model's own
loss is the in-batch softmax. Evaluation searches the WHOLE catalogue (the contract's items
table) for each clicked impression of the eval split and reports the share whose clicked
item is among the top K (recall@K), and the mean reciprocal rank.
"""

from __future__ import annotations

import dataclasses
import math

from trainers.core import base_task, evaluation, rundir

# K of the recall@K the evaluation reports.
RECALL_AT = (10, 50, 100, 200)


def positives(ds):
    """Clicked impressions only, re-batched (the rows of a batch are its negatives)."""
    return ds.unbatch().filter(lambda ex: ex["click"] > 0)


class RetrievalTask(base_task.Task):
    name = "retrieval"
    loss_names = ("retrieval",)

    def __init__(self):
        self._catalogue = None

    def run_spec(self, config, model_config):
        from zoo.data.ecom_events import EXAMPLES_VERSION

        spec = {"model": config.model, "preset": config.preset, "model_config": model_config,
                "label_config": dataclasses.asdict(config.label_config),
                "examples_version": EXAMPLES_VERSION, "task": self.name,
                "labels_fraction": config.labels_fraction}
        if config.init_checkpoint:
            spec["init_checkpoint"] = config.init_checkpoint
        return spec

    def task_weights(self, config) -> dict:
        """One loss: --task_weights means nothing here unless it names "retrieval"."""
        from trainers.core.config import DEFAULT_TASK_WEIGHTS, parse_task_weights

        if config.task_weights == DEFAULT_TASK_WEIGHTS:
            return {}
        return parse_task_weights(config.task_weights, self.loss_names)

    def check(self, config, model_config, spec) -> None:
        if config.export_base:
            raise ValueError(f"model {config.model!r} is not exported for TF Serving yet: "
                             "drop --export_base (python -m trainers.recommend uses the "
                             "model_dir)")
        if config.lora_rank or config.freeze_encoder:
            raise ValueError(f"model {config.model!r} trains whole: --lora_rank and "
                             "--freeze_encoder are for the multi-task rankers")
        if config.init_checkpoint:
            pretrained_config(config.init_checkpoint)  # a clear error before any work

    def num_training_examples(self, run) -> int:
        """The clicked training impressions (of the labelled fraction)."""
        import tensorflow as tf
        from zoo.data import pipeline

        ds = tf.data.TFRecordDataset(run.train_files)
        if run.config.labels_fraction < 1.0:
            ds = ds.filter(lambda r: pipeline._kept(r, run.config.labels_fraction))
        spec = {"click": tf.io.FixedLenFeature([], tf.int64)}
        ds = ds.batch(8192).map(lambda s: tf.reduce_sum(tf.io.parse_example(s, spec)["click"]))
        return int(sum(int(n) for n in ds))

    def total_steps(self, config, num_train: int) -> int:
        from trainers.core import config as config_lib

        passes = int(config_lib.model_config_of(config)["positive_passes"])
        return config.steps or max(1, math.ceil(
            config.epochs * passes * num_train / config.batch_size))

    def build_network(self, run):
        import keras
        import zoo

        keras.utils.set_random_seed(run.config.seed)
        model = zoo.get(run.config.model, run.config.preset, vocabulary=run.vocabulary,
                        **run.config.model_overrides)
        model(model.preprocess(evaluation.raw_features(run.sample)))
        if run.config.init_checkpoint:
            copied = model.initialise_from_encoder(
                pretrained_encoder(run.config.init_checkpoint, run.sample),
                rundir.read_vocabulary(run.config.init_checkpoint))
            if run.config.verbose:
                print(f"initialised from {run.config.init_checkpoint}: {', '.join(copied)}")
        run.model = model
        return model

    def train_dataset(self, run, ctx):
        import tensorflow as tf
        from zoo.data import pipeline

        config = run.config
        model = run.model
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        seed = config.seed
        if run.parameter_server:
            seed = tf.cast(tf.distribute.coordinator.experimental_get_current_worker_index(),
                           tf.int64) + config.seed
        purchase_weight = float(run.model_config.get("purchase_weight", 0.0))
        ds = pipeline.make_dataset(
            run.train_files, batch_size=1024, shuffle=True, repeat=True, seed=seed,
            cache=config.cache_dataset, history_length=config.label_config.history_length,
            input_context=ctx, keep_fraction=config.labels_fraction)
        ds = positives(ds).batch(per_replica, drop_remainder=True)
        if run.start_step and not run.parameter_server:
            ds = ds.skip(run.start_step * (ctx.num_replicas_in_sync // ctx.num_input_pipelines))

        def features_and_labels(batch):
            features = model.preprocess(evaluation.raw_features(batch))
            weight = 1.0 + purchase_weight * tf.cast(batch["purchase"], tf.float32)
            return features, {"item_index": features["item_index"], "weight": weight}

        return ds.map(features_and_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    # ---- evaluation: the clicked eval impressions against the whole catalogue ----
    def _catalogue_embeddings(self, run):
        import numpy as np
        from zoo.data import contract, requests

        if self._catalogue is None:
            tables = contract.read_contract(run.builder.info.metadata["contract_dir"])
            self._catalogue = requests.catalogue(tables)
        return np.asarray(catalogue_embeddings(run.model, self._catalogue))

    def _retrieval_metrics(self, run) -> dict:
        import numpy as np
        from zoo.data import pipeline

        if not run.has_eval:
            return {}
        items = self._catalogue_embeddings(run)
        item_ids = self._catalogue["item_id"]
        index = {item: i for i, item in enumerate(item_ids)}
        ds = positives(pipeline.make_dataset(
            pipeline.split_files(run.builder, "eval"), batch_size=4096,
            history_length=run.config.label_config.history_length)).batch(
            run.config.eval_batch_size)
        ranks = []
        for batch in ds:
            q = run.model.query_embeddings(evaluation.raw_features(batch)).numpy()
            scores = q @ items.T
            target = np.array([index[i.decode()] for i in batch["item_id"].numpy()])
            own = scores[np.arange(len(target)), target]
            ranks.append((scores > own[:, None]).sum(axis=1) + 1)  # 1 = the top
        ranks = np.concatenate(ranks) if ranks else np.zeros(0)
        if not len(ranks):
            return {}
        out = {f"recall@{k}": float((ranks <= k).mean()) for k in RECALL_AT}
        out["mrr"] = float((1.0 / ranks).mean())
        out["eval_positives"] = int(len(ranks))
        out["catalogue_size"] = int(len(item_ids))
        return out

    def periodic_evaluation(self, run):
        if not run.has_eval:
            return None
        return lambda step: self._retrieval_metrics(run)

    def describe(self, run):
        c = run.config
        return (f"training {c.model}/{c.preset} ({run.model.count_params():,} parameters) "
                f"under {c.strategy} for {run.steps} steps of {c.batch_size} clicked "
                f"impressions ({run.num_train:,} in train), from step {run.start_step}; "
                f"model_dir={run.model_dir}")

    def evaluate(self, run, result):
        import tensorflow as tf

        result["parameters"] = run.model.count_params()
        metrics = self._retrieval_metrics(run)
        if not metrics:
            return
        result["metrics"] = metrics
        if run.config.verbose:
            print(f"\nretrieval on the eval split (step {run.trainer.step}): each clicked "
                  f"impression's item ranked among all {metrics['catalogue_size']:,} items")
            for k, v in metrics.items():
                print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v:,}")
        with run.trainer.summary.as_default(step=run.trainer.step):
            for k, v in metrics.items():
                tf.summary.scalar(f"eval/{k}", v)
        run.trainer.summary.flush()

    def save(self, run, result):
        rundir.save_trained(run, run.model, task=self.name)


def pretrained_config(model_dir: str) -> dict:
    """The pretrain_config.json of a finished `trainers.pretrain` run (clear errors)."""
    import json
    import os

    from trainers.core.pretrain_task import encoder_path

    path = os.path.join(model_dir, "pretrain_config.json")
    if not os.path.exists(path) or not os.path.exists(encoder_path(model_dir) + ".index"):
        raise ValueError(f"--init_checkpoint {model_dir}: expected a finished "
                         "python -m trainers.pretrain run (pretrain_config.json and "
                         "encoder/encoder.index)")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    import zoo

    if not zoo.spec(config.get("model", "")).pretrainable:
        raise ValueError(f"--init_checkpoint {model_dir}: pre-trained model "
                         f"{config.get('model')!r} has no transformer encoder to start from")
    return config


def pretrained_encoder(model_dir: str, sample: dict):
    """The pre-trained `bert_mtl` backbone of a `trainers.pretrain` run, weights loaded."""
    import zoo
    from trainers.core.multitask_task import init_encoder

    config = pretrained_config(model_dir)
    vocabulary = rundir.read_vocabulary(model_dir)
    model = zoo.get(config["model"], config["preset"], vocabulary=vocabulary,
                    num_price_ranges=config["label_config"]["num_price_ranges"],
                    **config.get("model_overrides", {}))
    model(model.preprocessor(evaluation.raw_features(sample)))
    init_encoder(model, model_dir)
    return model.backbone


def catalogue_embeddings(model, catalogue: dict, batch_size: int = 4096):
    """[N, E] item embeddings of a catalogue's raw item fields (`requests.catalogue`)."""
    import numpy as np

    n = len(catalogue["item_id"])
    parts = [model.item_embeddings({k: v[i:i + batch_size] for k, v in catalogue.items()})
             for i in range(0, n, batch_size)]
    return np.concatenate([np.asarray(p) for p in parts]) if parts else np.zeros((0, 0))
