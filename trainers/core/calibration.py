"""Post-hoc calibration of the multi-task outputs, fitted on held-out training impressions.

A network trained with cross-entropy ranks well but its probabilities drift: the ESMM
product, dropout, label smoothing and early stopping all move them. Two small maps fix
that without touching the ranking (both are monotone in the raw output):

  click, purchase  Platt scaling: p' = sigmoid(a * logit(p) + b), a logistic regression
                   on the logit (scikit-learn, no penalty). Unlike a temperature alone it
                   also fixes a level that is off (predicted/observed != 1).
  price_range      a temperature T: softmax(logits / T), T minimising the held-out log
                   loss (Guo et al. 2017); the accuracy is unchanged.

The slice is the latest `--calibration_fraction` of the training impressions by time,
held out from training (a map fitted on rows the network was trained on would see it too
confident), so calibration costs that share of the training data; the fitted values go
into the model's config and so into every export's graph
(`MultitaskRanker.with_calibration`).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7
MIN_ROWS = 50  # fewer held-out rows (or no positive / negative among them): no map fitted


def logit(p):
    p = np.clip(np.asarray(p, np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(labels, probs) -> list[float] | None:
    """[scale, bias] of the logistic regression of `labels` on logit(probs)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels) > 0
    if len(y) < MIN_ROWS or y.all() or not y.any():
        return None
    reg = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000)  # no penalty
    reg.fit(logit(probs)[:, None], y)
    return [float(reg.coef_[0, 0]), float(reg.intercept_[0])]


def fit_temperature(labels, probs) -> float | None:
    """The temperature T minimising the log loss of softmax(log(probs) / T) (log(probs)
    equals the logits up to a per-row constant, which the softmax ignores)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels, np.int64)
    if len(y) < MIN_ROWS:
        return None
    z = np.log(np.clip(np.asarray(probs, np.float64), EPS, None))

    def nll(log_t):
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return -float(np.mean(log_p[np.arange(len(y)), y]))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def fit(labels: dict, preds: dict, outputs=("click", "purchase", "price_range")) -> dict:
    """The calibration of `outputs` of `MultitaskRanker` (`check_calibration`'s dict) fitted
    on held-out predictions; an output without enough held-out labels is left out
    (uncalibrated)."""
    out = {}
    for task in ("click", "purchase"):
        params = fit_platt(labels[task], preds[task]) if task in outputs else None
        if params is not None:
            out[task] = params
    mask = np.asarray(labels["price_range_mask"]) > 0
    if "price_range" in outputs and mask.any():
        temperature = fit_temperature(np.asarray(labels["price_range"])[mask],
                                      np.asarray(preds["price_range"])[mask])
        if temperature is not None:
            out["price_range"] = temperature
    return out


def apply(preds: dict, calibration: dict) -> dict:
    """What the calibrated model answers, computed from the raw model's outputs (numpy;
    the graph does the same in `MultitaskRanker`)."""
    out = dict(preds)
    for task in ("click", "purchase"):
        if task in calibration:
            scale, bias = calibration[task]
            out[task] = 1.0 / (1.0 + np.exp(-(scale * logit(preds[task]) + bias)))
    if "price_range" in calibration:
        z = np.log(np.clip(np.asarray(preds["price_range"], np.float64), EPS, None))
        z = z / calibration["price_range"]
        z = np.exp(z - z.max(axis=1, keepdims=True))
        out["price_range"] = z / z.sum(axis=1, keepdims=True)
    return out
