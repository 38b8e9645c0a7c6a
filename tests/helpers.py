"""Shared by the tests that train or serve: the small shop, its label config, subprocesses."""

import os
import subprocess
import sys

from zoo.data import labels, simulate
from trainers.core import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# D = 1 day: with the default 7, every eval impression of a 14-day log has a demand window
# cut off by the end of the log, and demand would measure the censoring, not the model.
LABEL_CFG = labels.LabelConfig(history_length=16, demand_horizon_days=1)
# Small enough for seconds per run on 2 cores; dropout off (and PAL's hidden ranks, another
# draw per step) so strategies and resumed runs can be compared number for number.
TINY = ["--preset", "tiny", "--batch_size", "64", "--history_length", "16",
        "--demand_horizon_days", "1",
        "--model_override", "dropout=0.0", "--model_override", "position_dropout=0.0"]


def make_shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    data = str(root / "contract")
    simulate.simulate(data, num_users=250, num_items=400, days=14, seed=5, verbose=False,
                      demand_horizon_days=LABEL_CFG.demand_horizon_days)
    tfds_dir = str(root / "tfds")
    # Prepare once: the subprocesses below (and the two MWMS workers) reuse it.
    from zoo.data import prepare
    prepare.prepare(data, tfds_dir, LABEL_CFG)
    return data, tfds_dir


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    return env


def trainer_cmd(shop, model_dir, *extra):
    data, tfds_dir = shop
    return [sys.executable, "-m", "trainers.multitask", "--data_dir", data,
            "--tfds_dir", tfds_dir, "--model_dir", model_dir, *TINY, *extra]


def run(cmd, env=None, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def train_tiny(shop, tmp_path_factory):
    from trainers import multitask
    data, tfds_dir = shop
    model_dir = str(tmp_path_factory.mktemp("run") / "tiny")
    config = config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny",
        model_dir=model_dir, steps=300, batch_size=128, learning_rate=3e-3,
        steps_per_loop=50, checkpoint_every=100, verbose=False, calibration_fraction=0.1,
        calibrated_outputs="click,purchase,price_range")
    return config, multitask.run(config)


def tiny_model(family: str = "bert_mtl", vocabulary_seed: int = 0, **overrides):
    """(vocabulary, an untrained tiny model) of `family` with a vocabulary fitted on a
    random batch: the starting point of the tests that need a real network."""
    import zoo
    from zoo.models.testing import random_raw_batch, split_labels

    train, _ = split_labels(random_raw_batch(batch_size=128, history_length=50,
                                             seed=vocabulary_seed))
    vocabulary = zoo.fit_vocabulary(family, train, "tiny")
    return vocabulary, zoo.get(family, "tiny", vocabulary=vocabulary, **overrides)
