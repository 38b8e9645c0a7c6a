"""Predictions of a finished multi-task run over any contract folder, and their CSV."""

from __future__ import annotations

import dataclasses

from trainers.core import rundir
from zoo.data import prepare as prepare_lib


def predict_folder(model_dir: str, data_dir: str, split: str = "eval",
                   tfds_dir: str | None = None, batch_size: int = 1024) -> dict:
    """Predictions (numpy arrays keyed event_id, click, purchase, price_range, demand)."""
    import numpy as np
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import RAW_FEATURES, TASKS

    if split not in ("train", "eval", "all"):
        raise ValueError(f"--split must be train, eval or all, got {split!r}")
    model, label_config = rundir.load_trained(model_dir)
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

    def rows():
        for i, e in enumerate(preds["event_id"]):
            yield [e.decode() if isinstance(e, bytes) else e,
                   repr(float(preds["click"][i])), repr(float(preds["purchase"][i])),
                   *[repr(float(p)) for p in preds["price_range"][i]],
                   repr(float(preds["demand"][i]))]

    rundir.write_csv(path, ["event_id", "click", "purchase",
                            *[f"price_range_{i}" for i in range(k)], "demand"], rows())
    return len(preds["event_id"])
