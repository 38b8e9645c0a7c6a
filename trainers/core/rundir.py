"""The run folder (model_dir): what a run writes, how a later run or another tool reads it.

    model_dir/run_spec.json      what makes the run the same run (model, config, labels):
                                 a re-run with the same spec resumes, another is refused
    model_dir/vocabulary.json    the fitted vocabulary (checkpoints' rows follow it)
    model_dir/checkpoints/, train/ (TensorBoard), flags.txt (the flags, for --flagfile)
    model_dir/model.keras, train_config.json, metrics.json, serving_examples.tfrecord
                                 (multi-task training: the finished model and its data)

Trainers write it through these functions and `export/` reads it through them, so the
layout is known in one module and no exporter depends on a trainer's entry point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from zoo.data import labels as labels_lib

RUN_SPEC = "run_spec.json"
VOCABULARY = "vocabulary.json"
TRAIN_CONFIG = "train_config.json"
MODEL = "model.keras"
SERVING_EXAMPLES = "serving_examples.tfrecord"


def jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: dataclasses.asdict(o)
                                 if dataclasses.is_dataclass(o) else str(o)))


def save_trained(run, model, **extra) -> None:
    """The model (`.keras`, atomically) and train_config.json of a finished run."""
    from zoo.data.ecom_events import EXAMPLES_VERSION

    tmp = os.path.join(run.model_dir, "model.tmp.keras")  # Keras wants the suffix
    model.save(tmp)
    os.replace(tmp, os.path.join(run.model_dir, MODEL))
    write_json(os.path.join(run.model_dir, TRAIN_CONFIG), {
        **jsonable(dataclasses.asdict(run.config)), "model_dir": run.model_dir,
        "total_steps": run.steps, "price_edges": run.builder.info.metadata["price_edges"],
        "examples_version": EXAMPLES_VERSION, **extra})


def write_csv(path: str, header: list, rows) -> int:
    """Writes rows atomically (temp file in the same folder, then rename); returns how many."""
    import csv

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".csv.tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                n += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n


def read_json(path: str):
    """The JSON value in `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    """Writes atomically (temp file in the same folder, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(jsonable(obj), f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _without(spec: dict, ignore: tuple) -> dict:
    config = spec.get("model_config")
    if not ignore or not isinstance(config, dict):
        return spec
    return {**spec, "model_config": {k: v for k, v in config.items()
                                     if not k.startswith(ignore)}}


def _upgraded(spec: dict) -> dict:
    """A spec written before a label config key was renamed, in today's names."""
    label_config = spec.get("label_config")
    if isinstance(label_config, dict):
        renamed = dict(label_config)
        for old, new in labels_lib.RENAMED_KEYS.items():
            if old in renamed and new not in renamed:
                renamed[new] = renamed.pop(old)
        spec = {**spec, "label_config": renamed}
    return spec


def check_same_run(model_dir: str, spec: dict, ignore: tuple = ()) -> dict | None:
    """A model_dir resumes only the run that made it: same model, config and labels.
    Model config keys starting with a prefix in `ignore` are not compared (the fine-tuning
    run ignores pre-training's options, which do not change its model). Returns the spec to
    record for a new run (None when resuming); nothing is written here, so a run that fails
    before its model is built leaves no spec that would refuse the corrected command."""
    path = os.path.join(model_dir, RUN_SPEC)
    spec = jsonable(spec)
    if not os.path.exists(path):
        return spec
    with open(path, encoding="utf-8") as f:
        before = _without(_upgraded(json.load(f)), ignore)
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
    if not os.path.exists(os.path.join(model_dir, VOCABULARY)):
        write_json(os.path.join(write_dir, VOCABULARY), vocabulary)
    if new_spec is not None:
        write_json(os.path.join(write_dir, RUN_SPEC), new_spec)


def read_vocabulary(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, VOCABULARY)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fit_vocabulary(config, model_config: dict, train_files) -> dict:
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


def train_config_of(model_dir: str) -> dict:
    """The train_config.json of a finished run."""
    path = os.path.join(model_dir, TRAIN_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found; expected a model_dir written by "
                                "python -m trainers.multitask")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_trained(model_dir: str):
    """(model, label_config) of a finished multi-task run."""
    import zoo

    path = os.path.join(model_dir, MODEL)
    config_path = os.path.join(model_dir, TRAIN_CONFIG)
    for p in (path, config_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: not found; expected a model_dir written by "
                                    "python -m trainers.multitask")
    with open(config_path, encoding="utf-8") as f:
        train_config = json.load(f)
    check_examples_version(model_dir, train_config.get("examples_version"))
    label_config = labels_lib.LabelConfig.from_dict(train_config["label_config"],
                                                    source=config_path)
    return zoo.load_model(path), label_config


def check_examples_version(model_dir: str, version) -> None:
    """A model reads the examples of the code that trained it: the features of another
    examples version are missing or mean something else, so it is refused, by name."""
    from zoo.data.ecom_events import EXAMPLES_VERSION

    if version != EXAMPLES_VERSION:
        raise ValueError(
            f"{model_dir} was trained on examples version {version or '3 or older'}; this "
            f"code writes version {EXAMPLES_VERSION} (see zoo/data/ecom_events.py). Train it "
            "again with python -m trainers.multitask (its flags are in flags.txt)")


def write_serving_examples(model_dir: str, train_config: dict | None = None, builder=None,
                           n: int = 64) -> str:
    """Keeps n serialized eval examples beside the model (export warmup and checks).

    Without a builder the data set is prepared again from train_config (a cache hit when
    the examples are still there)."""
    import tensorflow as tf
    from zoo.data import pipeline, prepare as prepare_lib

    if builder is None:
        label_config = labels_lib.LabelConfig.from_dict(train_config["label_config"])
        builder = prepare_lib.prepare(train_config.get("data_dir"), train_config.get("tfds_dir"),
                                      label_config)
    split = "eval" if "eval" in builder.info.splits else "train"
    path = os.path.join(model_dir, SERVING_EXAMPLES)
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
