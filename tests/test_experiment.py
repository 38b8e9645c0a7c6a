"""`trainers.experiment` end to end on the small simulated shop (tiny preset, few steps)."""

import csv
import os

from helpers import LABEL_CFG
from trainers.core import config as config_lib


def _base(shop):
    data, tfds_dir = shop
    return config_lib.TrainConfig(
        data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG, preset="tiny", steps=20,
        batch_size=64, learning_rate=3e-3, warmup_steps=5, steps_per_loop=10,
        checkpoint_every=1000, verbose=False)


def test_experiment_runs_every_row_and_writes_its_table(shop, tmp_path, capsys):
    from trainers import experiment
    # Every default row but MiniLM's, the dearest, whose training, saving and export
    # `tests/test_text_encoder.py` runs (here it would only add its name to the table).
    runs = tuple(r for r in experiment.DEFAULT_RUNS if r != "bert_mtl+minilm")
    assert len(runs) == len(experiment.DEFAULT_RUNS) - 1
    config = experiment.ExperimentConfig(
        base=_base(shop), output_dir=str(tmp_path / "exp"), fractions=(1.0,),
        pretrain_steps=20, lora_rank=2, runs=runs)
    rows = experiment.run(config)
    assert [(r["fraction"], r["run"]) for r in rows] == [(1.0, r) for r in runs]
    by_run = {r["run"]: r for r in rows}
    for r in rows:
        assert 0.0 <= r["metrics"]["click/auc"] <= 1.0
    # The baseline trains nothing; LoRA trains fewer weights than full fine-tuning.
    assert by_run["popularity"]["steps"] == 0
    assert (by_run["bert_mtl+lora"]["trainable_parameters"]
            < by_run["bert_mtl+lora_emb"]["trainable_parameters"]
            < by_run["bert_mtl+pretrain"]["trainable_parameters"])
    out = capsys.readouterr().out
    assert "bert_mtl+pretrain" in out and "oracle" in out and "ESMM >= naive" in out
    assert "transformer >= GBDT (click AUC)" in out
    with open(tmp_path / "exp" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(runs) + 1  # + the oracle
    assert float(table[0]["click/auc"]) == by_run["popularity"]["metrics"]["click/auc"]
    png = tmp_path / "exp" / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(tmp_path / "exp" / "pretrain" / "encoder" / "encoder.index")


def test_experiment_labels_fraction_reaches_every_run(shop, tmp_path):
    """Fewer labelled rows -> other statistics, for the baseline and the tree alike; a row
    per (fraction, run) plus the oracle per fraction."""
    from trainers import experiment
    config = experiment.ExperimentConfig(
        base=_base(shop), output_dir=str(tmp_path / "exp"), fractions=(1.0, 0.5),
        runs=("popularity", "gbdt"))
    rows = experiment.run(config)
    by_run = {(r["fraction"], r["run"]): r for r in rows}
    assert set(by_run) == {(f, r) for f in (1.0, 0.5) for r in ("popularity", "gbdt")}
    for name in ("popularity", "gbdt"):
        assert (by_run[(1.0, name)]["metrics"]["click/logloss"]
                != by_run[(0.5, name)]["metrics"]["click/logloss"])
    with open(tmp_path / "exp" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * (2 + 1)


def test_a_labels_fraction_trains_fraction_epochs_over_its_labels(shop, tmp_path):
    """Below 100 % of the labels a row makes `fraction_epochs` passes over what it keeps:
    at half the labels and two passes, as many steps as one pass over all of them."""
    import dataclasses
    import math

    import pytest

    from trainers import experiment
    base = dataclasses.replace(_base(shop), steps=0, epochs=1.0, batch_size=256)
    config = experiment.ExperimentConfig(
        base=base, output_dir=str(tmp_path / "exp"), fractions=(1.0, 0.5), runs=("bert_mtl",),
        fraction_epochs=2.0)
    assert experiment.row_epochs(config, 1.0) == 1.0
    assert experiment.row_epochs(config, 0.5) == 2.0
    fixed = dataclasses.replace(config, base=_base(shop))  # --steps fixes every row
    assert experiment.row_epochs(fixed, 0.5) == fixed.base.epochs
    with pytest.raises(ValueError, match="--fraction_epochs must be > 0"):
        experiment.run(dataclasses.replace(config, fraction_epochs=0.0))
    with pytest.raises(ValueError, match="--pretext must be one of"):
        experiment.run(dataclasses.replace(config, pretext="next_click"))
    with pytest.raises(ValueError, match="--pretrain_learning_rate must be > 0"):
        experiment.run(dataclasses.replace(config, pretrain_learning_rate=0.0))
    assert not (tmp_path / "exp").exists()

    # One pass over every training example (what the 100 % row trains) against the
    # half-labels row's two passes, trained.
    from zoo.data import prepare
    one_pass = math.ceil(prepare.prepare(*shop, LABEL_CFG).info.splits["train"].num_examples
                         / base.batch_size)
    [row] = experiment.run(dataclasses.replace(config, fractions=(0.5,)))
    assert one_pass > 20
    assert abs(row["steps"] - one_pass) <= 0.1 * one_pass, (row["steps"], one_pass)
