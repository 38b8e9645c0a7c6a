"""The daily loop (`trainers.continual`): windows, warm starts from what serves, the gate that
blesses or keeps a version out, the baselines on the same rows, and the drift report."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fixtures
from helpers import REPO, subprocess_env
from export import registry
from trainers import continual_lib
from trainers.core import config as config_lib, drift as drift_lib
from zoo.data import contract, labels, simulate

DAYS = ("2026-01-12", "2026-01-13", "2026-01-14")


def _config(data, **kw):
    return config_lib.TrainConfig(
        data_dir=data, preset="tiny", batch_size=64, verbose=False,
        label_config=labels.LabelConfig(history_length=16, demand_horizon_days=1),
        model_overrides={"dropout": 0.0, "position_dropout": 0.0}, **kw)


def _options(root, **kw):
    values = dict(start_day=DAYS[0], days=3, window_days=4, lookback_days=2,
                  export_base=str(root / "exports"), name="shop",
                  output_dir=str(root / "out"), baselines=("frozen",))
    values.update(kw)
    return continual_lib.Options(**values)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("drifting") / "contract")
    simulate.simulate(data, num_users=250, num_items=400, days=10, seed=6, drift=1.0,
                      oracle_replays=0, demand_horizon_days=1)
    return data


def test_gate_blesses_within_tolerance_and_names_each_failure():
    served = {"click/auc": 0.70, "purchase/auc": 0.68, "price_range/accuracy": 0.40,
              "demand/poisson_deviance": 1.0}
    gate = {"click/auc": 0.005, "purchase/auc": 0.005, "demand/poisson_deviance": 0.1}
    assert continual_lib.gate_failures(dict(served, **{"click/auc": 0.696}), served,
                                       gate) == []
    failures = continual_lib.gate_failures(
        dict(served, **{"click/auc": 0.69, "demand/poisson_deviance": 1.2}), served, gate)
    assert len(failures) == 2 and failures[0].startswith("click/auc 0.6900 vs served 0.7000")
    assert "demand/poisson_deviance 1.2000" in failures[1]  # lower is better: higher fails
    # A candidate that cannot compute a gated metric fails; one the served lacks is skipped.
    assert continual_lib.gate_failures(dict(served, **{"purchase/auc": math.nan}), served,
                                       gate)
    assert continual_lib.gate_failures(served, dict(served, **{"purchase/auc": math.nan}),
                                       gate) == []
    assert continual_lib.parse_gate("click/auc=0.01") == {"click/auc": 0.01}
    for bad, message in (("click/auc", "not metric=tolerance"), ("auc=1", "not metric"),
                         ("click/auc=-1", ">= 0"), ("click/auc=x", "expected a number")):
        with pytest.raises(ValueError, match=message):
            continual_lib.parse_gate(bad)


def test_psi_is_zero_on_equal_shares_and_matches_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    assert drift_lib.psi_numeric(x, x) == pytest.approx(0.0, abs=1e-12)
    assert drift_lib.psi_numeric(x, rng.normal(size=20000)) < 0.01
    assert drift_lib.psi_numeric(x, rng.normal(1.0, 1.0, 20000)) > drift_lib.PSI_LARGE
    # Two bins, 50/50 -> 80/20: sum (a - e) ln(a / e).
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert drift_lib.psi_shares([0.5, 0.5], [0.8, 0.2]) == pytest.approx(expected)
    old = np.array(["a"] * 50 + ["b"] * 50)
    new = np.array(["a"] * 50 + ["c"] * 50)  # an unseen category counts as its own bin
    assert drift_lib.psi_categorical(old, new) > 1.0


def test_impression_features_count_the_users_earlier_behaviour(tmp_path):
    fixtures.write_csv(str(tmp_path))
    tables = contract.read_contract(str(tmp_path))
    f = drift_lib.impression_features(tables, history_length=16)
    ev = tables.events
    kind, ts = ev["event_type"], ev["timestamp"]
    users = np.asarray(ev["user_id"].to_pylist())
    imp = np.flatnonzero(kind == contract.EVENT_INDEX["impression"])
    behaviour = np.isin(kind, [contract.EVENT_INDEX[k] for k in ("click", "cart", "purchase")])
    brute = [int(np.sum(behaviour & (users == users[i]) & (ts < ts[i]))) for i in imp]
    assert f["history_length"].tolist() == brute
    assert f["has_query"].tolist() == [bool(q) for q in np.asarray(
        ev["query"].to_pylist(), dtype=object)[imp]]
    assert f["item_id"].tolist() == np.asarray(ev["item_id"].to_pylist())[imp].tolist()


def test_daily_loop_gates_promotes_and_compares_on_the_same_rows(drifting, tmp_path,
                                                                 monkeypatch):
    """Three days, warm-started, with the frozen baseline. The served version
    is made to look better on the second day: that day's version is exported but not
    promoted, the label stays, and the third day warm-starts from the served model. The
    loop stops after two days and is resumed for the third (`--resume`): it goes on from
    what the CSV and the registry hold."""
    real_evaluate = continual_lib.evaluate
    calls = []

    def evaluate(model_dir, builder, config):
        metrics, out = real_evaluate(model_dir, builder, config)
        day = continual_lib.day_name(int(builder.info.metadata["eval_start_timestamp"]))
        calls.append((day, model_dir))
        if day == DAYS[1] and len(calls) == 1:  # the gate's look at the served version
            metrics = dict(metrics, **{"click/auc": metrics["click/auc"] + 0.2})
        return metrics, out

    monkeypatch.setattr(continual_lib, "evaluate", evaluate)
    lines = []
    continual_lib.run(_options(tmp_path, days=2), _config(drifting), progress=lines.append)
    assert len(lines) == 2 and "NOT promoted: click/auc" in lines[1]
    with pytest.raises(ValueError, match="already holds a model shop.*--resume"):
        continual_lib.run(_options(tmp_path), _config(drifting))
    with pytest.raises(ValueError, match="the arms"):
        continual_lib.run(_options(tmp_path, resume=True, baselines=()), _config(drifting))
    options = _options(tmp_path, resume=True)
    rows = continual_lib.run(options, _config(drifting), progress=lines.append)
    assert lines[2] == f"resuming after 2 day(s) ({DAYS[1]}); 1 to go" and len(lines) == 4

    by = {(r["date"], r["arm"]): r for r in rows}
    assert len(by) == 6
    day1, day2, day3 = (by[(d, "warm")] for d in DAYS)
    assert day1["promoted"] and day1["reason"] == "no version served yet"
    assert not day2["blessed"] and not day2["promoted"]
    assert day2["reason"].startswith("click/auc") and day2["served_version"] == 1
    # v2 is kept, unpromoted; the label did not move; the third day builds on what serves.
    base = options.export_base
    assert registry.versions(base, "shop") == [1, 2, 3]
    assert day3["served_version"] == 1 and day3["parent"] == day1["model_dir"]
    assert registry.lookup(base, "shop", "stable") == (3 if day3["promoted"] else 1)

    # The first day trains once for every arm; the frozen arm never trains again.
    assert by[(DAYS[0], "frozen")]["same_as"] == "warm" and "same_as" not in day1
    for d in DAYS[1:]:
        assert by[(d, "frozen")]["trained"] is False
        assert by[(d, "frozen")]["metrics"]["click/auc"] != day1["metrics"]["click/auc"]
    # The first day trains on its window only (the look-back is context): its steps are
    # the window's impressions over the batch; a warm day trains on its newest 2 days.
    tables = contract.read_contract(drifting)
    ts = tables.events["timestamp"]
    imp = tables.events["event_type"] == contract.EVENT_INDEX["impression"]
    d1 = config_lib.day_start(DAYS[0], "day")
    in_window = imp & (ts >= d1 - 4 * continual_lib.DAY) & (ts < d1)
    assert day1["steps"] == math.ceil(in_window.sum() / 64)
    d2 = config_lib.day_start(DAYS[1], "day")
    newest = imp & (ts >= d2 - 2 * continual_lib.DAY) & (ts < d2)
    assert day2["steps"] == math.ceil(newest.sum() / 64)

    # Outputs: one CSV row per day and arm, the plot, a drift report per day.
    with open(os.path.join(options.output_dir, "days.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(r["date"], r["arm"]) for r in table] == [(r["date"], r["arm"]) for r in rows]
    assert all(r["oracle_click/auc"] for r in table)
    assert os.path.getsize(os.path.join(options.output_dir, "days.png")) > 10_000
    report = json.load(open(os.path.join(options.output_dir, "drift", f"{DAYS[1]}.json")))
    assert report["impressions"]["day"] == int(np.sum(imp & (ts >= d2) &
                                                      (ts < d2 + continual_lib.DAY)))
    assert set(report["psi"]) >= {"log_price", "category", "history_length", "has_query",
                                  "p_click", "p_purchase"}
    assert 0 < report["oov_share"]["item_id"] < 1  # a drifting shop launches items daily
    assert report["model_dir"] == day2["model_dir"]  # the model trained on the window
    assert json.load(open(os.path.join(day2["model_dir"], "drift.json"))) == report
    assert not os.path.exists(os.path.join(options.output_dir, "windows", DAYS[0]))


def test_bad_requests_are_refused_before_anything_is_written(drifting, tmp_path):
    for kw, message in ((dict(start_day="2026-01-06"), "start before the log's first day"),
                        (dict(start_day="2026-01-14", days=5), "after the log's last day"),
                        (dict(start_day="12/01/2026"), "not a date YYYY-MM-DD"),
                        (dict(days=0), "--days must be >= 1"),
                        (dict(warm_days=9), "--warm_days must be in"),
                        (dict(baselines=("warm",)), "--baselines"),
                        (dict(baselines=("frozen", "frozen")), "--baselines"),
                        (dict(name="../x"), "invalid model name")):
        with pytest.raises(ValueError, match=message):
            continual_lib.run(_options(tmp_path, **kw), _config(drifting))
        assert not os.path.exists(tmp_path / "exports"), kw
        assert not os.path.exists(tmp_path / "out"), kw
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.continual", "--data_dir", drifting,
         "--start_day", DAYS[0], "--export_base", str(tmp_path / "e"), "--name", "shop",
         "--output_dir", str(tmp_path / "o"), "--model_dir", str(tmp_path / "m")],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--model_dir: set by the loop" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "e") and not os.path.exists(tmp_path / "o")
