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
