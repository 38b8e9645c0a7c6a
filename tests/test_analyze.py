"""The analysis: the item outlook against counts made by hand, the report end to end on the
shared tiny run, and the page rendered in headless Chromium."""

import csv
import html
import json
import os
import shutil
import subprocess
import types

import numpy as np
import pytest

from helpers import LABEL_CFG, REPO, subprocess_env
from trainers.core import outlook
from zoo.data.contract import EVENT_INDEX

DAY = 86_400


def test_units_and_item_means_by_hand():
    p, c = EVENT_INDEX["purchase"], EVENT_INDEX["click"]
    events = {"event_type": np.array([p, p, c, p, p, p], np.int8),
              "timestamp": np.array([0, DAY - 1, 10, DAY, 5, 100]),
              "item_code": np.array([0, 2, 2, 2, -1, 2]),
              "quantity": np.array([2, 1, 1, 4, 1, 3])}
    tables = types.SimpleNamespace(events=events,
                                   items={"item_id": np.array(["a", "b", "c"], object)})
    # [0, DAY): item a 2 units, item c 1 + 3 (the click and the item-less purchase do not
    # count, the purchase at DAY is outside).
    assert outlook._units(tables, 0, DAY).tolist() == [2.0, 0.0, 4.0]
    assert outlook._units(tables, DAY, 2 * DAY).tolist() == [0.0, 0.0, 4.0]
    mean, count = outlook.mean_by_item(np.array([0, 0, 2]), np.array([1.0, 3.0, 5.0]), 3)
    assert count.tolist() == [2, 0, 1] and mean[0] == 2.0 and np.isnan(mean[1]) and mean[2] == 5
    # The 90 % Poisson interval holds at least 90 % of Poisson draws of its mean.
    mu = np.random.default_rng(0).uniform(0.1, 20, 20_000)
    low, high = outlook.poisson_interval(mu)
    draws = np.random.default_rng(1).poisson(mu)
    assert 0.9 <= np.mean((draws >= low) & (draws <= high)) <= 0.97
    s = outlook.score(np.array([4.0, 0.0]), np.array([3.0, 1.0]))
    assert s["wape"] == pytest.approx(0.5) and s["actual_units"] == 4.0


USER = "u3"


@pytest.fixture(scope="module")
def analyzed(trained, shop, tmp_path_factory):
    from trainers.core import analysis, profiles

    from trainers.core import drift, rundir
    from zoo.data import contract

    config, result = trained
    data, tfds_dir = shop
    out = str(tmp_path_factory.mktemp("report"))
    # What the daily loop leaves beside a model: the drift of the day after its window.
    tables = contract.read_contract(data)
    cut = contract.split_time(tables.events["timestamp"], LABEL_CFG.eval_fraction)
    drift_path = os.path.join(config.model_dir, "drift.json")
    rundir.write_json(drift_path, drift.report(
        drift.impression_features(tables, LABEL_CFG.history_length), cut,
        rundir.read_vocabulary(config.model_dir)))
    try:
        summary = analysis.analyze(config.model_dir, out, data_dir=data, tfds_dir=tfds_dir,
                                   compare={"other_run": {"metrics": {"click/auc": 0.6123}}},
                                   user_ids=(USER,), verbose=False,
                                   profile_options=profiles.ProfileOptions(num_segments=3))
        summary["drift_written"] = rundir.read_json(drift_path)
    finally:
        os.unlink(drift_path)
    return config, result, summary, out


def test_the_report_holds_the_runs_numbers_and_a_checked_outlook(analyzed):
    from zoo.data import contract

    config, result, summary, out = analyzed
    data = config.data_dir
    for name in ("index.html", "metrics.json", "item_outlook.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "metrics.json")) as f:
        record = json.load(f)
    # The same eval split and the same (calibrated, now in the graph) model as the run.
    for m in ("click/auc", "purchase/auc", "click/ece", "price_range/accuracy"):
        assert record["metrics"][m] == pytest.approx(result["metrics"][m], abs=2e-4), m
    assert record["oracle"]["click/auc"] > 0.5
    assert record["calibration"]["fitted"] == result["calibration"]["fitted"]
    assert record["compare"] == {"other_run": {"click/auc": 0.6123}}
    # The drift report beside the model is in the record and on the page.
    assert record["drift"] == summary["drift_written"]
    assert set(record["drift"]["psi"]) == {"log_price", "category", "history_length",
                                           "has_query"}
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "<h2 id=\"drift\">Drift</h2>" in page
    for flag in record["drift"]["flags"]:
        assert html.escape(flag) in page
    for name, value in record["drift"]["psi"].items():
        assert f"<td>{name}</td><td class=num>{value:.3f}</td>" in page
    # The outlook: every catalogue item once, ranked by forecast, what sold counted again
    # here from the log.
    tables = contract.read_contract(data)
    with open(os.path.join(out, "item_outlook.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(tables.items["item_id"])
    forecast = np.array([float(r["forecast"]) for r in rows])
    assert (np.diff(forecast) <= 1e-12).all()
    s = record["item_outlook"]
    origin = s["origin_timestamp"]
    assert origin == contract.split_time(tables.events["timestamp"], LABEL_CFG.eval_fraction)
    ev = tables.events
    bought = ((ev["event_type"] == EVENT_INDEX["purchase"]) & (ev["timestamp"] >= origin)
              & (ev["timestamp"] < origin + s["horizon_days"] * DAY))
    assert sum(float(r["actual_units"]) for r in rows) == float(ev["quantity"][bought].sum())
    assert {r["source"] for r in rows} == {"item_level"}  # the default forecaster
    model_rows = [r for r in rows if int(r["recent_impressions"]) > 0]
    assert len(model_rows) == s["items_with_model_forecast"] > 0
    assert s["model"]["items"] == s["trailing"]["items"] == len(model_rows)
    # The central 90 % of a Poisson count around each forecast (for a forecast under 0.05
    # both ends are 0: the forecast itself need not lie inside).
    low, high = outlook.poisson_interval(forecast)
    np.testing.assert_array_equal([float(r["low"]) for r in rows], low)
    np.testing.assert_array_equal([float(r["high"]) for r in rows], high)
    assert (low <= high).all() and (high[forecast > 0.06] >= 1).all()
    assert sum(r["outlook"] == "hot" for r in rows) == min(20, len(rows))
    # The item-level forecaster, scored on the same items as the head.
    assert s["item_level"]["items"] == len(model_rows)
    assert s["item_level"]["actual_units"] == s["model"]["actual_units"]
    assert s["item_level_fit"]["origins"] >= 1 and s["item_level_fit"]["rows"] > 0
    assert all(float(r["item_level_forecast"]) >= 0 for r in rows)


def test_the_item_level_forecaster_sees_nothing_after_its_origin(shop):
    """Events at and after the origin changed (here: dropped) -> the same forecast."""
    import dataclasses
    import pyarrow as pa
    from zoo.data import contract

    tables = contract.read_contract(shop[0])
    origin = contract.split_time(tables.events["timestamp"], LABEL_CFG.eval_fraction)
    horizon = 3 * DAY
    full = outlook.item_level_forecast(tables, origin, horizon)["forecast"]
    keep = np.asarray(tables.events["timestamp"]) < origin
    cut = dataclasses.replace(tables, events={
        k: (v.filter(pa.array(keep)) if isinstance(v, pa.Array) else np.asarray(v)[keep])
        for k, v in tables.events.items()})
    np.testing.assert_array_equal(outlook.item_level_forecast(cut, origin, horizon)["forecast"],
                                  full)
    assert full.sum() > 0


def test_profiles_count_the_log_and_segments_are_deterministic(analyzed):
    import pyarrow.parquet as pq
    from trainers.core import profiles, rundir
    from zoo.data import contract

    config, result, summary, out = analyzed
    table = pq.read_table(os.path.join(out, "profiles.parquet")).to_pydict()
    tables = contract.read_contract(config.data_dir)
    ev = tables.events
    users = ev["user_id"].to_numpy(zero_copy_only=False).astype(str)
    assert sorted(table["user_id"]) == sorted(set(users))
    i = table["user_id"].index(USER)
    mine = users == USER
    for name, kind in (("clicks", "click"), ("purchases", "purchase")):
        assert table[name][i] == int((mine & (ev["event_type"] == EVENT_INDEX[kind])).sum())
    assert table["events"][i] == int(mine.sum())
    assert table["sessions"][i] == len(set(ev["session_id"].to_numpy(
        zero_copy_only=False)[mine]))
    k = LABEL_CFG.num_price_ranges
    probs = np.array([table[f"price_range_model_{j}"][i] for j in range(k)])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert table["price_range_model"][i] == int(probs.argmax())
    sizes = [s["users"] for s in summary["segments"]["segments"]]
    assert sum(sizes) == len(table["user_id"]) and sizes == sorted(sizes, reverse=True)
    # The same users and seed: the same segments; a sample of users is seeded too.
    model, label_config = rundir.load_trained(config.model_dir)
    options = profiles.ProfileOptions(max_users=60, num_segments=3, seed=4)
    a, sa = profiles.build(model, tables, label_config, [20.0, 40.0, 80.0, 160.0], options)
    b, sb = profiles.build(model, tables, label_config, [20.0, 40.0, 80.0, 160.0], options)
    assert sa["sampled"] and len(a["user_id"]) == 60
    assert list(a["user_id"]) == list(b["user_id"]) and list(a["segment"]) == list(b["segment"])
    rep = np.random.default_rng(0).normal(size=(200, 8))
    assert (profiles.segment(rep, 4, 1) == profiles.segment(rep.copy(), 4, 1)).all()


def test_a_user_page_and_an_unknown_user(analyzed, tmp_path):
    from trainers.core import analysis

    config, result, summary, out = analyzed
    (page,) = summary["user_pages"]
    text = open(page, encoding="utf-8").read()
    assert f"user {USER}" in text and "Top recommendations" in text
    assert text.count("<img") == 1
    with pytest.raises(ValueError, match="--user_id nobody: no such user"):
        analysis.analyze(config.model_dir, str(tmp_path / "r"), data_dir=config.data_dir,
                         tfds_dir=config.tfds_dir, user_ids=("nobody",), verbose=False)
    assert not os.path.exists(tmp_path / "r")


def test_a_failure_half_way_leaves_the_output_folder_as_it_was(trained, shop, tmp_path,
                                                                monkeypatch):
    from trainers.core import analysis, report

    config, _ = trained
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "page", broken)  # after the CSV and the parquet are written
    with pytest.raises(OSError, match="disk full"):
        analysis.analyze(config.model_dir, str(out), data_dir=shop[0], tfds_dir=shop[1],
                         verbose=False)
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_analyze_refuses_bad_flags_clearly(trained, tmp_path):
    config, _ = trained
    proc = subprocess.run(
        [os.sys.executable, "-m", "trainers.analyze", "--model_dir", str(tmp_path / "none"),
         "--output_dir", str(tmp_path / "r")], capture_output=True, text=True,
        env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "--model_dir" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "r")


def chromium() -> str:
    """Debian's chromium, installed here when missing (the browser test must run)."""
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False,
                       capture_output=True, timeout=600)
        path = shutil.which("chromium")
    assert path, ("the report's browser test needs Chromium: apt-get install chromium "
                  "(Debian's package)")
    return path


def test_the_report_renders_in_headless_chromium(analyzed, tmp_path):
    from playwright.sync_api import sync_playwright

    config, result, summary, out = analyzed
    with open(os.path.join(out, "metrics.json")) as f:
        record = json.load(f)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("file://" + os.path.join(out, "index.html"))
        page.wait_for_load_state("load")
        loaded = """() => Array.from(document.images).map(
            i => [i.alt, i.complete && i.naturalWidth > 0])"""
        images = page.evaluate(loaded)
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        with page.expect_navigation():  # the user's page, through its link
            page.click(f'a[href="user_{USER}.html"]')
        user_images = page.evaluate(loaded)
        user_text = page.inner_text("body")
        browser.close()
    assert errors == []
    assert len(images) >= 8 and all(ok for _, ok in images), images
    assert len(user_images) == 1 and user_images[0][1]
    assert f"user {USER}" in user_text and "p(purchase)" in user_text
    for m in ("click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance"):
        assert f"{record['metrics'][m]:.4f}" in text, m
    assert f"{record['item_outlook']['model']['wape']:.4f}" in text
    assert os.path.getsize(tmp_path / "report.png") > 50_000


def test_compare_dirs_name_what_is_wrong(tmp_path):
    from trainers import analyze

    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match="metrics.json is not JSON"):
        analyze._read_metrics(str(tmp_path))
    with pytest.raises(ValueError, match="no metrics.json"):
        analyze._read_metrics(str(tmp_path / "elsewhere"))
