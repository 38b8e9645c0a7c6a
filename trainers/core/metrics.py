"""The metrics table: the same numbers for a model's predictions and for the oracle's.

AUCs are exact (rank statistics, ties averaged) rather than keras.metrics.AUC's
thresholded approximation, because the table compares models with the oracle to a few
parts in a thousand and GAUC needs a per-user AUC anyway.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7

METRIC_NAMES = (
    "click/auc", "click/logloss", "click/gauc", "purchase/auc", "purchase/logloss",
    "price_range/accuracy", "price_range/logloss", "demand/poisson_deviance", "demand/rmse",
)
# The headline metric of each task: the experiment's chart and the export registry's list.
MAIN_METRICS = ("click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance")
# Direction of "better": AUC-like up, losses down.
HIGHER_IS_BETTER = {"click/auc", "click/gauc", "purchase/auc", "price_range/accuracy"}


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), like scipy.stats.rankdata(method='average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.r_[True, xs[1:] != xs[:-1], True]
    idx = np.flatnonzero(boundaries)
    avg = (idx[:-1] + idx[1:] + 1) / 2.0  # mean of 1-based ranks idx[i]+1 .. idx[i+1]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(idx))
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels) > 0
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Per-user AUC averaged over users with both classes, weighted by their impressions."""
    labels = np.asarray(labels) > 0
    _, g = np.unique(groups, return_inverse=True)
    order = np.argsort(g, kind="stable")
    g, labels, scores = g[order], labels[order], np.asarray(scores, np.float64)[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    total, weight = 0.0, 0
    for s, e in zip(starts, ends):
        lab = labels[s:e]
        if lab.all() or not lab.any():
            continue
        total += auc(lab, scores[s:e]) * (e - s)
        weight += e - s
    return total / weight if weight else float("nan")


def logloss(labels, probs) -> float:
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def multitask_metrics(labels: dict, preds: dict, user_ids: np.ndarray) -> dict:
    """labels: click, purchase, price_range (-1 missing), price_range_mask, demand,
    demand_mask (optional: demand metrics over the whole windows only).
    preds: click [n], purchase [n], price_range [n, K] (probabilities), demand [n] (rate)."""
    out = {
        "click/auc": auc(labels["click"], preds["click"]),
        "click/logloss": logloss(labels["click"], preds["click"]),
        "click/gauc": gauc(labels["click"], preds["click"], user_ids),
        "purchase/auc": auc(labels["purchase"], preds["purchase"]),
        "purchase/logloss": logloss(labels["purchase"], preds["purchase"]),
    }
    mask = np.asarray(labels["price_range_mask"]) > 0
    if mask.any():
        probs = np.asarray(preds["price_range"], np.float64)[mask]
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), EPS, None)
        y = np.asarray(labels["price_range"])[mask].astype(np.int64)
        out["price_range/accuracy"] = float(np.mean(np.argmax(probs, axis=1) == y))
        out["price_range/logloss"] = float(
            -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], EPS, None))))
    else:
        out["price_range/accuracy"] = out["price_range/logloss"] = float("nan")
    whole = (np.asarray(labels["demand_mask"]) > 0 if "demand_mask" in labels
             else np.ones(len(np.asarray(labels["demand"])), bool))
    y = np.asarray(labels["demand"], np.float64)[whole]
    mu = np.clip(np.asarray(preds["demand"], np.float64)[whole], EPS, None)
    if not len(y):
        out["demand/poisson_deviance"] = out["demand/rmse"] = float("nan")
        return out
    # Poisson deviance: 2 * mean(y log(y / mu) - (y - mu)), with 0 log 0 = 0.
    ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)
    out["demand/poisson_deviance"] = float(2.0 * np.mean(ylogy - (y - mu)))
    out["demand/rmse"] = float(np.sqrt(np.mean((y - mu) ** 2)))
    return out


def format_table(rows: dict[str, dict], ratio_of: tuple[str, str] | None = None) -> str:
    """rows: column name -> metrics. With ratio_of=(a, b) a column a / b is added."""
    names = list(rows)
    header = ["metric"] + names + ([f"{ratio_of[0]}/{ratio_of[1]}"] if ratio_of else [])
    lines = []
    for metric in METRIC_NAMES:
        vals = [rows[n].get(metric, float("nan")) for n in names]
        cells = [metric] + [f"{v:.4f}" for v in vals]
        if ratio_of:
            a, b = rows[ratio_of[0]].get(metric), rows[ratio_of[1]].get(metric)
            cells.append(f"{a / b:.3f}" if a is not None and b not in (None, 0) else "-")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt.format(*header), sep] + [fmt.format(*r) for r in lines])
