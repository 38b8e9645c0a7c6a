"""`python -m trainers.predict`: one row of predictions per impression of any contract folder.

Loads `model_dir/model.keras` (preprocessor and vocabulary inside, safe mode), prepares the
folder's examples with the label config the model was trained with, and writes
`event_id, click, purchase, price_range_0..K-1, demand` (probabilities and the expected
count). Ids the model never saw fall into the preprocessor's OOV buckets.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from zoo.data import contract, labels as labels_lib, prepare as prepare_lib  # noqa: E402


def load_trained(model_dir: str):
    """(model, label_config) of a finished `trainers.multitask` run."""
    import zoo

    path = os.path.join(model_dir, "model.keras")
    config_path = os.path.join(model_dir, "train_config.json")
    for p in (path, config_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: not found; expected a model_dir written by "
                                    "python -m trainers.multitask")
    with open(config_path, encoding="utf-8") as f:
        label_config = labels_lib.LabelConfig(**json.load(f)["label_config"])
    return zoo.load_model(path), label_config


def predict_folder(model_dir: str, data_dir: str, split: str = "eval",
                   tfds_dir: str | None = None, batch_size: int = 1024) -> dict:
    """Predictions (numpy arrays keyed event_id, click, purchase, price_range, demand)."""
    import numpy as np
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import RAW_FEATURES, TASKS

    if split not in ("train", "eval", "all"):
        raise ValueError(f"--split must be train, eval or all, got {split!r}")
    model, label_config = load_trained(model_dir)
    if split == "all":  # every impression in one split: no eval days carved off
        label_config = dataclasses.replace(label_config, eval_fraction=0.0)
    builder = prepare_lib.prepare(data_dir, tfds_dir, label_config)
    splits = ["train", "eval"] if split == "all" else [split]
    files = [f for s in splits if s in builder.info.splits
             for f in pipeline.split_files(builder, s)]
    if not files:
        raise ValueError(f"{data_dir}: the {split} split has no impressions")
    preprocessor = model.preprocessor

    forward = tf.function(lambda raw: model(preprocessor(raw), training=False),
                          autograph=False)

    out: dict[str, list] = {}
    ds = pipeline.make_dataset(files, batch_size=batch_size, with_labels=False,
                               history_length=label_config.history_length)
    for batch in ds:
        preds = forward({k: batch[k] for k in RAW_FEATURES})
        out.setdefault("event_id", []).append(batch["event_id"].numpy())
        for k in TASKS:
            out.setdefault(k, []).append(preds[k].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def write_csv(preds: dict, path: str) -> int:
    """Writes atomically (temp file in the same folder, then rename); returns the rows."""
    k = preds["price_range"].shape[1]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["event_id", "click", "purchase",
                        *[f"price_range_{i}" for i in range(k)], "demand"])
            for i, e in enumerate(preds["event_id"]):
                w.writerow([e.decode() if isinstance(e, bytes) else e,
                            repr(float(preds["click"][i])), repr(float(preds["purchase"][i])),
                            *[repr(float(p)) for p in preds["price_range"][i]],
                            repr(float(preds["demand"][i]))])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(preds["event_id"])


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A finished trainers.multitask model_dir.")
    flags.DEFINE_string("data_dir", None, "Contract folder (absent: the default simulated shop).")
    flags.DEFINE_string("tfds_dir", None, "Where prepared examples go (default: the cache).")
    flags.DEFINE_enum("split", "eval", ["train", "eval", "all"], "Which impressions to predict.")
    flags.DEFINE_string("output", None, "CSV file to write.")
    flags.DEFINE_integer("batch_size", 1024, "Prediction batch size.")


def main(argv):
    del argv
    if not FLAGS.model_dir or not FLAGS.output:
        print("error: --model_dir and --output are required", file=sys.stderr)
        return 2
    try:
        preds = predict_folder(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.tfds_dir,
                               FLAGS.batch_size)
        rows = write_csv(preds, FLAGS.output)
    except (contract.ContractError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {rows:,} predictions to {FLAGS.output}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
