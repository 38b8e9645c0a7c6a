"""The multitask trainer end to end on a small simulated shop, with the tiny preset."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import LABEL_CFG, REPO, run, subprocess_env, trainer_cmd
from trainers.core import config as config_lib, evaluation, multitask_task, rundir


def test_tiny_beats_untrained_on_every_task(trained):
    import zoo
    from zoo.data import prepare

    config, result = trained
    assert result["step"] == 300
    with open(os.path.join(config.model_dir, "vocabulary.json")) as f:
        vocab = json.load(f)
    untrained = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    builder = prepare.prepare(config.data_dir, config.tfds_dir, LABEL_CFG)
    eval_ds = evaluation.eval_dataset(builder, "eval", untrained.preprocessor, config)
    before, oracle, _ = evaluation.evaluate_model(untrained, eval_ds, builder.info.metadata,
                                                  config)
    after = result["metrics"]
    for name in ("click/logloss", "purchase/logloss", "price_range/logloss",
                 "demand/poisson_deviance", "demand/rmse"):
        assert after[name] < before[name], (name, before[name], after[name])
    for name in ("click/auc", "purchase/auc", "price_range/accuracy"):
        assert after[name] > before[name], (name, before[name], after[name])
    assert after["click/auc"] > 0.6
    # The oracle is there, and it is better than a few hundred tiny steps.
    assert result["oracle"]["click/auc"] > after["click/auc"]


def test_outputs_of_arun(trained):
    config, result = trained
    files = os.listdir(config.model_dir)
    for name in ("model.keras", "metrics.json", "vocabulary.json", "train_config.json",
                 "checkpoints", "train"):
        assert name in files
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["metrics"]["click/auc"] == pytest.approx(result["metrics"]["click/auc"])
    assert "oracle" in saved
    events = os.listdir(os.path.join(config.model_dir, "train"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    # Checkpoints every 100 steps, the last one at the end.
    ckpts = open(os.path.join(config.model_dir, "checkpoints", "checkpoint")).read()
    assert "ckpt-300" in ckpts and "ckpt-200" in ckpts
    # The loss went down over the run.
    curve = [p["loss"] for p in result["loss_curve"]]
    assert curve[-1] < curve[0]


def test_the_run_calibrates_on_held_out_impressions_and_saves_it(trained):
    """The shared run holds out its latest 10 % of training impressions and fits the
    calibration there; the saved model (what predict and the exports load) carries it."""
    import keras
    from zoo.data import pipeline, prepare

    config, result = trained
    record = result["calibration"]
    builder = prepare.prepare(config.data_dir, config.tfds_dir, LABEL_CFG)
    ts = pipeline.timestamps(pipeline.split_files(builder, "train"))
    assert record["held_out_impressions"] == int((ts >= record["from_timestamp"]).sum())
    assert record["held_out_impressions"] == pytest.approx(0.1 * len(ts), rel=0.05)
    assert set(record["fitted"]) == {"click", "purchase", "price_range"}
    assert record["fitted"]["price_range"] > 0
    for name in multitask_task.CALIBRATION_REPORT:
        assert np.isfinite(record["eval_before"][name]) and np.isfinite(record["eval_after"][name])
    # A monotone map per output: the ranking (AUC) is the raw model's.
    assert record["eval_after"]["click/auc"] == pytest.approx(
        record["eval_before"]["click/auc"], abs=1e-4)
    assert result["metrics"]["click/ece"] == record["eval_after"]["click/ece"]
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        assert json.load(f)["calibration"]["fitted"] == record["fitted"]
    model = keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
    assert model.calibration == record["fitted"]


def test_the_run_writes_a_flagfile_that_gives_back_its_config(trained):
    from absl import flags

    config, _ = trained
    path = os.path.join(config.model_dir, config_lib.FLAGFILE)
    fv = flags.FlagValues()
    config_lib.define_flags(flag_values=fv)
    fv(["prog", f"--flagfile={path}"])
    assert config_lib.from_flags(fv) == config


def test_predict_matches_in_process_outputs(trained, tmp_path):
    import tensorflow as tf
    import zoo
    from zoo.data import pipeline, prepare
    from zoo.models.bert_mtl import end_to_end

    config, _ = trained
    out = str(tmp_path / "preds.csv")
    run([sys.executable, "-m", "trainers.predict", "--model_dir", config.model_dir,
          "--data_dir", config.data_dir, "--tfds_dir", config.tfds_dir, "--split", "eval",
          "--output", out])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["event_id", "click", "purchase", "price_range_0", "price_range_1",
                             "price_range_2", "price_range_3", "price_range_4", "demand"]
    # In-process: the saved model end to end on the same examples.
    model = zoo.load_model(os.path.join(config.model_dir, "model.keras"))
    e2e = end_to_end(model)
    builder = prepare.prepare(config.data_dir, config.tfds_dir, LABEL_CFG)
    assert len(rows) == builder.info.splits["eval"].num_examples
    got = {r["event_id"]: r for r in rows}
    ds = pipeline.make_dataset(pipeline.split_files(builder, "eval"), batch_size=512,
                               history_length=LABEL_CFG.history_length)
    from zoo.models.features import RAW_FEATURES
    checked = 0
    for batch in ds.take(2):
        preds = e2e({k: batch[k] for k in RAW_FEATURES})
        for i, e in enumerate(batch["event_id"].numpy()):
            row = got[e.decode()]
            np.testing.assert_allclose(float(row["click"]), preds["click"][i], rtol=1e-5)
            np.testing.assert_allclose(float(row["purchase"]), preds["purchase"][i], rtol=1e-5)
            np.testing.assert_allclose([float(row[f"price_range_{k}"]) for k in range(5)],
                                       preds["price_range"][i], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(float(row["demand"]), preds["demand"][i], rtol=1e-5)
            assert float(row["purchase"]) <= float(row["click"]) + 1e-7
            checked += 1
    assert checked > 100
    assert tf.is_tensor(preds["click"])


def test_predict_on_an_unseen_shop(trained, tmp_path):
    """Another shop (other seed, other ids): unknown ids go to OOV buckets, no failure."""
    config, _ = trained
    other = str(tmp_path / "other")
    from zoo.data import simulate as sim
    sim.simulate(other, num_users=40, num_items=60, days=3, seed=99, verbose=False,
                 oracle_replays=0)
    out = str(tmp_path / "all.csv")
    run([sys.executable, "-m", "trainers.predict", "--model_dir", config.model_dir,
          "--data_dir", other, "--tfds_dir", str(tmp_path / "tfds"), "--split", "all",
          "--output", out])
    import pyarrow.parquet as pq
    events = pq.read_table(os.path.join(other, "events.parquet")).to_pydict()
    impressions = {e for e, k in zip(events["event_id"], events["event"]) if k == "impression"}
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r["event_id"] for r in rows} == impressions
    assert all(0.0 <= float(r["click"]) <= 1.0 and float(r["demand"]) >= 0 for r in rows)


def test_resume_after_kill_reaches_the_same_step(shop, tmp_path):
    model_dir = str(tmp_path / "resume")
    cmd = trainer_cmd(shop, model_dir, "--steps", "120", "--checkpoint_every", "40",
                       "--steps_per_loop", "10", "--jit_compile=false")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=subprocess_env(), cwd=REPO)
    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(index) and "ckpt-40" in open(index).read():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
    out = run(cmd).stdout
    assert "from step 40" in out or "from step 80" in out, out[-2000:]
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == 120
    # Running again with the same model_dir trains nothing more and stays at 120.
    out = run(cmd).stdout
    assert "from step 120" in out
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _curve(model_dir):
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return np.array([p["loss"] for p in json.load(f)["loss_curve"]])


def test_strategies_give_the_same_loss_curve(shop, tmp_path):
    # XLA on for one device and mirrored: the compiled step is what runs in production
    # (`--jit_compile auto` turns it on from the small preset), and under mirrored it runs
    # in a replica context. The multi-worker pair runs the same replica step uncompiled
    # (its collectives sit outside the compiled part either way; XLA's compile costs each
    # process ~17 s of CPU), so its curve must also match the compiled one's.
    common = ["--steps", "40", "--steps_per_loop", "10", "--checkpoint_every", "40",
              "--seed", "7", "--warmup_steps", "5"]
    one = str(tmp_path / "one")
    run(trainer_cmd(shop, one, *common, "--jit_compile=true"))
    mirrored = str(tmp_path / "mirrored")
    run(trainer_cmd(shop, mirrored, *common, "--jit_compile=true", "--strategy", "mirrored",
                    "--cpu_devices", "2"))

    mwms = str(tmp_path / "mwms")
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = subprocess_env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            trainer_cmd(shop, mwms, *common, "--jit_compile=false",
                        "--strategy", "multi_worker_mirrored"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, so[-2000:] + se[-4000:]

    base = _curve(one)
    assert len(base) == 4
    np.testing.assert_allclose(_curve(mirrored), base, rtol=2e-3)
    np.testing.assert_allclose(_curve(mwms), base, rtol=2e-3)
    # Only the chief (worker 0) wrote into the model_dir, and it wrote the saved model.
    assert os.path.exists(os.path.join(mwms, "model.keras"))


def test_model_dir_of_another_run_is_refused(trained):
    from trainers import multitask
    import dataclasses
    config, _ = trained
    other = dataclasses.replace(config, model_overrides={"hidden_dim": 48})
    with pytest.raises(ValueError, match="different model_config"):
        multitask.run(other)


def test_pre_training_options_do_not_block_a_resume(tmp_path):
    """check_same_run: a pretrain_* key differs (or is new) -> the fine-tuning run resumes;
    any other model_config key differs -> refused."""
    spec = {"model": "bert_mtl", "model_config": {"hidden_dim": 64, "pretrain_x": 1}}
    ignore = (multitask_task.PRETRAIN_KEY_PREFIX,)
    new_spec = rundir.check_same_run(str(tmp_path), spec, ignore=ignore)
    assert new_spec == spec and not os.listdir(tmp_path)  # nothing written by the check
    rundir.record_run(str(tmp_path), str(tmp_path), new_spec, {"item": ["a"]})
    assert sorted(os.listdir(tmp_path)) == ["run_spec.json", "vocabulary.json"]
    changed = {"model": "bert_mtl", "model_config": {"hidden_dim": 64, "pretrain_x": 2,
                                                     "pretrain_new": True}}
    assert rundir.check_same_run(str(tmp_path), changed, ignore=ignore) is None
    with pytest.raises(ValueError, match="different model_config"):
        rundir.check_same_run(str(tmp_path), changed)  # nothing ignored
    other = {"model": "bert_mtl", "model_config": {"hidden_dim": 48, "pretrain_x": 1}}
    with pytest.raises(ValueError, match="different model_config"):
        rundir.check_same_run(str(tmp_path), other, ignore=ignore)


def test_a_run_failing_before_its_model_is_built_leaves_nothing_behind(shop, tmp_path):
    """The failure comes after the spec check and the data preparation (the
    init_checkpoint has no vocabulary); the corrected command then runs in the same
    model_dir instead of being refused as a different run."""
    import dataclasses
    from trainers import multitask
    data, tfds_dir = shop
    empty = tmp_path / "not_a_pretrain_run"
    empty.mkdir()
    config = config_lib.TrainConfig(data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG,
                                   preset="tiny", model_dir=str(tmp_path / "m"), steps=2,
                                   verbose=False, init_checkpoint=str(empty))
    with pytest.raises(ValueError, match="no vocabulary.json"):
        multitask.run(config)
    assert not os.listdir(config.model_dir)  # no run_spec.json, no vocabulary.json
    result = multitask.run(dataclasses.replace(config, init_checkpoint=None))
    assert result["step"] == 2
    assert {"run_spec.json", "vocabulary.json"} <= set(os.listdir(config.model_dir))


def test_bad_flags_exit_with_a_clear_error(shop, tmp_path):
    proc = subprocess.run(
        trainer_cmd(shop, str(tmp_path / "x"), "--task_weights", "click=1,ctr=2"),
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert "unknown task 'ctr'" in proc.stderr


def test_task_weights_parsing():
    from trainers.core.config import parse_task_weights
    assert parse_task_weights("click=1, purchase=0.5") == {"click": 1.0, "purchase": 0.5}
    for bad in ("click", "click=x", "click=-1", "foo=1"):
        with pytest.raises(ValueError, match="--task_weights"):
            parse_task_weights(bad)


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    # E.g. a model_dir written before bert_mtl's encoder layers changed (kernels [D, N, D/N]
    # then, [D, D] now): resuming must name the checkpoint, not train from scratch or
    # end in a bare assertion.
    import tensorflow as tf

    import zoo
    from trainers.core import loop, optimizers
    from zoo.models.features import TASKS

    def trainer(hidden_dim):
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        with strategy.scope():
            model = zoo.get("bert_mtl", "tiny", hidden_dim=hidden_dim, num_heads=2)
            optimizer = optimizers.adamw(1e-3, weight_decay=0.0)
        return loop.Trainer(strategy, model, optimizer, loop.LoopConfig(
            total_steps=1, global_batch_size=8, task_weights={}, jit_compile=False),
            checkpoint_dir=str(tmp_path / "ckpt"), summary_dir=None, tasks=TASKS)

    first = trainer(16)
    assert first.restore() == 0  # nothing to restore yet
    path = first.save()
    assert tf.train.list_variables(path)  # the model's weights are in it
    with pytest.raises(ValueError, match="does not fit this model") as info:
        trainer(32).restore()
    assert path in str(info.value)


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    import glob
    import logging

    import keras
    import tensorflow as tf
    from trainers.core import loop

    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Dense(2)])
        model.build((None, 3))
        opt = keras.optimizers.AdamW(1e-2)
        opt.build(model.trainable_variables)
        trainer = loop.Trainer(tf.distribute.get_strategy(), model, opt,
                               loop.LoopConfig(total_steps=10, global_batch_size=4,
                                               task_weights={}),
                               checkpoint_dir=str(tmp_path), summary_dir=None, tasks=())
        return model, opt, trainer

    model, opt, trainer = make()
    for step in (1, 2):
        model.layers[0].kernel.assign(np.full((3, 2), float(step), "float32"))
        opt.iterations.assign(step)
        trainer.save()

    def truncate(step):
        data = sorted(glob.glob(str(tmp_path / f"ckpt-{step}.data*")))[0]
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 3)

    truncate(2)
    model, _, trainer = make()
    with caplog.at_level(logging.WARNING):
        assert trainer.restore() == 1
    assert model.layers[0].kernel.numpy()[0, 0] == 1.0
    assert "ckpt-2 is unreadable" in caplog.text
    truncate(1)
    _, _, trainer = make()
    with pytest.raises(ValueError, match="no readable checkpoint"):
        trainer.restore()
