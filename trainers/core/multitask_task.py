"""`MultitaskTask`: train a zoo model on click, purchase, price range and demand.

Fine-tuning options live here because only this task has them: a pre-trained encoder
(`--init_checkpoint`), LoRA adapters or a frozen encoder, a fraction of the labels, and the
post-hoc calibration fitted on a held-out time slice (`--calibration_fraction`,
`trainers.core.calibration`). Under
parameter servers the model that is evaluated, saved and exported is a local copy with the
sharded tables gathered, so the saved model is the same whatever the strategy.
"""

from __future__ import annotations

import dataclasses

from trainers.core import base_task, config as config_lib, evaluation, rundir

# Model config keys of pre-training only: changing one does not change a fine-tuning run.
PRETRAIN_KEY_PREFIX = "pretrain_"
# TrainConfig fields recorded in the run spec when they differ from their defaults.
FINE_TUNING_FIELDS = ("init_checkpoint", "lora_rank", "freeze_encoder",
                      "lora_train_embeddings", "labels_fraction", "calibration_fraction")
# What a warm start's parent must share with the run (its weights must fit).
WARM_START_SAME = ("model", "preset", "model_overrides")


def check_warm_start(config, spec) -> dict:
    """The parent run of --warm_start_from, checked before anything is written; returns
    what the run spec records of it."""
    import os

    parent = config.warm_start_from
    if config.init_checkpoint:
        raise ValueError("--warm_start_from and --init_checkpoint exclude each other (the "
                         "parent already holds an encoder)")
    if spec.grow_vocabulary is None:
        raise ValueError(f"--warm_start_from: model {config.model!r} cannot be warm-started "
                         "(its vocabulary cannot grow)")
    for name in (rundir.MODEL, rundir.TRAIN_CONFIG, "vocabulary.json"):
        if not os.path.exists(os.path.join(parent, name)):
            raise ValueError(f"--warm_start_from {parent}: no {name}; expected a finished "
                             "python -m trainers.multitask model_dir")
    theirs = rundir.train_config_of(parent)
    ours = {"model": config.model, "preset": config.preset,
            "model_overrides": dict(config.model_overrides)}
    differ = [k for k in WARM_START_SAME if (theirs.get(k) or {} if k == "model_overrides"
                                              else theirs.get(k)) != ours[k]]
    if differ:
        raise ValueError(f"--warm_start_from {parent}: its " + ", ".join(
            f"{k} {theirs.get(k)!r}" for k in differ) + " differ from this run's (" + ", ".join(
            f"{ours[k]!r}" for k in differ) + "); its weights would not fit")
    record = rundir.read_json(os.path.join(parent, "metrics.json")) or {}
    return {"model_dir": os.path.abspath(parent), "data_dir": theirs.get("data_dir"),
            "step": record.get("step"),
            **({"moment_steps": moment_steps_of(parent)} if config.warm_start_optimizer
               else {})}


def warm_start(model, parent_dir: str, spec=None) -> None:
    """Copies the parent's weights into `model` (built with the grown vocabulary): equal
    shapes whole; an id table by id (`spec.rows`: every id the two vocabularies share keeps
    its trained row, a new id's row keeps its fresh values, an evicted id's row is gone);
    without `spec.table_rows`, a grown table row for row as a prefix."""
    import numpy as np

    parent, _ = rundir.load_trained(parent_dir)
    ours, theirs = model.weights, parent.weights
    if len(ours) != len(theirs):
        raise ValueError(f"--warm_start_from {parent_dir}: {len(theirs)} weights, this model "
                         f"has {len(ours)}")
    previous = getattr(parent, "vocabulary", None) or {}
    current = getattr(model, "vocabulary", None) or {}
    for mine, old in zip(ours, theirs):
        rows = (spec.rows(previous, current, mine.path, mine.shape[0])
                if spec is not None and len(mine.shape) else None)
        _copy_into(mine, np.asarray(old.numpy()), rows,
                   f"--warm_start_from {parent_dir}: weight {old.path}")


def _copy_into(mine, value, rows, what: str) -> None:
    """mine (a variable) <- value, as `_moved` places it."""
    mine.assign(_moved(mine.numpy(), value, rows, what, mine.path))


def _moved(current, value, rows, what: str, path: str):
    """`value` placed where `current` (an array) would take it: whole when the shapes agree;
    by `rows` (the source row of each of current's rows, -1: keep current's) for an id
    table; as a prefix for a grown table of a family without `table_rows`."""
    import numpy as np

    shape = tuple(current.shape)
    if rows is not None and shape[1:] == value.shape[1:] and (
            len(rows) == shape[0] and rows.max(initial=-1) < value.shape[0]):
        table = np.array(current)
        known = rows >= 0
        table[known] = value[rows[known]]
        return table
    if shape == value.shape:
        return value
    if (rows is None and len(value.shape) >= 1 and shape[1:] == value.shape[1:]
            and shape[0] >= value.shape[0]):
        grown = np.array(current)
        grown[:value.shape[0]] = value
        return grown
    raise ValueError(f"{what} is {value.shape}, this model's {path} {shape}")


OPTIMIZER_KEY = "optimizer/_variables/{}/.ATTRIBUTES/VARIABLE_VALUE"
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def parent_checkpoint(parent_dir: str) -> str:
    import os
    import tensorflow as tf

    path = tf.train.latest_checkpoint(os.path.join(parent_dir, "checkpoints"))
    if not path:
        raise ValueError(f"--warm_start_optimizer: {parent_dir} holds no checkpoint "
                         "(checkpoints/) to carry the optimizer state from")
    return path


def moment_steps_of(parent_dir: str) -> int:
    """The steps the parent's optimizer moments were formed over: its own steps, plus its
    parent's when it carried them too."""
    import os
    import tensorflow as tf

    reader = tf.train.load_checkpoint(parent_checkpoint(parent_dir))
    spec = rundir.read_json(os.path.join(parent_dir, rundir.RUN_SPEC)) or {}
    return (int(reader.get_tensor(ITERATIONS_KEY))
            + int((spec.get("parent") or {}).get("moment_steps", 0)))


# Per trainable variable, Keras' optimizers add their slots in this order: the moving
# averages (--ema_momentum) as one block after the step counter, then Adam's moment and
# velocity interleaved per variable.
EMA_SLOTS = ("_model_variables_moving_average",)
ADAM_SLOTS = ("_momentums", "_velocities")


def _logical_variables(model) -> tuple[list, dict]:
    """The model's trainable variables and, for each variable the optimizer updates (a
    sharded table's shards included), (its model variable, first row)."""
    import tensorflow as tf

    logical, where = list(model.trainable_variables), {}
    for v in logical:
        inner = getattr(v, "value", v)
        if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
            first = 0
            for shard in inner.variables:
                where[id(shard)] = (v, first)
                first += int(shard.shape[0])
        else:
            where[id(v)] = (v, 0)
            where[id(inner)] = (v, 0)
    return logical, where


def _parent_slots(shape_of, last: int, logical: list, shapes: dict, kinds: tuple,
                  what: str) -> tuple[dict, int]:
    """Reads one block of the parent's slot variables backwards from index `last`:
    {(kind, path): [checkpoint index per piece, in row order]} and the index before the
    block. A table the parent held sharded has several pieces whose rows add up."""
    out, k = {}, last
    for v in reversed(logical):
        full = tuple(shapes[v.path])
        pieces, rows = [], 0
        while True:
            group = list(range(k - len(kinds) + 1, k + 1))
            seen = [shape_of(g) for g in group]
            if group[0] < 0 or len(set(seen)) != 1 or seen[0][1:] != full[1:] or (
                    len(seen[0]) != len(full)):
                raise ValueError(f"{what}: its slot variables {group} are {seen}, expected "
                                 f"pieces of {v.path} {full}")
            pieces.insert(0, group)
            k -= len(kinds)
            rows += seen[0][0] if full else 0
            if not full or rows == full[0]:
                break
            if rows > full[0]:
                raise ValueError(f"{what}: its slots of {v.path} hold {rows} rows, the "
                                 f"variable {full[0]}")
        for i, kind in enumerate(kinds):
            out[(kind, v.path)] = [g[i] for g in pieces]
    return out, k


def carry_optimizer_state(optimizer, parent_dir: str, spec, model) -> int:
    """Sets `optimizer` (built on the warm-started model's trainable variables) to the
    parent's moments and moving averages from its latest checkpoint: an id table's slots
    by id, as its weights (new ids' rows start at zero moments). Either side may hold the
    tables sharded across parameter servers (a slot per shard): slots are matched per
    model variable, gathered whole and cut to this run's shards. Returns how many slot
    variables it set. The step counter is not carried (see `ContinuedAdamW`)."""
    import numpy as np
    import tensorflow as tf

    what = f"--warm_start_optimizer: the parent's optimizer ({parent_dir})"
    parent, _ = rundir.load_trained(parent_dir)
    previous = getattr(parent, "vocabulary", None) or {}
    current = getattr(model, "vocabulary", None) or {}
    shapes = {v.path: tuple(v.shape) for v in parent.trainable_variables}
    logical, where = _logical_variables(model)
    if sorted(shapes) != sorted(v.path for v in logical):
        raise ValueError(f"{what} trained other variables than this run's (another "
                         "--lora_rank or --freeze_encoder?)")
    reader = tf.train.load_checkpoint(parent_checkpoint(parent_dir))
    stored = reader.get_variable_to_shape_map()
    shape_of = lambda k: tuple(stored.get(OPTIMIZER_KEY.format(k), (-1,)))
    theirs = 1 + max((int(name.split("/")[2]) for name in stored
                      if name.startswith("optimizer/_variables/")), default=-1)
    blocks = [kinds for kinds in (EMA_SLOTS, ADAM_SLOTS) if getattr(optimizer, kinds[0], None)]
    index, k = {}, theirs - 1
    for kinds in reversed(blocks):
        found, k = _parent_slots(shape_of, k, logical, shapes, kinds,
                                 what + " (another --ema_momentum?)")
        index.update(found)
    whole = {}  # (kind, path) -> the parent's slot, gathered and moved to this run's rows

    def gathered(kind, var):
        if (kind, var.path) not in whole:
            value = [reader.get_tensor(OPTIMIZER_KEY.format(i)) for i in index[kind, var.path]]
            value = np.concatenate(value) if len(value) > 1 else value[0]
            mine = np.zeros(tuple(var.shape), value.dtype)
            rows = (spec.rows(previous, current, var.path, mine.shape[0])
                    if len(mine.shape) else None)
            whole[kind, var.path] = _moved(mine, value, rows,
                                           f"{what}: its {kind[1:]} of {var.path}", var.path)
        return whole[kind, var.path]

    carried = 0
    for kinds in blocks:
        for kind in kinds:
            for j, slot in enumerate(getattr(optimizer, kind)):
                if slot is None:
                    continue
                trained = optimizer._trainable_variables[j]
                found = where.get(id(trained)) or where.get(id(getattr(trained, "value", None)))
                if found is None:
                    raise ValueError(f"{what}: this run's optimizer updates a variable the "
                                     "model does not train")
                var, first = found
                value = gathered(kind, var)
                if len(slot.shape):
                    value = value[first:first + int(slot.shape[0])]
                slot.assign(value)
                carried += 1
    return carried


def describe_growth(previous: dict, grown: dict, evict_after_days: float) -> str:
    """One line per id list a warm start changed: how many ids it kept, added, evicted."""
    lines = []
    for key in ("item_id", "user_id", "brand", "category"):
        if key not in previous or key not in grown:
            continue
        before, after = set(previous[key]), set(grown[key])
        added, evicted = len(after - before), len(before - after)
        if added or evicted:
            lines.append(f"  {key:<9}: {len(before & after):,} kept, {added:,} new"
                         + (f", {evicted:,} evicted (unseen for {evict_after_days:g} days)"
                            if evicted else ""))
    return "warm start: the vocabulary grows\n" + ("\n".join(lines) or "  nothing new")


def zoo_spec(config):
    import zoo

    return zoo.spec(config.model)


def check_fine_tuning(config) -> None:
    """The --lora_rank / --freeze_encoder flags agree (checked before anything is written)."""
    if config.lora_rank and config.freeze_encoder:
        raise ValueError("--lora_rank and --freeze_encoder exclude each other")
    if config.lora_rank < 0:
        raise ValueError(f"--lora_rank must be >= 0, got {config.lora_rank}")
    if config.lora_train_embeddings and not config.lora_rank:
        raise ValueError("--lora_train_embeddings needs --lora_rank > 0")


def adapt_for_fine_tuning(model, config) -> None:
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


def init_encoder(model, init_checkpoint: str) -> None:
    """Loads a pre-trained encoder (trainers.pretrain) into the model's backbone."""
    import tensorflow as tf
    from trainers.core.pretrain_task import encoder_path
    from zoo.models.bert_mtl import pretrainer

    path = encoder_path(init_checkpoint)
    if not tf.io.gfile.exists(path + ".index"):
        raise ValueError(f"--init_checkpoint {init_checkpoint}: no encoder checkpoint "
                         f"{path}.index; expected a finished python -m trainers.pretrain run")
    try:
        pretrainer.load_encoder(model.backbone, path)
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"--init_checkpoint {init_checkpoint}: its encoder does not fit "
                         f"this model (different preset or overrides, or written before "
                         f"bert_mtl's encoder layers became TransformerEncoderBlock?): "
                         f"{e}") from None


def build_model(config, vocabulary: dict, sample: dict, load_weights: bool = True):
    """The zoo model with its weights built (by a call on `sample`), the pre-trained encoder
    or the warm start's parent loaded (unless `load_weights` is False: a copy whose weights
    are about to be overwritten) and LoRA / freezing applied: the same construction in and
    out of a strategy."""
    import keras
    import zoo

    # Seeded here, not only at the start: what ran before (data preparation, vocabulary
    # fitting) must not change the initial weights, or a resumed or relaunched cluster
    # task would start from other weights than its peers.
    keras.utils.set_random_seed(config.seed)
    model = zoo.get(config.model, config.preset, vocabulary=vocabulary,
                    num_price_ranges=config.label_config.num_price_ranges,
                    **config.model_overrides)
    model(model.preprocessor(evaluation.raw_features(sample)))
    if config.init_checkpoint and load_weights:
        init_encoder(model, config.init_checkpoint)
    if config.warm_start_from and load_weights:
        warm_start(model, config.warm_start_from, zoo.spec(config.model))
    adapt_for_fine_tuning(model, config)
    return model


def trainable_parameters(model) -> int:
    import math

    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


def gathered_copy(source, target):
    """Copies source's weights into target (built the same way, outside any strategy): a
    sharded table is read whole here, once."""
    import tensorflow as tf

    if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in target.weights]:
        raise ValueError("gathered_copy: the two models differ in their weights")
    for s, t in zip(source.weights, target.weights):
        t.assign(tf.convert_to_tensor(getattr(s, "value", s)))
    return target


class MultitaskTask(base_task.Task):
    name = "multitask"
    spec_ignore = (PRETRAIN_KEY_PREFIX,)
    calibrates = True
    trains_from_start = True

    def __init__(self):
        self._local = None
        self._eval_ds = None
        self._range = None  # (first, end) timestamps trained on; see _training_range
        self._count = None
        self._calibration = None  # the fitted calibration ({} = none fitted)

    @property
    def loss_names(self):
        from zoo.models.features import TASKS

        return TASKS

    def check(self, config, model_config, spec) -> None:
        check_fine_tuning(config)
        if config.warm_start_from:
            check_warm_start(config, spec)
        if config.init_checkpoint and not spec.pretrainable:
            raise ValueError(f"--init_checkpoint: model {config.model!r} has no pre-trained "
                             "encoder to start from (python -m zoo list)")

    def run_spec(self, config, model_config):
        defaults = type(config)()
        from zoo.data.ecom_events import EXAMPLES_VERSION

        return {"model": config.model, "preset": config.preset, "model_config": model_config,
                "label_config": dataclasses.asdict(config.label_config),
                "examples_version": EXAMPLES_VERSION,
                **{k: getattr(config, k) for k in FINE_TUNING_FIELDS
                   if getattr(config, k) != getattr(defaults, k)},
                **({"parent": check_warm_start(config, zoo_spec(config))}
                   if config.warm_start_from else {})}

    def initial_vocabulary(self, config, fit=None):
        if config.warm_start_from:
            previous = rundir.read_vocabulary(config.warm_start_from)
            grown = zoo_spec(config).grow(previous, fit(),
                                          evict_after_days=config.evict_after_days)
            if config.verbose:
                print(describe_growth(previous, grown, config.evict_after_days))
            return grown
        if not config.init_checkpoint:
            return None
        vocabulary = rundir.read_vocabulary(config.init_checkpoint)
        if vocabulary is None:
            raise ValueError(f"--init_checkpoint {config.init_checkpoint}: no vocabulary.json; "
                             "expected a model_dir written by python -m trainers.pretrain")
        return vocabulary

    def build_network(self, run):
        run.model = build_model(run.config, run.vocabulary, run.sample)
        return run.model

    def moment_steps(self, config) -> int:
        return moment_steps_of(config.warm_start_from) if config.warm_start_optimizer else 0

    def init_optimizer(self, run, optimizer) -> None:
        config = run.config
        if not config.warm_start_optimizer:
            return
        carried = carry_optimizer_state(optimizer, config.warm_start_from,
                                        zoo_spec(config), run.model)
        if config.verbose:
            print(f"warm start: {carried} optimizer slot variables carried from "
                  f"{config.warm_start_from} (moments of {self.moment_steps(config):,} steps)")

    def local_model(self, run):
        """The model to evaluate, save and export: under parameter_server a copy on this
        process with the sharded tables gathered (same weights, one variable per table).
        Built once; each call copies the current weights."""
        if not run.parameter_server:
            return run.model
        if self._local is None:
            self._local = build_model(run.config, run.vocabulary, run.sample,
                                      load_weights=False)
        return gathered_copy(run.model, self._local)

    def _training_range(self, run) -> tuple:
        """(first, end) timestamps of the impressions trained on: from --train_start (None:
        the split's start) to the calibration slice's first one (None: the split's end);
        the slice, the latest `calibration_fraction` of the trained-on impressions, is
        held out for the post-hoc calibration."""
        import numpy as np
        from zoo.data import pipeline

        if self._range is None:
            config = run.config
            start = (None if config.train_start is None
                     else config_lib.day_start(config.train_start, "--train_start"))
            cut, count = None, None
            if start is not None or config.calibration_fraction:
                ts = np.sort(pipeline.timestamps(run.train_files))
                first = 0 if start is None else int(np.searchsorted(ts, start))
                count = len(ts) - first
                if start is not None and count == 0 and len(ts):
                    raise ValueError(f"--train_start {config.train_start}: no training "
                                     f"impression on or after it (the split ends at "
                                     f"{np.datetime64(int(ts[-1]), 's')} UTC)")
                if config.calibration_fraction:
                    k = first + int(count * (1.0 - config.calibration_fraction))
                    if not first < k < len(ts):
                        raise ValueError(f"--calibration_fraction "
                                         f"{config.calibration_fraction}: leaves no training "
                                         f"or no held-out impressions of {count}")
                    cut, count = int(ts[k]), int(np.searchsorted(ts, ts[k])) - first
            self._range, self._count = (start, cut), count
        return self._range

    def _calibration_cut(self, run) -> int | None:
        return self._training_range(run)[1]

    def num_training_examples(self, run) -> int:
        self._training_range(run)
        if self._count is None:
            return super().num_training_examples(run)
        return self._count

    def train_dataset(self, run, ctx):
        import tensorflow as tf
        from zoo.data import pipeline
        from zoo.models.features import split_labels

        config = run.config
        preprocessor = run.model.preprocessor
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        time_range = self._training_range(run)
        # Each step takes one batch per replica fed by this pipeline.
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        # parameter_server: every worker runs this same (once traced) pipeline,
        # asynchronously; the worker's index in the seed gives each its own order.
        seed = config.seed
        if run.parameter_server:
            seed = tf.cast(tf.distribute.coordinator.experimental_get_current_worker_index(),
                           tf.int64) + config.seed
        ds = pipeline.make_dataset(
            run.train_files, batch_size=per_replica, shuffle=True, repeat=True,
            seed=seed, cache=config.cache_dataset,
            drop_remainder=True, history_length=config.label_config.history_length,
            input_context=ctx,
            skip_batches=0 if run.parameter_server else run.start_step * per_step,
            keep_fraction=config.labels_fraction,
            time_range=None if time_range == (None, None) else time_range)

        def features_and_labels(batch):
            return preprocessor(evaluation.raw_features(batch)), split_labels(batch)[1]

        return ds.map(features_and_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def _eval_dataset(self, run):
        if self._eval_ds is None and run.has_eval:
            self._eval_ds = evaluation.eval_dataset(run.builder, "eval", run.model.preprocessor,
                                                    run.config)
        return self._eval_ds

    def periodic_evaluation(self, run):
        from trainers.core import loop, metrics as metrics_lib

        eval_ds = self._eval_dataset(run)
        if eval_ds is None:
            return None

        def evaluate(step):
            preds, extras = loop.predict_dataset(self.local_model(run), eval_ds,
                                                 jit_compile=run.jit_compile)
            return metrics_lib.multitask_metrics(extras, preds, extras["user_id"])

        return evaluate

    def describe(self, run):
        c = run.config
        return (f"training {c.model}/{c.preset} ({run.model.count_params():,} parameters, "
                f"{trainable_parameters(run.model):,} trainable) under {c.strategy} for "
                f"{run.steps} steps of {c.batch_size} ({run.num_train:,} train examples), "
                f"from step {run.start_step}; model_dir={run.model_dir}")

    def finalize(self, run, result):
        """--calibration_fraction: fits the calibration on the held-out slice (the raw
        model's predictions there) and records it in `result["calibration"]`."""
        from trainers.core import calibration, loop

        if self._calibration_cut(run) is None:
            return
        config = run.config
        ds = pipeline_eval_slice(run, self._calibration_cut(run), self.local_model(run).preprocessor)
        preds, extras = loop.predict_dataset(self.local_model(run), ds,
                                             jit_compile=run.jit_compile)
        self._calibration = calibration.fit(extras, preds,
                                            config_lib.calibrated_outputs(config))
        result["calibration"] = {
            "fraction": config.calibration_fraction, "from_timestamp": self._calibration_cut(run),
            "held_out_impressions": int(len(extras["click"])), "fitted": self._calibration}
        if config.verbose:
            print(f"calibration fitted on {len(extras['click']):,} held-out impressions "
                  f"(from t={self._calibration_cut(run)}): {self._calibration}")

    def final_model(self, run):
        """What is evaluated, saved and exported: the trained model, calibrated when a
        calibration was fitted."""
        model = self.local_model(run)
        return model.with_calibration(self._calibration) if self._calibration else model

    def evaluate(self, run, result):
        import tensorflow as tf
        from trainers.core import calibration, loop, metrics as metrics_lib

        model = self.local_model(run)
        result["parameters"] = model.count_params()
        result["trainable_parameters"] = trainable_parameters(model)
        eval_ds = self._eval_dataset(run)
        if eval_ds is None:
            return
        meta = run.builder.info.metadata
        raw, extras = loop.predict_dataset(model, eval_ds, jit_compile=run.jit_compile)
        preds = calibration.apply(raw, self._calibration) if self._calibration else raw
        model_metrics, oracle_metrics, table = evaluation.metrics_table(
            preds, extras, meta, run.config)
        if self._calibration:
            before = metrics_lib.multitask_metrics(extras, raw, extras["user_id"])
            result["calibration"]["eval_before"] = {
                k: v for k, v in before.items() if k in CALIBRATION_REPORT}
            result["calibration"]["eval_after"] = {
                k: v for k, v in model_metrics.items() if k in CALIBRATION_REPORT}
        result["metrics"] = model_metrics
        if oracle_metrics:
            result["oracle"] = oracle_metrics
        if run.config.verbose:
            print(f"\nevaluation on the eval split (step {run.trainer.step}):\n{table}")
            if self._calibration:
                print(calibration_table(result["calibration"]))
        with run.trainer.summary.as_default(step=run.trainer.step):
            for k, v in model_metrics.items():
                if isinstance(v, float):  # not the confusion matrix
                    tf.summary.scalar(f"eval/{k}", v)
        run.trainer.summary.flush()

    def save(self, run, result):
        rundir.save_trained(run, self.final_model(run))
        rundir.write_serving_examples(run.model_dir, builder=run.builder)



# What the before/after calibration table shows.
CALIBRATION_REPORT = ("click/ece", "click/predicted_to_observed", "click/logloss", "click/auc",
                      "purchase/ece", "purchase/predicted_to_observed", "purchase/logloss",
                      "purchase/auc", "price_range/ece", "price_range/logloss",
                      "price_range/accuracy")


def calibration_table(record: dict) -> str:
    before, after = record["eval_before"], record["eval_after"]
    lines = [f"post-hoc calibration on the eval split (fitted on "
             f"{record['held_out_impressions']:,} held-out training impressions):",
             f"  {'metric':<30} {'raw':>8} {'calibrated':>11}"]
    lines += [f"  {k:<30} {before[k]:>8.4f} {after[k]:>11.4f}" for k in CALIBRATION_REPORT]
    return "\n".join(lines)


def pipeline_eval_slice(run, cut: int, preprocessor):
    """The held-out calibration slice of the training split as an evaluation dataset
    (the same fraction of labels as training sees)."""
    return evaluation.eval_dataset(list(run.train_files), "train", preprocessor, run.config,
                                   keep_fraction=run.config.labels_fraction,
                                   time_range=(cut, None))
