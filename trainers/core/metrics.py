"""The metrics table: the same numbers for a model's predictions and for the oracle's.

AUCs are exact (rank statistics, ties averaged) rather than keras.metrics.AUC's
thresholded approximation, because the table compares models with the oracle to a few
parts in a thousand and GAUC needs a per-user AUC anyway. PR-AUC and the confusion matrix
are scikit-learn's. Calibration is read two ways: the expected calibration error (equal-width
bins of the predicted probability, |mean predicted - observed rate| weighted by the bin's
share; for the price range over the top class, as in Guo et al. 2017) and the ratio of
predicted to observed positives (1 = as many predicted as happened). The demand head is set
beside the trailing-demand baseline a merchandiser would use: the item's purchases in the 7
days before the impression scaled to the label's horizon.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7

# The experiment's printed table (its CSV has every metric).
SUMMARY_METRICS = (
    "click/auc", "click/logloss", "click/gauc", "purchase/auc", "purchase/logloss",
    "price_range/accuracy", "price_range/logloss", "demand/poisson_deviance", "demand/rmse",
)
METRIC_NAMES = (
    "click/auc", "click/logloss", "click/gauc", "click/ece", "click/predicted_to_observed",
    "purchase/auc", "purchase/logloss", "purchase/gauc", "purchase/pr_auc", "purchase/ece",
    "purchase/predicted_to_observed",
    "price_range/accuracy", "price_range/logloss", "price_range/ece",
    "demand/poisson_deviance", "demand/rmse", "demand/wape",
    "demand/baseline_poisson_deviance", "demand/baseline_wape",
)
CALIBRATION_BINS = 15
# The trailing-demand baseline's prior for its Poisson deviance, in purchases per 7 days: an
# item with no recent sale is forecast a little demand rather than none, which the deviance
# would punish without bound (log 0). Its WAPE is taken without the prior, which only adds
# error there.
BASELINE_PRIOR_PER_WEEK = 0.5
# The headline metric of each task: the experiment's chart and the export registry's list.
MAIN_METRICS = ("click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance")
# Direction of "better": AUC-like up, losses down.
HIGHER_IS_BETTER = {"click/auc", "click/gauc", "purchase/auc", "purchase/gauc",
                    "purchase/pr_auc", "price_range/accuracy"}


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


def calibration_bins(correct, confidence, bins: int = CALIBRATION_BINS):
    """Per equal-width bin of `confidence` in [0, 1]: (count, mean confidence, observed
    rate of `correct`); empty bins have count 0 and NaN means. The reliability diagram's
    points and the ECE's terms. A NaN confidence (an oracle column the simulator did not
    compute) falls in no bin."""
    p = np.asarray(confidence, np.float64)
    y = np.asarray(correct, np.float64)
    known = np.isfinite(p)
    p, y = np.clip(p[known], 0.0, 1.0), y[known]
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 falls in the last bin
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        rate = np.bincount(idx, weights=y, minlength=bins) / count
    return count, mean_p, rate


def ece(correct, confidence, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: sum over bins of share * |mean confidence - rate|."""
    count, mean_p, rate = calibration_bins(correct, confidence, bins)
    if not count.sum():
        return float("nan")
    full = count > 0
    return float(np.sum(count[full] * np.abs(mean_p[full] - rate[full])) / count.sum())


def predicted_to_observed(labels, probs) -> float:
    """Sum of predicted probabilities over the number of positives (1 = calibrated in
    the large; NaN without positives)."""
    positives = float(np.sum(np.asarray(labels) > 0))
    return float(np.sum(probs) / positives) if positives else float("nan")


def pr_auc(labels, scores) -> float:
    """Average precision (the area under the precision-recall curve, step-wise)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels) > 0
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores, np.float64)))


def wape(y, forecast) -> float:
    """Weighted absolute percentage error: sum |y - forecast| / sum y."""
    y = np.asarray(y, np.float64)
    total = y.sum()
    return float(np.abs(y - np.asarray(forecast, np.float64)).sum() / total) if total else float("nan")


def poisson_deviance(y, mu) -> float:
    """2 * mean(y log(y / mu) - (y - mu)), with 0 log 0 = 0."""
    y = np.asarray(y, np.float64)
    mu = np.clip(np.asarray(mu, np.float64), EPS, None)
    ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)
    return float(2.0 * np.mean(ylogy - (y - mu)))


def trailing_demand_baseline(item_purchases_7d, horizon_days: float,
                             prior: bool = False) -> np.ndarray:
    """The item's purchases over the 7 days before the impression, scaled to the label's
    horizon (with `prior`: plus `BASELINE_PRIOR_PER_WEEK`, for the deviance)."""
    week = np.asarray(item_purchases_7d, np.float64) + (BASELINE_PRIOR_PER_WEEK if prior else 0)
    return week * (float(horizon_days) / 7.0)


def price_range_confusion(labels: dict, preds: dict) -> list[list[int]]:
    """Rows = the true price range, columns = the predicted (argmax) one, over the
    impressions with a label."""
    from sklearn.metrics import confusion_matrix

    probs = np.asarray(preds["price_range"])
    mask = np.asarray(labels["price_range_mask"]) > 0
    y = np.asarray(labels["price_range"])[mask].astype(np.int64)
    return confusion_matrix(y, np.argmax(probs[mask], axis=1),
                            labels=np.arange(probs.shape[1])).tolist()


def multitask_metrics(labels: dict, preds: dict, user_ids: np.ndarray,
                      demand_baseline: tuple | None = None) -> dict:
    """labels: click, purchase, price_range (-1 missing), price_range_mask, demand,
    demand_mask (optional: demand metrics over the whole windows only).
    preds: click [n], purchase [n], price_range [n, K] (probabilities), demand [n] (rate).
    demand_baseline: the trailing-demand forecast [n] without and with the prior
    (`trailing_demand_baseline`), for the baseline's WAPE and deviance on the same rows."""
    out = {}
    for task in ("click", "purchase"):
        y, p = np.asarray(labels[task]), np.asarray(preds[task], np.float64)
        out[f"{task}/auc"] = auc(y, p)
        out[f"{task}/logloss"] = logloss(y, p)
        out[f"{task}/gauc"] = gauc(y, p, user_ids)
        out[f"{task}/ece"] = ece(y > 0, p)
        out[f"{task}/predicted_to_observed"] = predicted_to_observed(y, p)
    out["purchase/pr_auc"] = pr_auc(labels["purchase"], preds["purchase"])
    mask = np.asarray(labels["price_range_mask"]) > 0
    if mask.any():
        probs = np.asarray(preds["price_range"], np.float64)[mask]
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), EPS, None)
        y = np.asarray(labels["price_range"])[mask].astype(np.int64)
        out["price_range/accuracy"] = float(np.mean(np.argmax(probs, axis=1) == y))
        out["price_range/logloss"] = float(
            -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], EPS, None))))
        out["price_range/ece"] = ece(np.argmax(probs, axis=1) == y, probs.max(axis=1))
    else:
        out["price_range/accuracy"] = out["price_range/logloss"] = float("nan")
        out["price_range/ece"] = float("nan")
    whole = (np.asarray(labels["demand_mask"]) > 0 if "demand_mask" in labels
             else np.ones(len(np.asarray(labels["demand"])), bool))
    y = np.asarray(labels["demand"], np.float64)[whole]
    mu = np.clip(np.asarray(preds["demand"], np.float64)[whole], EPS, None)
    nan = float("nan")
    out["demand/poisson_deviance"] = poisson_deviance(y, mu) if len(y) else nan
    out["demand/rmse"] = float(np.sqrt(np.mean((y - mu) ** 2))) if len(y) else nan
    out["demand/wape"] = wape(y, mu) if len(y) else nan
    if demand_baseline is not None and len(y):
        plain, smoothed = (np.asarray(b, np.float64)[whole] for b in demand_baseline)
        out["demand/baseline_poisson_deviance"] = poisson_deviance(y, smoothed)
        out["demand/baseline_wape"] = wape(y, plain)
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
