"""The item outlook: how many units of each item will sell over the next days, with an
interval, set against what sold and against the trailing-demand forecast a merchandiser
already has.

The forecast comes from the multi-task model's demand head. Its label is the quantity of
the impressed item bought by anyone in the D days after the impression (D =
`demand_horizon_days`), so the head is already an item-level forecast made from one
impression's context; the outlook averages it over the item's impressions in the last
`recent_days` before the forecast origin and scales the D-day rate to the horizon. Items
the shop did not show in that window have no model forecast; they get the trailing
forecast, marked so in the `source` column, and the model-against-baseline figures are
computed on the items with a model forecast only (the same rows for both).

The origin is the first second of the eval split, so on a log with eval days the outlook
is scored against what actually sold: WAPE and Poisson deviance of the model and of the
trailing forecast (the item's units sold in the 7 days before the origin, scaled to the
horizon; its Poisson deviance with the prior of `metrics.trailing_demand_baseline`, as a
forecast of 0 for an item that sells has an infinite one), and how often the actual count fell in the interval. The interval is the
central 90 % of a Poisson count with the forecast as its mean: the demand head is trained
as a Poisson rate, so that is the spread the model claims; its measured coverage says
whether the claim holds. The horizon is the requested number of days, cut to what the log
has after the origin (the cut is reported).

Beside the demand head, an item-level forecaster answers the same question from the items'
own series (`item_level_forecast`): a LightGBM Poisson regression of the units sold over
the next H days on each item's trailing units, carts, clicks and impressions (1, 3, 7 and
14 days), its price, category and the weekday, fitted on every earlier origin whose window
ends before the forecast origin (no unit sold after it is seen). Scored on the same items
(`item_level` in the summary, `item_level_forecast` in the CSV): the measure of whether the
head serves better than a forecaster of the series alone. It did not on the default shop
(WAPE 0.853 against the head's 0.892 on the same 2,165 items, BUILD_NOTES.md), so the
outlook's `forecast` (its ranking and interval) is the item-level one by default
(`forecaster="item_level"`; "demand_head" for the head, with the trailing forecast where an
item had no impression). It also covers the items the shop did not show.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_DAY = 86_400
TRAILING_DAYS = 7
INTERVAL = (0.05, 0.95)
COLUMNS = ("rank", "item_id", "category", "brand", "price", "forecast", "low", "high",
           "source", "recent_impressions", "demand_head_forecast", "item_level_forecast",
           "trailing_units", "trailing_forecast", "actual_units", "outlook")
FORECASTERS = ("item_level", "demand_head")
# The item-level forecaster's trailing windows (days) and its LightGBM settings.
ITEM_WINDOWS = (1, 3, 7, 14)
ITEM_LGBM = dict(objective="poisson", learning_rate=0.05, num_leaves=15, min_data_in_leaf=40,
                 feature_fraction=0.9, bagging_fraction=0.8, bagging_freq=1, lambda_l2=1.0,
                 verbose=-1, num_threads=2)
ITEM_ROUNDS = 400


def _units(tables, start: int, end: int) -> np.ndarray:
    """Units of each item (items-table order) bought in [start, end)."""
    from zoo.data.contract import EVENT_INDEX

    ev = tables.events
    n_items = len(tables.items["item_id"])
    sel = ((ev["event_type"] == EVENT_INDEX["purchase"]) & (ev["timestamp"] >= start)
           & (ev["timestamp"] < end) & (ev["item_code"] >= 0))
    return np.bincount(ev["item_code"][sel], weights=ev["quantity"][sel],
                       minlength=n_items).astype(np.float64)


def mean_by_item(item_codes: np.ndarray, values: np.ndarray, n_items: int):
    """(mean of `values` per item, count per item); NaN where an item has none."""
    count = np.bincount(item_codes, minlength=n_items).astype(np.float64)
    total = np.bincount(item_codes, weights=values, minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count


def poisson_interval(mu: np.ndarray, quantiles=INTERVAL) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import poisson

    mu = np.asarray(mu, np.float64)
    return poisson.ppf(quantiles[0], mu), poisson.ppf(quantiles[1], mu)


def score(actual, forecast, low=None, high=None, deviance_forecast=None) -> dict:
    """WAPE, Poisson deviance (of `deviance_forecast` when given) and the interval's
    coverage of a forecast of `actual`."""
    from trainers.core import metrics

    out = {"items": int(len(actual)), "actual_units": float(np.sum(actual)),
           "forecast_units": float(np.sum(forecast)),
           "wape": metrics.wape(actual, forecast),
           "poisson_deviance": metrics.poisson_deviance(
               actual, forecast if deviance_forecast is None else deviance_forecast)}
    if low is not None:
        out["interval_coverage"] = float(np.mean((actual >= low) & (actual <= high)))
    return out


def item_outlook(model, builder, label_config, horizon_days: float = 7.0,
                 recent_days: float = 1.0, num_ranked: int = 20,
                 batch_size: int = 1024, tables=None,
                 forecaster: str = "item_level") -> tuple[list[dict], dict]:
    """(one row per item of the catalogue, ranked by forecast; the summary) at the origin
    of the eval split of `builder`'s examples. `model` is a trained multi-task ranker;
    `tables`, the contract the examples were made from, when the caller has read it."""
    import tensorflow as tf
    from trainers.core import metrics as metrics_lib
    from zoo.data import contract, pipeline
    from zoo.models.features import RAW_FEATURES

    if forecaster not in FORECASTERS:
        raise ValueError(f"the outlook's forecaster must be one of {FORECASTERS}, got "
                         f"{forecaster!r}")
    if horizon_days <= 0 or recent_days <= 0:
        raise ValueError(f"the outlook's horizon ({horizon_days}) and recent window "
                         f"({recent_days}) must be > 0 days")
    meta = builder.info.metadata
    if tables is None:
        tables = contract.read_contract(meta["contract_dir"])
    ts = tables.events["timestamp"]
    origin = contract.split_time(ts, label_config.eval_fraction)
    end = int(ts.max()) + 1
    if origin >= end:
        raise ValueError(f"{meta['contract_dir']}: the log has no eval days to forecast "
                         "from (eval_fraction 0?)")
    # The eval split is whole days; the last one ends at midnight, not at its last event.
    eval_days = -(-(end - origin) // SECONDS_PER_DAY)
    horizon = min(float(horizon_days), float(eval_days)) * SECONDS_PER_DAY
    horizon_in_days = horizon / SECONDS_PER_DAY
    n_items = len(tables.items["item_id"])
    item_ids = tables.items["item_id"].to_numpy(zero_copy_only=False).astype(object)
    code_of = {str(i): c for c, i in enumerate(item_ids)}

    # The demand head on the impressions of the last `recent_days` before the origin.
    start = origin - int(recent_days * SECONDS_PER_DAY)
    ds = pipeline.make_dataset(pipeline.split_files(builder, "train"), batch_size=batch_size,
                               history_length=label_config.history_length,
                               time_range=(start, origin))
    forward = tf.function(lambda raw: model(model.preprocessor(raw), training=False)["demand"],
                          autograph=False)
    codes, rates = [], []
    for batch in ds:
        rates.append(forward({k: batch[k] for k in RAW_FEATURES}).numpy())
        codes.append(np.array([code_of.get(i.decode(), -1) for i in batch["item_id"].numpy()]))
    codes = np.concatenate(codes) if codes else np.zeros([0], np.int64)
    rates = np.concatenate(rates) if rates else np.zeros([0], np.float64)
    known = codes >= 0
    rate, impressions = mean_by_item(codes[known], rates[known].astype(np.float64), n_items)
    model_forecast = rate * (horizon_in_days / label_config.demand_horizon_days)

    trailing = _units(tables, origin - TRAILING_DAYS * SECONDS_PER_DAY, origin)
    baseline = metrics_lib.trailing_demand_baseline(trailing, horizon_in_days)
    smoothed = metrics_lib.trailing_demand_baseline(trailing, horizon_in_days, prior=True)
    actual = _units(tables, origin, origin + int(horizon))
    has_model = impressions > 0
    head = np.where(has_model, model_forecast, baseline)
    item_level = item_level_forecast(tables, origin, int(horizon))
    series = item_level["forecast"]
    forecast = series if forecaster == "item_level" else head
    source = (np.full(n_items, "item_level", object) if forecaster == "item_level"
              else np.where(has_model, "demand_head", "trailing").astype(object))
    low, high = poisson_interval(forecast)

    order = np.lexsort((item_ids.astype(str), -forecast))
    sold_before = trailing > 0
    hot = set(order[:num_ranked].tolist())
    # Slow movers: items that sold in the trailing week and are forecast the least.
    slow = [i for i in order[::-1] if sold_before[i]][:num_ranked]
    slow_set = set(slow)
    rows = []
    for rank, i in enumerate(order, 1):
        rows.append({
            "rank": rank, "item_id": str(item_ids[i]),
            "category": str(tables.items["category"][i]), "brand": str(tables.items["brand"][i]),
            "price": float(tables.items["price"][i]), "forecast": float(forecast[i]),
            "low": float(low[i]), "high": float(high[i]),
            "source": source[i], "recent_impressions": int(impressions[i]),
            "demand_head_forecast": float(model_forecast[i]),
            "item_level_forecast": float(series[i]), "trailing_units": float(trailing[i]),
            "trailing_forecast": float(baseline[i]), "actual_units": float(actual[i]),
            "outlook": "hot" if i in hot else "slow" if i in slow_set else ""})
    m = has_model
    summary = {
        "origin_timestamp": int(origin), "horizon_days": horizon_in_days,
        "requested_horizon_days": float(horizon_days), "recent_days": float(recent_days),
        "forecaster": forecaster,
        "items": n_items, "items_with_model_forecast": int(m.sum()),
        "share_of_units_on_those_items": float(actual[m].sum() / max(actual.sum(), 1e-9)),
        "model": score(actual[m], model_forecast[m], *poisson_interval(model_forecast[m])),
        "trailing": score(actual[m], baseline[m], deviance_forecast=smoothed[m]),
        "item_level": score(actual[m], series[m], *poisson_interval(series[m]),
                            deviance_forecast=np.maximum(series[m], 1e-3)),
        "item_level_all_items": score(actual, series, *poisson_interval(series),
                                      deviance_forecast=np.maximum(series, 1e-3)),
        "item_level_fit": {"rows": item_level["train_rows"], "origins": item_level["origins"]},
        "all_items": score(actual, forecast, low, high, deviance_forecast=(
            np.maximum(series, 1e-3) if forecaster == "item_level"
            else np.where(has_model, model_forecast, smoothed))),
        "hot": [str(item_ids[i]) for i in order[:num_ranked]],
        "slow": [str(item_ids[i]) for i in slow],
    }
    return rows, summary


def _daily(tables, first_day: int, n_days: int) -> dict:
    """[items, days] counts per event kind (units for purchases) from day `first_day`."""
    from zoo.data.contract import EVENT_INDEX

    ev = tables.events
    n_items = len(tables.items["item_id"])
    day = (np.asarray(ev["timestamp"]) // SECONDS_PER_DAY) - first_day
    code = np.asarray(ev["item_code"])
    kind = np.asarray(ev["event_type"])
    ok = (code >= 0) & (day >= 0) & (day < n_days)
    out = {}
    for name in ("impression", "click", "cart", "purchase"):
        sel = ok & (kind == EVENT_INDEX[name])
        weights = np.asarray(ev["quantity"])[sel] if name == "purchase" else None
        out[name] = np.bincount(code[sel] * n_days + day[sel], weights=weights,
                                minlength=n_items * n_days).reshape(n_items, n_days)
    return out


def _item_features(daily: dict, d: int, price: np.ndarray, category: np.ndarray,
                   first_day: int) -> np.ndarray:
    """[items, F] at the start of day index d (the windows end before d)."""
    cols = []
    for name in ("purchase", "cart", "click", "impression"):
        cum = np.concatenate([np.zeros((daily[name].shape[0], 1)),
                              np.cumsum(daily[name], axis=1)], axis=1)
        for w in ITEM_WINDOWS:
            cols.append(cum[:, d] - cum[:, max(d - w, 0)])
    n = len(price)
    cols += [np.log(np.maximum(price, 1e-6)), category.astype(np.float64),
             np.full(n, float((first_day + d + 3) % 7))]  # 1970-01-01 was a Thursday
    return np.stack(cols, axis=1)


def item_level_forecast(tables, origin: int, horizon_seconds: int, seed: int = 0) -> dict:
    """The units each item sells in [origin, origin + horizon), forecast from the items'
    own series by a LightGBM Poisson regression fitted on the earlier whole-day origins
    whose windows end by `origin`: {"forecast": [items], "train_rows", "origins"}."""
    import lightgbm as lgb

    horizon_days = int(np.ceil(horizon_seconds / SECONDS_PER_DAY))
    first_day = int(np.asarray(tables.events["timestamp"]).min()) // SECONDS_PER_DAY
    origin_day = origin // SECONDS_PER_DAY - first_day
    daily = _daily(tables, first_day, origin_day + horizon_days)
    price = np.asarray(tables.items["price"], np.float64)
    _, category = np.unique(np.asarray(tables.items["category"].to_numpy(
        zero_copy_only=False)).astype(str), return_inverse=True)
    # From the first day with a week behind it (earlier ones would teach that a week of
    # zeros is normal), to the last whose window ends by the origin.
    origins = list(range(min(7, origin_day - horizon_days), origin_day - horizon_days + 1))
    origins = [d for d in origins if d >= 1]
    if not origins:
        raise ValueError("the log before the outlook's origin is shorter than one horizon: "
                         "no window to fit the item-level forecaster on")
    cum_units = np.concatenate([np.zeros((len(price), 1)),
                                np.cumsum(daily["purchase"], axis=1)], axis=1)
    x = np.concatenate([_item_features(daily, d, price, category, first_day)
                        for d in origins])
    y = np.concatenate([cum_units[:, d + horizon_days] - cum_units[:, d] for d in origins])
    cat_column = 4 * len(ITEM_WINDOWS) + 1
    params = dict(ITEM_LGBM, seed=seed)
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[cat_column]),
                        num_boost_round=ITEM_ROUNDS)
    at = _item_features(daily, origin_day, price, category, first_day)
    return {"forecast": np.maximum(booster.predict(at), 0.0), "train_rows": int(len(y)),
            "origins": len(origins)}


def write_csv(rows: list[dict], path: str) -> int:
    from trainers.core import rundir

    return rundir.write_csv(path, list(COLUMNS), ([r[c] for c in COLUMNS] for r in rows))
