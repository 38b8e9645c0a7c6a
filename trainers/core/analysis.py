"""The analysis of a trained multi-task model (`python -m trainers.analyze`): one pass of
predictions over the eval split, the metrics and curves from them, the item outlook, and
the report that shows them."""

from __future__ import annotations

import json
import os

import numpy as np

from trainers.core import metrics as metrics_lib

# The rows of the report's main table, in this order.
HEADLINE = ("click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance")


def _predict(model, builder, config, verbose: bool):
    import keras
    from trainers.core import evaluation, loop

    ds = evaluation.eval_dataset(builder, "eval", model.preprocessor, config)
    bar = (keras.utils.Progbar(builder.info.splits["eval"].num_examples, unit_name="impression")
           if verbose else None)
    progress = None if bar is None else (lambda n: bar.add(n))
    if verbose:
        print("predicting the eval split")
    return loop.predict_dataset(model, ds, progress=progress)


def _metric_rows(columns: dict) -> list[list]:
    return [[m, *(float(c.get(m, float("nan"))) for c in columns.values())]
            for m in metrics_lib.METRIC_NAMES]


def analyze(model_dir: str, output_dir: str, data_dir: str | None = None,
            tfds_dir: str | None = None, compare: dict | None = None,
            horizon_days: float = 7.0, recent_days: float = 1.0, batch_size: int = 1024,
            verbose: bool = True) -> dict:
    """Writes output_dir/index.html, metrics.json and item_outlook.csv; returns the summary
    (the paths and the numbers)."""
    from trainers.core import config as config_lib, evaluation, outlook, report, rundir
    from zoo.data import prepare as prepare_lib

    model, label_config = rundir.load_trained(model_dir)
    builder = prepare_lib.prepare(data_dir, tfds_dir, label_config)
    if "eval" not in builder.info.splits:
        raise ValueError(f"{data_dir or 'the default shop'}: no eval split to analyse "
                         f"(eval_fraction {label_config.eval_fraction})")
    meta = builder.info.metadata
    config = config_lib.TrainConfig(label_config=label_config, eval_batch_size=batch_size)
    preds, extras = _predict(model, builder, config, verbose)
    model_metrics, oracle_metrics, _ = evaluation.metrics_table(preds, extras, meta, config)
    oracle = evaluation.read_oracle(meta["contract_dir"], label_config)
    oracle_preds = (None if oracle is None else evaluation.oracle_predictions(
        oracle, extras["event_id"], label_config.num_price_ranges))
    run_record = rundir.read_json(os.path.join(model_dir, "metrics.json")) or {}

    if verbose:
        print("item outlook")
    rows, outlook_summary = outlook.item_outlook(model, builder, label_config,
                                                 horizon_days=horizon_days,
                                                 recent_days=recent_days,
                                                 batch_size=batch_size)
    os.makedirs(output_dir, exist_ok=True)
    outlook_path = os.path.join(output_dir, "item_outlook.csv")
    outlook.write_csv(rows, outlook_path)

    compare = dict(compare or {})
    columns = {"model": model_metrics}
    if oracle_metrics:
        columns["oracle"] = oracle_metrics
    for name, record in compare.items():
        columns[name] = record.get("metrics", {})
    record = {
        "model_dir": os.path.abspath(model_dir), "contract_dir": meta["contract_dir"],
        "eval_impressions": int(len(extras["click"])), "metrics": model_metrics,
        "oracle": oracle_metrics, "compare": {k: v.get("metrics", {}) for k, v in compare.items()},
        "calibration": run_record.get("calibration"), "item_outlook": outlook_summary,
    }
    rundir.write_json(os.path.join(output_dir, "metrics.json"), record)

    sections = _sections(model_metrics, columns, preds, extras, oracle_preds, meta,
                         run_record.get("calibration"), rows, outlook_summary, report)
    intro = (f"model_dir {os.path.abspath(model_dir)} · data {meta['contract_dir']} · "
             f"{len(extras['click']):,} eval impressions (all of the eval split)")
    index = os.path.join(output_dir, "index.html")
    tmp = index + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(report.page("ecom-zoo analysis: " + os.path.basename(
            os.path.normpath(model_dir)), sections, intro))
    os.replace(tmp, index)
    if verbose:
        head = "  ".join(f"{m} {model_metrics[m]:.4f}" for m in HEADLINE)
        print(f"{head}\nitem outlook ({outlook_summary['horizon_days']:g} days): WAPE model "
              f"{outlook_summary['model']['wape']:.3f} vs trailing "
              f"{outlook_summary['trailing']['wape']:.3f} on "
              f"{outlook_summary['items_with_model_forecast']:,} items")
    return {"index": index, "metrics": os.path.join(output_dir, "metrics.json"),
            "item_outlook": outlook_path, **record}


def _sections(model_metrics, columns, preds, extras, oracle_preds, meta, calibration,
              outlook_rows, outlook_summary, report) -> list[tuple[str, str]]:
    sections = []
    head = report.table(["metric", *columns], _metric_rows(columns))
    sections.append(("Metrics", head + "<p class=note>Eval split. ECE: expected "
                     "calibration error over 15 equal-width bins; predicted_to_observed: "
                     "sum of predicted probabilities over positives; demand/baseline_*: the "
                     "item's purchases in the 7 days before the impression, scaled to the "
                     "label's horizon.</p>"))

    figures = []
    for task in ("click", "purchase"):
        curves = {"model": (extras[task] > 0, preds[task])}
        if oracle_preds is not None:
            curves["oracle"] = (extras[task] > 0, oracle_preds[task])
        figures.append(report.img(report.reliability(f"{task}: reliability", curves),
                                  f"{task} reliability diagram"))
    mask = np.asarray(extras["price_range_mask"]) > 0
    if mask.any():
        y = np.asarray(extras["price_range"])[mask]
        probs = np.asarray(preds["price_range"])[mask]
        curves = {"model": (probs.argmax(1) == y, probs.max(1))}
        if oracle_preds is not None:
            o = oracle_preds["price_range"][mask]
            o = o / np.clip(o.sum(1, keepdims=True), 1e-12, None)
            curves["oracle"] = (o.argmax(1) == y, o.max(1))
        figures.append(report.img(report.reliability("price range: top class", curves),
                                  "price range reliability diagram"))
    cal = ""
    if calibration and calibration.get("eval_before"):
        rows = [[k, float(calibration["eval_before"][k]), float(calibration["eval_after"][k])]
                for k in calibration["eval_before"]]
        cal = (f"<p>The run fitted a post-hoc calibration on "
               f"{calibration['held_out_impressions']:,} held-out training impressions: "
               f"<code>{report.html.escape(json.dumps(calibration['fitted']))}</code></p>"
               + report.table(["metric", "raw", "calibrated"], rows))
    sections.append(("Calibration", "".join(figures) + cal))

    curves = "".join(
        report.img(report.roc_pr(task, extras[task], {
            "model": preds[task], **({"oracle": oracle_preds[task]} if oracle_preds else {})}),
            f"{task} ROC and precision-recall curves") for task in ("click", "purchase"))
    sections.append(("Ranking curves", curves))

    sections.append(("Price range", report.img(report.confusion(
        model_metrics["price_range/confusion"], meta.get("price_edges")),
        "price range confusion matrix")))

    s = outlook_summary
    rows = [[name, s[name]["items"], int(s[name]["actual_units"]),
             int(round(s[name]["forecast_units"])), s[name]["wape"], s[name]["poisson_deviance"],
             s[name].get("interval_coverage", float("nan"))]
            for name in ("model", "trailing", "all_items")]
    top = [[r["rank"], r["item_id"], r["category"], r["brand"], r["price"], r["forecast"],
            f"{r['low']:g}-{r['high']:g}", r["actual_units"], r["source"]]
           for r in outlook_rows[:20]]
    slow = sorted((r for r in outlook_rows if r["outlook"] == "slow"),
                  key=lambda r: r["forecast"])
    slow_rows = [[r["item_id"], r["category"], r["forecast"], r["trailing_units"],
                  r["actual_units"]] for r in slow]
    sections.append(("Item outlook", (
        f"<p>Forecast units over the {s['horizon_days']:g} days after "
        f"the eval split starts (requested {s['requested_horizon_days']:g}), from the demand "
        f"head averaged over each item's impressions in the last {s['recent_days']:g} "
        f"day(s) before it; {s['items_with_model_forecast']:,} of {s['items']:,} items have "
        f"such impressions ({s['share_of_units_on_those_items']:.1%} of the units sold), the "
        f"others get the trailing forecast.</p>"
        + report.table(["forecast", "items", "units sold", "units forecast", "WAPE",
                        "Poisson deviance", "90 % interval coverage"], rows)
        + report.img(report.outlook(outlook_rows, s), "item outlook")
        + "<h3>Hot sellers</h3>"
        + report.table(["rank", "item", "category", "brand", "price", "forecast",
                        "90 % interval", "sold", "source"], top, numbers="{:.2f}")
        + "<h3>Slow movers (sold in the trailing week, forecast the least)</h3>"
        + report.table(["item", "category", "forecast", "sold in the trailing 7 days",
                        "sold"], slow_rows, numbers="{:.2f}"))))
    return sections
