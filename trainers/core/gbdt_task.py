"""Training and evaluating the `gbdt` family (LightGBM): the yardstick run.

The tree is not trained by the TensorFlow loop, so it has its own short skeleton, with the
same inputs and outputs as every other run: the same prepared data set and time split
(its eval rows are the neural models' eval examples, checked by count), labels from the
same label code, the same metrics table beside the oracle, and a model_dir with
`metrics.json`, `train_config.json`, `run_spec.json` and `flags.txt`. The features are
`zoo.models.gbdt.features`, computed from the log; no eval label reaches the fit (early
stopping watches the latest slice of the training impressions).
"""

from __future__ import annotations

import dataclasses
import os
import time

from trainers.core import config as config_lib, evaluation, rundir

MODEL_FOLDER = "gbdt"


def check(config, model_config: dict) -> None:
    if config.strategy != "one_device":
        raise ValueError(f"--model {config.model} trains on one machine with LightGBM's "
                         f"threads; --strategy must be one_device, got {config.strategy}")
    if config.export_base:
        raise ValueError(f"--model {config.model} is not exported to TF Serving; drop "
                         "--export_base")
    if config.calibration_fraction:
        raise ValueError(f"--model {config.model}: --calibration_fraction is fitted for the "
                         "multi-task rankers (bert_mtl, dnn_mtl) only")
    if config.train_start:
        raise ValueError(f"--model {config.model}: --train_start is honoured by the neural "
                         "multi-task rankers only")
    if config.init_checkpoint or config.lora_rank or config.freeze_encoder:
        raise ValueError(f"--model {config.model} has no encoder: --init_checkpoint, "
                         "--lora_rank and --freeze_encoder do not apply")


def run(config, after_save=None) -> dict:
    """Fits the boosters on the training split, evaluates on the eval split; returns the
    result (also model_dir/metrics.json)."""
    import numpy as np
    import tensorflow as tf

    from zoo.data import contract, labels as labels_lib, pipeline, prepare as prepare_lib
    from zoo.models.gbdt import features as features_lib
    import zoo

    config_lib.validate(config)
    model_config = config_lib.model_config_of(config)
    check(config, model_config)
    model_dir = config.model_dir or os.path.join("runs", f"{config.model}_{config.preset}")
    spec = {"model": config.model, "preset": config.preset, "model_config": model_config,
            "label_config": dataclasses.asdict(config.label_config),
            "labels_fraction": config.labels_fraction}
    new_spec = rundir.check_same_run(model_dir, spec)
    builder = prepare_lib.prepare(config.data_dir, config.tfds_dir, config.label_config)
    meta = builder.info.metadata
    if config.verbose:
        print(prepare_lib.describe(builder))

    t0 = time.time()
    tables = contract.read_contract(meta["contract_dir"])
    labels = labels_lib.compute_labels(tables, config.label_config)
    built = features_lib.build(tables, impressions=labels["row"])
    x = features_lib.matrix(built)
    feature_seconds = time.time() - t0
    is_eval = np.asarray(labels["is_eval"], bool)
    expected = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    got = {"train": int((~is_eval).sum()), "eval": int(is_eval.sum())}
    if any(expected.get(s, 0) != n for s, n in got.items()):
        raise ValueError(f"{meta['contract_dir']}: the log gives {got} impressions but the "
                         f"prepared examples hold {expected}; prepare the data again")
    event_ids = np.asarray(labels["event_id"]).astype(object)
    train = ~is_eval
    if config.labels_fraction < 1.0:
        train &= pipeline.in_fraction(tf.constant(event_ids.astype(str)),
                                      config.labels_fraction).numpy()
    task_labels = {k: np.asarray(labels[k]) for k in
                   ("click", "purchase", "price_range", "price_range_mask", "demand",
                    "demand_mask")}
    if config.verbose:
        print(f"training {config.model}/{config.preset} on {int(train.sum()):,} training "
              f"impressions x {x.shape[1]} features (built in {feature_seconds:.1f} s); "
              f"model_dir={model_dir}")
    model = zoo.get(config.model, config.preset, **{
        **config.model_overrides, "num_price_ranges": config.label_config.num_price_ranges})
    t1 = time.time()
    model.fit(x[train], {k: v[train] for k, v in task_labels.items()},
              labels["timestamp"][train], log=print if config.verbose else None)
    train_seconds = time.time() - t1

    result = {"step": int(sum(model.rounds.values())), "train_seconds": train_seconds,
              "feature_seconds": feature_seconds, "rounds": dict(model.rounds),
              "parameters": model.num_leaves(), "trainable_parameters": model.num_leaves(),
              "start_step": 0, "loss_curve": []}
    if is_eval.any():
        preds = model.predict(x[is_eval])
        extras = {k: v[is_eval] for k, v in task_labels.items()}
        extras["user_id"] = tables.events["user_id"].take(labels["row"][is_eval]).to_numpy(
            zero_copy_only=False)
        extras["event_id"] = event_ids[is_eval]
        extras["item_purchases_7d"] = np.asarray(built["item_purchases_7d"])[is_eval]
        result["metrics"], oracle, table = evaluation.metrics_table(preds, extras, meta, config)
        if oracle:
            result["oracle"] = oracle
        if config.verbose:
            print(f"\nevaluation on the eval split ({int(is_eval.sum()):,} impressions):\n"
                  f"{table}")

    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, MODEL_FOLDER))
    if new_spec is not None:
        rundir.write_json(os.path.join(model_dir, rundir.RUN_SPEC), new_spec)
    rundir.write_json(os.path.join(model_dir, rundir.TRAIN_CONFIG), {
        **rundir.jsonable(dataclasses.asdict(config)), "model_dir": model_dir,
        "price_edges": meta["price_edges"], "features": list(features_lib.NAMES)})
    config_lib.write_flagfile(model_dir, dataclasses.replace(config, model_dir=model_dir))
    rundir.write_json(os.path.join(model_dir, "metrics.json"), result)
    if after_save is not None:
        after_save(model_dir, result)
    return result
