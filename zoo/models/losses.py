"""Per-example multi-task losses (the trainer averages them, e.g. with
`tf.nn.compute_average_loss`, so nothing here reduces over the batch).

    losses = per_example_losses(labels, outputs)      # {task: [B]}
    loss = combine(losses, {"click": 1.0, "purchase": 1.0, "price_range": 0.5, "demand": 0.1})

  click        BCE(click, p(click))                      over all impressions
  purchase     BCE(purchase, p(purchase))                over ALL impressions (ESMM: entire
                                                         space, p(purchase) = pCTR x pCVR)
               with purchase_on_clicks_only=True:        BCE only where click == 1, exactly 0
                                                         elsewhere (the naive CVR model of
                                                         the ESMM paper, sample selection bias
                                                         included)
  price_range  sparse CE(price_range, probs) * mask      masked labels (mask 0, label -1)
                                                         contribute exactly 0; with label
                                                         smoothing e: (1 - e) CE + e x the
                                                         mean of -log p over the K classes
  demand       Poisson NLL: rate - y * log(rate)         (log y! dropped: constant), times
                                                         demand_mask when the labels have it
                                                         (censored windows count 0)
"""

from __future__ import annotations

import tensorflow as tf

from zoo.models.features import TASKS

EPSILON = 1e-7


def binary_cross_entropy(labels, probs, epsilon: float = EPSILON):
    y = tf.cast(labels, tf.float32)
    p = tf.clip_by_value(tf.cast(probs, tf.float32), epsilon, 1.0 - epsilon)
    return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))


def masked_sparse_cross_entropy(labels, probs, mask, epsilon: float = EPSILON,
                                label_smoothing: float = 0.0):
    """-log probs[label] where mask > 0; exactly 0 where mask == 0 (any label, even -1).
    label_smoothing e: the target is (1 - e) one-hot + e / K everywhere."""
    probs = tf.cast(probs, tf.float32)
    present = tf.cast(mask, tf.float32) > 0
    safe_labels = tf.where(present, tf.cast(labels, tf.int32), tf.zeros_like(labels, tf.int32))
    num_classes = tf.shape(probs)[-1]
    safe_labels = tf.clip_by_value(safe_labels, 0, num_classes - 1)
    p = tf.gather(probs, safe_labels, axis=-1, batch_dims=1)
    ce = -tf.math.log(tf.clip_by_value(p, epsilon, 1.0))
    if label_smoothing:
        uniform = -tf.reduce_mean(tf.math.log(tf.clip_by_value(probs, epsilon, 1.0)), axis=-1)
        ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
    return tf.where(present, ce * tf.cast(mask, tf.float32), tf.zeros_like(ce))


def poisson_nll(counts, rate, epsilon: float = EPSILON):
    """rate - y * log(rate), per example (the log(y!) term is a constant and dropped)."""
    y = tf.cast(counts, tf.float32)
    rate = tf.cast(rate, tf.float32)
    return rate - y * tf.math.log(rate + epsilon)


def per_example_losses(labels: dict, outputs: dict, purchase_on_clicks_only: bool = False,
                       price_range_label_smoothing: float = 0.0) -> dict:
    """{task: Tensor[B]} for the tasks in both `outputs` and `labels`.

    labels: `click`, `purchase` (int), `price_range` (int, -1 missing),
      `price_range_mask` (float, 1 present / 0 missing; absent = all present),
      `demand` (float count >= 0), `demand_mask` (float, 1 whole window / 0 censored;
      absent = all whole).
    outputs: the model's {"click": [B], "purchase": [B], "price_range": [B, K],
      "demand": [B]} (probabilities / rate).
    price_range_label_smoothing: e of the price-range cross entropy (0: none).
    purchase_on_clicks_only: for models whose `purchase` is p(purchase | click)
      (`purchase_head="naive"`). Non-clicked examples still count in the trainer's
      global-batch average, so the purchase term weighs about (click rate) x its per-click
      mean; scale its task weight to compare with a per-click average.
    """
    losses = {}
    if "click" in outputs and "click" in labels:
        losses["click"] = binary_cross_entropy(labels["click"], outputs["click"])
    if "purchase" in outputs and "purchase" in labels:
        bce = binary_cross_entropy(labels["purchase"], outputs["purchase"])
        if purchase_on_clicks_only:
            if "click" not in labels:
                raise ValueError("purchase_on_clicks_only needs the click label")
            clicked = tf.greater(tf.cast(labels["click"], tf.float32), 0.0)
            bce = tf.where(clicked, bce, tf.zeros_like(bce))
        losses["purchase"] = bce
    if "price_range" in outputs and "price_range" in labels:
        mask = labels.get("price_range_mask")
        if mask is None:
            mask = tf.cast(tf.greater_equal(labels["price_range"], 0), tf.float32)
        losses["price_range"] = masked_sparse_cross_entropy(
            labels["price_range"], outputs["price_range"], mask,
            label_smoothing=price_range_label_smoothing)
    if "demand" in outputs and "demand" in labels:
        nll = poisson_nll(labels["demand"], outputs["demand"])
        if "demand_mask" in labels:
            nll = nll * tf.cast(labels["demand_mask"], tf.float32)
        losses["demand"] = nll
    return losses


def combine(losses: dict, task_weights: dict | None = None):
    """sum_t w_t * losses[t], per example ([B]). Tasks missing from `task_weights` weigh 1."""
    task_weights = dict(task_weights or {})
    unknown = sorted(set(task_weights) - set(losses))
    if unknown:
        raise ValueError(f"task_weights has task(s) {unknown} without a loss; losses: "
                         f"{sorted(losses)} (tasks: {list(TASKS)})")
    if not losses:
        raise ValueError("no losses to combine")
    total = None
    for task in sorted(losses):
        term = float(task_weights.get(task, 1.0)) * losses[task]
        total = term if total is None else total + term
    return total
