"""Explanations find a planted cause: on a shop where a recent purchase of the candidate's
brand raises the click (`simulate --brand_echo`), a model trained there is explained by
that purchase, and not by events that share nothing with the candidate."""

import numpy as np

from helpers import LABEL_CFG
from trainers import multitask
from trainers.core import config as config_lib, rundir
from zoo.data import pipeline, prepare, simulate
from zoo.models.features import RAW_FEATURES
from zoo.models.explain import explain

WINDOW = simulate.BRAND_ECHO_SECONDS


def _planted_rows(batch):
    """[B, H]: the history events that carry the planted cause (a purchase of the
    candidate's brand within the window before the impression)."""
    brand = batch["hist_brand"]
    return ((brand == batch["item_brand"][:, None]) & (brand != b"")
            & (batch["hist_event"] == b"purchase") & (batch["hist_gap"] <= WINDOW))


def test_the_planted_purchase_ranks_first(tmp_path):
    data = str(tmp_path / "contract")
    simulate.simulate(data, num_users=1000, num_items=400, num_brands=20, days=14, seed=11,
                      oracle_replays=0, demand_horizon_days=LABEL_CFG.demand_horizon_days,
                      brand_echo=5.0)
    tfds_dir = str(tmp_path / "tfds")
    builder = prepare.prepare(data, tfds_dir, LABEL_CFG)
    model_dir = str(tmp_path / "model")
    multitask.run(config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=model_dir, steps=800, batch_size=128, learning_rate=3e-3,
        steps_per_loop=200, checkpoint_every=800, verbose=False))
    model, _ = rundir.load_trained(model_dir)

    first, unrelated_below, errors = [], [], []
    ds = pipeline.make_dataset(pipeline.split_files(builder, "eval"), batch_size=4096,
                               history_length=LABEL_CFG.history_length)
    for batch in ds:
        batch = {k: v.numpy() for k, v in batch.items()}
        planted = _planted_rows(batch)
        rows = np.flatnonzero(planted.any(axis=1))
        if not len(rows):
            continue
        features = {k: batch[k][rows] for k in RAW_FEATURES}
        exp = explain(model, features, output="click", steps=32)
        errors.append(exp["completeness_error"])
        h = exp["history"]
        real = features["hist_item_id"] != b""
        cause = planted[rows]
        # The strongest event is the planted purchase.
        top = np.argmax(np.where(real, h, -np.inf), axis=1)
        first.append(cause[np.arange(len(rows)), top])
        # Events of another brand and another category weigh less than the cause.
        other = (real & (features["hist_brand"] != features["item_brand"][:, None])
                 & (features["hist_category"] != features["item_category"][:, None]))
        has = other.any(axis=1)
        cause_weight = np.where(cause, np.abs(h), -np.inf).max(axis=1)
        strongest_other = np.where(other, np.abs(h), -np.inf).max(axis=1)
        unrelated_below.append((strongest_other < cause_weight)[has])
    first, unrelated_below = np.concatenate(first), np.concatenate(unrelated_below)
    assert len(first) >= 500 and len(unrelated_below) >= 400, (len(first), len(unrelated_below))
    assert first.mean() >= 0.90, first.mean()
    assert unrelated_below.mean() >= 0.95, unrelated_below.mean()
    assert np.median(np.concatenate(errors)) < 0.01
