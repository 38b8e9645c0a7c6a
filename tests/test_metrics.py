import numpy as np
import pytest

from trainers.core import metrics


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # many ties
    assert metrics.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert metrics.auc(y, -s) == pytest.approx(1 - brute_auc(y, s), abs=1e-12)
    assert np.isnan(metrics.auc(np.ones(3), np.arange(3)))


def test_gauc_weights_users_with_both_classes():
    y = np.array([1, 0, 0, 1, 1, 1, 0])
    s = np.array([.9, .1, .2, .8, .5, .4, .3])
    u = np.array(["a", "a", "a", "b", "b", "c", "c"])
    # a: AUC 1 (3 impressions); b: only positives -> skipped; c: .4 > .3 -> 1 (2 imps)
    assert metrics.gauc(y, s, u) == pytest.approx(1.0)
    s2 = s.copy()
    s2[5] = 0.2  # c now AUC 0
    assert metrics.gauc(y, s2, u) == pytest.approx(3 / 5)


def test_table_values_by_hand():
    labels = {"click": np.array([1, 0]), "purchase": np.array([0, 0]),
              "price_range": np.array([1, -1]), "price_range_mask": np.array([1.0, 0.0]),
              "demand": np.array([2.0, 0.0])}
    preds = {"click": np.array([0.8, 0.4]), "purchase": np.array([0.1, 0.2]),
             "price_range": np.array([[0.2, 0.8], [0.9, 0.1]]), "demand": np.array([1.0, 0.5])}
    m = metrics.multitask_metrics(labels, preds, np.array(["u", "v"]))
    assert m["click/auc"] == 1.0
    assert m["click/logloss"] == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert m["price_range/accuracy"] == 1.0  # the masked row does not count
    assert m["price_range/logloss"] == pytest.approx(-np.log(0.8))
    dev = 2 * np.mean([2 * np.log(2 / 1.0) - (2 - 1.0), 0 - (0 - 0.5)])
    assert m["demand/poisson_deviance"] == pytest.approx(dev)
    assert m["demand/rmse"] == pytest.approx(np.sqrt((1.0 + 0.25) / 2))
    table = metrics.format_table({"model": m, "oracle": m}, ratio_of=("model", "oracle"))
    assert "click/auc" in table and "1.000" in table


def test_calibration_metrics_match_a_brute_force_count():
    rng = np.random.default_rng(1)
    p = rng.random(2000) ** 2
    y = (rng.random(2000) < np.clip(p * 1.3, 0, 1)).astype(int)  # under-confident
    # Brute force: every example visits each of the 15 intervals [k/15, (k+1)/15).
    total = 0.0
    for k in range(15):
        lo, hi = k / 15, (k + 1) / 15
        inside = [i for i in range(len(p)) if lo <= p[i] < hi or (k == 14 and p[i] == 1.0)]
        if inside:
            total += len(inside) * abs(np.mean(p[inside]) - np.mean(y[inside]))
    assert metrics.ece(y, p) == pytest.approx(total / len(p), rel=1e-9)
    assert metrics.ece(y, p) > 0.02
    # A calibrated forecaster: y drawn with probability p.
    y_cal = (rng.random(200_000) < (p2 := rng.random(200_000))).astype(int)
    assert metrics.ece(y_cal, p2) < 0.01
    assert metrics.predicted_to_observed(y_cal, p2) == pytest.approx(1.0, abs=0.01)
    assert metrics.predicted_to_observed(y, p) == pytest.approx(p.sum() / y.sum())
    assert np.isnan(metrics.predicted_to_observed(np.zeros(3), np.ones(3)))


def test_pr_auc_is_average_precision_by_hand():
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.1).astype(int)
    s = rng.random(300) + 0.5 * y  # no ties
    order = np.argsort(-s)
    hits = y[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    assert metrics.pr_auc(y, s) == pytest.approx(precision_at[hits == 1].mean(), rel=1e-12)
    assert np.isnan(metrics.pr_auc(np.zeros(4), np.arange(4)))


def test_demand_and_price_range_extras_by_hand():
    labels = {"click": np.array([1, 0, 0]), "purchase": np.array([1, 0, 0]),
              "price_range": np.array([1, 0, -1]), "price_range_mask": np.array([1., 1., 0.]),
              "demand": np.array([4.0, 0.0, 2.0]), "demand_mask": np.array([1., 1., 0.])}
    preds = {"click": np.array([0.8, 0.4, 0.1]), "purchase": np.array([0.3, 0.1, 0.1]),
             "price_range": np.array([[0.1, 0.9], [0.3, 0.7], [0.5, 0.5]]),
             "demand": np.array([3.0, 1.0, 9.0])}
    sales = np.array([7.0, 0.0, 1.0])
    plain = metrics.trailing_demand_baseline(sales, horizon_days=3)
    smoothed = metrics.trailing_demand_baseline(sales, horizon_days=3, prior=True)
    assert plain == pytest.approx([3.0, 0.0, 3 / 7])
    assert smoothed == pytest.approx([7.5 * 3 / 7, 0.5 * 3 / 7, 1.5 * 3 / 7])
    m = metrics.multitask_metrics(labels, preds, np.array(["u", "u", "v"]), (plain, smoothed))
    assert m["demand/wape"] == pytest.approx((1 + 1) / 4)  # the censored row is out
    assert m["demand/baseline_wape"] == pytest.approx((1 + 0) / 4)
    assert m["demand/baseline_poisson_deviance"] == pytest.approx(
        np.mean([2 * (4 * np.log(4 / smoothed[0]) - (4 - smoothed[0])), 2 * smoothed[1]]))
    # Top class: row 0 right with 0.9, row 1 wrong with 0.7 (bins differ): |.9-1|, |.7-0|.
    assert m["price_range/ece"] == pytest.approx((0.1 + 0.7) / 2)
    assert m["purchase/gauc"] == 1.0  # user u: .3 > .1; v has one class
    assert m["purchase/predicted_to_observed"] == pytest.approx(0.5)
    assert metrics.price_range_confusion(labels, preds) == [[0, 1], [0, 1]]
    assert "demand/baseline_wape" not in metrics.multitask_metrics(
        labels, preds, np.array(["u", "u", "v"]))


def test_unknown_probabilities_fall_in_no_calibration_bin():
    # A shop simulated with --oracle_replays 0 has NaN price-range oracle columns: the
    # oracle's metrics are NaN there, not a crash of the whole evaluation.
    labels = {"click": np.array([1, 0]), "purchase": np.array([0, 1]),
              "price_range": np.array([1, 0]), "price_range_mask": np.array([1., 1.]),
              "demand": np.array([1.0, 0.0])}
    preds = {"click": np.array([0.6, 0.2]), "purchase": np.array([0.1, 0.3]),
             "price_range": np.full((2, 3), np.nan), "demand": np.array([1.0, 1.0])}
    m = metrics.multitask_metrics(labels, preds, np.array(["u", "v"]))
    assert np.isnan(m["price_range/ece"]) and m["click/ece"] == pytest.approx((0.4 + 0.2) / 2)
    count, _, _ = metrics.calibration_bins([1, 0, 1], [0.95, np.nan, 0.05], bins=2)
    assert count.tolist() == [1.0, 1.0]
