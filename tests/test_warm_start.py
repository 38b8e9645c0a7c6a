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


def test_grown_vocabulary_evicts_the_ids_unseen_for_days():
    day = vocab_lib.SECONDS_PER_DAY
    previous = vocab_lib.placeholder_vocabulary(__import__("zoo").get_config("bert_mtl", "tiny"))
    previous.update(item_id=["a", "b", "c", "d"], item_titles=["A", "B", "C", "D"],
                    category=["x", "y"], category_log_price=[1.0, 2.0], log_price_mean=1.5,
                    brand=["p", "q"], user_id=["u1", "u2"])
    previous["last_seen"] = {"item_id": [10 * day, 2 * day, 9 * day, 5 * day],
                             "category": [10 * day, 2 * day], "brand": [10 * day, 9 * day],
                             "user_id": [3 * day, 10 * day]}
    new = dict(previous, item_id=["e", "b"], item_titles=["E", "B2"], category=["x", "z"],
               category_log_price=[7.0, 3.0], brand=["p"], user_id=["u2", "u3"])
    new["last_seen"] = {"item_id": [12 * day, 11 * day], "category": [12 * day, 12 * day],
                        "brand": [12 * day], "user_id": [12 * day, 12 * day]}
    kept = vocab_lib.grow_vocabulary(previous, new)
    assert kept["item_id"] == ["a", "b", "c", "d", "e"]
    assert kept["last_seen"]["item_id"] == [10 * day, 11 * day, 9 * day, 5 * day, 12 * day]
    # Unseen for more than 2.5 days before the newest example (day 12): c (day 9), d
    # (day 5), category y, brand q, user u1 go; b was seen again on day 11 and stays.
    grown = vocab_lib.grow_vocabulary(previous, new, evict_after_days=2.5)
    assert grown["item_id"] == ["a", "b", "e"]
    assert grown["item_titles"] == ["A", "B", "E"]
    assert grown["last_seen"]["item_id"] == [10 * day, 11 * day, 12 * day]
    assert grown["category"] == ["x", "z"] and grown["category_log_price"] == [1.0, 3.0]
    assert grown["brand"] == ["p"] and grown["user_id"] == ["u2", "u3"]
    four = vocab_lib.grow_vocabulary(previous, new, evict_after_days=4)
    assert four["item_id"] == ["a", "b", "c", "e"] and four["user_id"] == ["u2", "u3"]
    # The rows a warm start copies: padding and 2 OOV buckets, then the parent's row of
    # each id (-1: fresh); an evicted id's row is not copied anywhere.
    rows = vocab_lib.table_rows(previous, four, "embeddings/item_embedding/embeddings", 7)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, -1]
    rows = vocab_lib.table_rows(previous, grown, "embeddings/item_embedding/embeddings", 6)
    assert rows.tolist() == [0, 1, 2, 3, 4, -1]
    assert vocab_lib.table_rows(previous, grown, "heads/click/kernel", 6) is None
    with pytest.raises(ValueError, match="evict_after_days must be >= 0"):
        vocab_lib.grow_vocabulary(previous, new, evict_after_days=-1)


def test_an_evicted_id_goes_to_oov_and_the_rows_follow_their_ids(trained):
    """Evict one item the parent knows: its examples fall into the OOV buckets, every other
    id's row moves to its new index with its trained values, and on examples that hold
    neither the evicted nor a new id the child predicts exactly what the parent does."""
    import dataclasses
    import tensorflow as tf
    from trainers.core import evaluation, multitask_task
    from zoo.data import pipeline

    parent_config, _ = trained
    previous = rundir.read_vocabulary(parent_config.model_dir)
    builder = prepare.prepare(parent_config.data_dir, parent_config.tfds_dir, LABEL_CFG)
    batch = next(iter(pipeline.make_dataset(pipeline.split_files(builder, "eval"),
                                            batch_size=64,
                                            history_length=LABEL_CFG.history_length)))
    present = set(np.char.decode(np.concatenate([batch["item_id"].numpy().ravel(),
                                                 batch["hist_item_id"].numpy().ravel()])
                                 .astype("S"), "utf-8"))
    gone = next(i for i in previous["item_id"][:20] if i not in present)
    newest = max(t for ts in previous["last_seen"].values() for t in ts)
    # The parent last saw `gone` 30 days before its newest example; the new window holds
    # every other id it knows and one new item; ids unseen for 7 days are evicted.
    previous["last_seen"]["item_id"] = [
        newest - 30 * vocab_lib.SECONDS_PER_DAY if i == gone else t
        for i, t in zip(previous["item_id"], previous["last_seen"]["item_id"])]
    titles = dict(zip(previous["item_id"], previous["item_titles"]))
    items = [i for i in previous["item_id"] if i != gone] + ["brand-new-item"]
    new = dict(previous, item_id=items, item_titles=[titles.get(i, "a new one") for i in items])
    new["last_seen"] = {k: [newest] * len(new[k]) for k in previous["last_seen"]}
    grown = vocab_lib.grow_vocabulary(previous, new, evict_after_days=7)
    assert gone not in grown["item_id"] and grown["item_id"][-1] == "brand-new-item"
    assert len(grown["item_id"]) == len(previous["item_id"])  # one freed, one new

    config = dataclasses.replace(parent_config, warm_start_from=parent_config.model_dir,
                                 model_dir=None)
    child = multitask_task.build_model(config, grown, batch)
    parent, _ = rundir.load_trained(parent_config.model_dir)
    num_oov = parent.preprocessor.num_oov_indices
    lookup = lambda model, ids: model.preprocessor.item_lookup(tf.constant(ids)).numpy()
    assert lookup(parent, [gone])[0] > num_oov  # a known id of the parent
    assert 1 <= lookup(child, [gone])[0] <= num_oov  # an OOV bucket of the child
    table = lambda model: next(np.asarray(w.numpy()) for w in model.weights
                               if w.path.endswith("item_embedding/embeddings"))
    old, new_table = table(parent), table(child)
    assert old.shape == new_table.shape
    ids = [i for i in grown["item_id"] if i != "brand-new-item"]
    np.testing.assert_array_equal(new_table[lookup(child, ids)], old[lookup(parent, ids)])
    np.testing.assert_array_equal(new_table[:1 + num_oov], old[:1 + num_oov])
    # The parent's network on its own vocabulary (built like the child: the parent file
    # also holds the post-hoc calibration, which a warm start does not carry).
    same = multitask_task.build_model(config, rundir.read_vocabulary(
        parent_config.model_dir), batch)
    features = evaluation.raw_features(batch)
    ours = child(child.preprocessor(features), training=False)
    theirs = same(same.preprocessor(features), training=False)
    for name in ("click", "purchase", "price_range"):
        np.testing.assert_allclose(np.asarray(ours[name]), np.asarray(theirs[name]),
                                   atol=1e-5, err_msg=name)

    # --warm_start_optimizer: the parent's moments, an id table's rows following their ids
    # (the new item's at zero), every other slot whole; the step counter stays this run's.
    import zoo
    from trainers.core import loop, optimizers

    optimizer = optimizers.adamw(1e-3, 0.0, moment_steps=7)
    optimizer.build(loop.train_variables(child))
    carried = multitask_task.carry_optimizer_state(optimizer, parent_config.model_dir,
                                                   zoo.spec(parent_config.model), child)
    reader = tf.train.load_checkpoint(multitask_task.parent_checkpoint(parent_config.model_dir))
    # This optimizer holds a learning-rate variable the parent's (a schedule) does not.
    shift = 1 + max(int(n.split("/")[2]) for n in reader.get_variable_to_shape_map()
                    if n.startswith("optimizer/_variables/")) - len(optimizer.variables)
    position = {id(v): k + shift for k, v in enumerate(optimizer.variables)}
    stored = lambda slot: reader.get_tensor(multitask_task.OPTIMIZER_KEY.format(
        position[id(slot)]))
    assert carried == 2 * len(optimizer._trainable_variables)
    assert int(optimizer.iterations.numpy()) == 0
    for j, var in enumerate(optimizer._trainable_variables):
        for slot in (optimizer._momentums[j], optimizer._velocities[j]):
            mine, theirs = np.asarray(slot.numpy()), stored(slot)
            if var.path.endswith("item_embedding/embeddings"):
                np.testing.assert_array_equal(mine[lookup(child, ids)], theirs[lookup(parent, ids)])
                assert not mine[lookup(child, ["brand-new-item"])].any()
                assert np.abs(theirs[lookup(parent, [gone])]).sum() > 0  # dropped with it
            else:
                np.testing.assert_array_equal(mine, theirs)


def test_warm_start_grows_the_tables_and_keeps_the_parents_values(trained, tmp_path, capsys):
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

    # The same warm start evicting the ids unseen for 2 days before the window's newest
    # example: exactly those go (by the last-seen times the run without eviction merged).
    capsys.readouterr()
    evicting = str(tmp_path / "evicting")
    multitask.run(config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=evicting, steps=1, batch_size=64, warm_start_from=parent_config.model_dir,
        evict_after_days=2, warm_start_optimizer=True, verbose=True))
    from zoo.data import pipeline

    seen = child_vocab["last_seen"]  # the parent's times merged with the new window's
    newest = max(int(b["timestamp"].numpy().max()) for b in pipeline.make_dataset(
        pipeline.split_files(prepare.prepare(data, tfds_dir, LABEL_CFG), "train"),
        batch_size=4096, history_length=LABEL_CFG.history_length))
    cutoff = newest - 2 * vocab_lib.SECONDS_PER_DAY
    evicted_vocab = rundir.read_vocabulary(evicting)
    for key in ("item_id", "user_id", "brand", "category"):
        if key not in parent_vocab:
            continue
        when = dict(zip(child_vocab[key], seen[key]))
        expected = [i for i in parent_vocab[key] if when[i] >= cutoff]
        assert evicted_vocab[key][:len(expected)] == expected, key
        assert set(evicted_vocab[key][len(expected):]).isdisjoint(parent_vocab[key]), key
        assert len(evicted_vocab["last_seen"][key]) == len(evicted_vocab[key])
    gone = set(parent_vocab["item_id"]) - set(evicted_vocab["item_id"])
    assert gone  # the new window does not hold every item of the old one
    out = capsys.readouterr().out
    assert f"{len(gone):,} evicted (unseen for 2 days)" in out
    # The optimizer's moments came along, formed over the parent's steps.
    parent_steps = json.load(open(os.path.join(parent_config.model_dir, "metrics.json")))["step"]
    spec = json.load(open(os.path.join(evicting, "run_spec.json")))
    assert spec["parent"]["moment_steps"] == parent_steps > 0
    assert f"(moments of {parent_steps:,} steps)" in out


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
    del new["last_seen"]  # hand-made: no record of when its ids were seen
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


def test_warm_start_options_need_a_warm_start():
    for extra, match in ((dict(evict_after_days=3), "--evict_after_days needs --warm_start"),
                         (dict(warm_start_optimizer=True), "--warm_start_optimizer needs"),
                         (dict(evict_after_days=-1, warm_start_from="p"), "must be >= 0")):
        with pytest.raises(ValueError, match=match):
            config_lib.validate(config_lib.TrainConfig(**extra))
