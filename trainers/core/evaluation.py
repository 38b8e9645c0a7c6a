"""Evaluation shared by the trainers: the eval input, the model's metrics beside the
simulator's oracle (when the data folder has one), and the table the entry points print."""

from __future__ import annotations

import os

from absl import logging


# Label settings an oracle is for (oracle_meta.json) that must match the run's.
ORACLE_LABEL_KEYS = ("num_price_ranges", "price_horizon_days", "demand_horizon_days",
                     "eval_fraction")


def read_oracle(contract_dir: str, label_config=None):
    """The simulator's oracle table (event_id -> true probabilities), if the folder has one
    and it was drawn for the same label settings as `label_config` (else None, warned)."""
    import json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    meta_path = os.path.join(contract_dir, "oracle_meta.json")
    if label_config is not None and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        differ = [k for k in ORACLE_LABEL_KEYS
                  if k in meta and float(meta[k]) != float(getattr(label_config, k))]
        if differ:
            logging.warning("%s: the oracle is for other label settings (%s); no oracle "
                            "column. Simulate the data with the run's settings to get it.",
                            contract_dir, ", ".join(f"{k}={meta[k]} vs "
                                                    f"{getattr(label_config, k)}"
                                                    for k in differ))
            return None

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


def evaluate_model(model, eval_ds, meta: dict, config, jit_compile: bool = False):
    """(model metrics, oracle metrics or None, printable table) on an eval dataset."""
    from trainers.core import loop

    preds, extras = loop.predict_dataset(model, eval_ds, jit_compile=jit_compile)
    return metrics_table(preds, extras, meta, config)


def metrics_table(preds: dict, extras: dict, meta: dict, config):
    """(model metrics, oracle metrics or None, printable table) of eval predictions;
    `extras` holds the labels, `user_id`, `event_id` and `item_purchases_7d`."""
    from trainers.core import metrics as metrics_lib

    baseline = tuple(metrics_lib.trailing_demand_baseline(
        extras["item_purchases_7d"], config.label_config.demand_horizon_days, prior)
        for prior in (False, True))
    rows = {"model": metrics_lib.multitask_metrics(extras, preds, extras["user_id"], baseline)}
    oracle = read_oracle(meta["contract_dir"], config.label_config)
    if oracle is not None:
        o = oracle_predictions(oracle, extras["event_id"], config.label_config.num_price_ranges)
        if o is not None:
            rows["oracle"] = metrics_lib.multitask_metrics(extras, o, extras["user_id"],
                                                           baseline)
    rows["model"]["price_range/confusion"] = metrics_lib.price_range_confusion(extras, preds)
    table = metrics_lib.format_table(rows, ("model", "oracle") if "oracle" in rows else None)
    return rows["model"], rows.get("oracle"), table


def raw_features(batch: dict) -> dict:
    from zoo.models.features import split_labels

    return split_labels(batch)[0]


def eval_dataset(builder, split, preprocessor, config, keep_fraction=1.0, time_range=None):
    """(preprocessed features, extras) batches of a split's files: the extras are what the
    metrics read beside the predictions (ids, labels, the item's 7-day purchases).
    `builder` may also be a list of files."""
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import LABELS

    files = builder if isinstance(builder, list) else pipeline.split_files(builder, split)
    ds = pipeline.make_dataset(files, batch_size=config.eval_batch_size,
                               history_length=config.label_config.history_length,
                               keep_fraction=keep_fraction, time_range=time_range)
    keep = ("event_id", "user_id", "item_purchases_7d", *LABELS)
    def with_extras(batch):
        return preprocessor(raw_features(batch)), {k: batch[k] for k in keep}

    return ds.map(with_extras, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
