"""Warm start (`--warm_start_from`): the vocabulary grows, known ids keep their rows and
trained values, the parent is recorded, and what cannot work is refused before any work."""

import json
import os

import numpy as np
import pytest

from helpers import LABEL_CFG
from trainers import multitask
from trainers.core import config as config_lib, rundir
from zoo.data import prepare, simulate
from zoo.models.ranker import vocabulary as vocab_lib


def test_grown_vocabulary_keeps_every_known_index():
    previous = vocab_lib.placeholder_vocabulary(__import__("zoo").get_config("bert_mtl", "tiny"))
    previous["item_titles"] = [f"title {i}" for i in previous["item_id"]]
    previous["category_log_price"] = [1.0] * len(previous["category"])
    previous["log_price_mean"] = 1.5
    new = dict(previous, item_id=["item_new", previous["item_id"][3]],
               item_titles=["new title", "changed"], category=["category_new"],
               category_log_price=[4.0], brand=previous["brand"][:2],
               price_edges=[5.0, 6.0])
    grown = vocab_lib.grow_vocabulary(previous, new)
    assert grown["item_id"] == previous["item_id"] + ["item_new"]
    assert grown["item_titles"] == previous["item_titles"] + ["new title"]
    assert grown["category"] == previous["category"] + ["category_new"]
    assert grown["category_log_price"] == previous["category_log_price"] + [4.0]
    assert grown["brand"] == previous["brand"]
    assert grown["price_edges"] == previous["price_edges"]  # what the weights know


def test_warm_start_grows_the_tables_and_keeps_the_parents_values(trained, tmp_path):
    parent_config, _ = trained
    # A new window: the same shop's world with more items (ids i0.. shared, new ones after).
    data = str(tmp_path / "contract")
    simulate.simulate(data, num_users=250, num_items=480, days=14, seed=5,
                      oracle_replays=0, demand_horizon_days=LABEL_CFG.demand_horizon_days)
    tfds_dir = str(tmp_path / "tfds")
    prepare.prepare(data, tfds_dir, LABEL_CFG)
    model_dir = str(tmp_path / "child")
    # One step at a negligible learning rate: the child's weights are the parent's.
    multitask.run(config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=model_dir, steps=1, batch_size=64, learning_rate=1e-12,
        warm_start_from=parent_config.model_dir, verbose=False))
    parent_vocab = rundir.read_vocabulary(parent_config.model_dir)
    child_vocab = rundir.read_vocabulary(model_dir)
    n = len(parent_vocab["item_id"])
    assert child_vocab["item_id"][:n] == parent_vocab["item_id"]
    assert len(child_vocab["item_id"]) > n  # the new window's new items got rows
    spec = json.load(open(os.path.join(model_dir, "run_spec.json")))
    assert spec["parent"]["model_dir"] == os.path.abspath(parent_config.model_dir)
    assert spec["parent"]["data_dir"] == parent_config.data_dir

    parent, _ = rundir.load_trained(parent_config.model_dir)
    child, _ = rundir.load_trained(model_dir)
    grown = 0
    for old, new in zip(parent.weights, child.weights):
        old, new = np.asarray(old.numpy()), np.asarray(new.numpy())
        if old.shape != new.shape:
            grown += 1
            assert new.shape[1:] == old.shape[1:] and new.shape[0] > old.shape[0]
            new = new[:old.shape[0]]
        np.testing.assert_allclose(new, old, atol=1e-6)
    assert grown >= 1  # the item table, at least


def test_warm_start_refuses_what_cannot_work(trained, tmp_path):
    parent_config, _ = trained
    base = dict(data_dir=parent_config.data_dir, tfds_dir=parent_config.tfds_dir,
                label_config=LABEL_CFG, steps=1, verbose=False)
    cases = [
        (dict(preset="small"), "preset 'tiny' differ"),
        (dict(preset="tiny", init_checkpoint=parent_config.model_dir), "exclude each other"),
        (dict(preset="tiny", warm_start_from=str(tmp_path / "none")), "no model.keras"),
    ]
    for extra, match in cases:
        kw = {**base, "warm_start_from": parent_config.model_dir, **extra}
        model_dir = str(tmp_path / f"child{len(match)}")
        with pytest.raises(ValueError, match=match):
            multitask.run(config_lib.TrainConfig(model_dir=model_dir, **kw))
        assert not os.path.exists(model_dir)


def test_known_rows_are_bit_equal_before_the_first_step(trained):
    """The model a warm start builds, before any step: the parent's values exactly, in
    every weight and in every known row of a grown table; the new rows are there."""
    import dataclasses
    from trainers.core import multitask_task
    from zoo.data import pipeline

    parent_config, _ = trained
    previous = rundir.read_vocabulary(parent_config.model_dir)
    new = dict(previous, item_id=previous["item_id"] + ["brand-new-item"],
               item_titles=previous.get("item_titles", [""] * len(previous["item_id"]))
               + ["a brand new item"],
               brand=previous["brand"] + ["NewBrand"])
    grown = vocab_lib.grow_vocabulary(previous, new)
    config = dataclasses.replace(parent_config, warm_start_from=parent_config.model_dir,
                                 model_dir=None)
    builder = prepare.prepare(parent_config.data_dir, parent_config.tfds_dir, LABEL_CFG)
    sample = next(iter(pipeline.make_dataset(pipeline.split_files(builder, "train"),
                                             batch_size=2,
                                             history_length=LABEL_CFG.history_length)))
    child = multitask_task.build_model(config, grown, sample)
    parent, _ = rundir.load_trained(parent_config.model_dir)
    grew = []
    for old, new_w in zip(parent.weights, child.weights):
        old, new_w = np.asarray(old.numpy()), np.asarray(new_w.numpy())
        if old.shape != new_w.shape:
            grew.append(new_w.shape[0] - old.shape[0])
            new_w = new_w[:old.shape[0]]
        assert np.array_equal(new_w, old)
    assert sorted(grew) == [1, 1]  # the item and the brand table, one new row each
