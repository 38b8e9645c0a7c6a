"""The analysis of a trained multi-task model (`python -m trainers.analyze`): one pass of
predictions over the eval split, the metrics and curves from them, the item outlook, the
user profiles and segments, a page per requested user, and the report that shows them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from trainers.core import metrics as metrics_lib

# The rows of the report's main table, in this order.
HEADLINE = ("click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance")


def _predict(model, builder, config, verbose: bool):
    from trainers.core import evaluation, loop

    ds = evaluation.eval_dataset(builder, "eval", model.preprocessor, config)
    if verbose:
        print("predicting the eval split")
    return loop.predict_dataset(model, ds, progress=_progress(
        builder.info.splits["eval"].num_examples, "impression", verbose))


def _metric_rows(columns: dict) -> list[list]:
    return [[m, *(float(c.get(m, float("nan"))) for c in columns.values())]
            for m in metrics_lib.METRIC_NAMES]


def _progress(total: int, unit: str, verbose: bool):
    import keras

    if not verbose:
        return None
    bar = keras.utils.Progbar(total, unit_name=unit)
    return lambda n: bar.add(n)


def analyze(model_dir: str, output_dir: str, data_dir: str | None = None,
            tfds_dir: str | None = None, compare: dict | None = None,
            horizon_days: float = 7.0, recent_days: float = 1.0, batch_size: int = 1024,
            user_ids=(), profile_options=None, verbose: bool = True,
            outlook_forecaster: str = "item_level") -> dict:
    """Writes output_dir/index.html (and user_<id>.html per requested user), metrics.json,
    item_outlook.csv and profiles.parquet; returns the summary (the paths and the numbers).
    A user id the log does not hold is an error before any work."""
    from trainers.core import config as config_lib, evaluation, outlook, profiles, report, rundir
    from zoo.data import contract, prepare as prepare_lib

    model, label_config = rundir.load_trained(model_dir)
    if getattr(model, "backbone", None) is None:
        raise ValueError(f"{model_dir}: a {type(model).__name__} has no encoder to profile "
                         "users with; the analysis needs a neural multi-task model "
                         "(bert_mtl and its structures, dnn_mtl)")
    builder = prepare_lib.prepare(data_dir, tfds_dir, label_config)
    if "eval" not in builder.info.splits:
        raise ValueError(f"{data_dir or 'the default shop'}: no eval split to analyse "
                         f"(eval_fraction {label_config.eval_fraction})")
    meta = builder.info.metadata
    tables = contract.read_contract(meta["contract_dir"])
    known = set(tables.events["user_id"].to_numpy(zero_copy_only=False).astype(str))
    missing = [u for u in user_ids if u not in known]
    if missing:
        raise ValueError(f"--user_id {', '.join(missing)}: no such user in "
                         f"{meta['contract_dir']} ({len(known):,} users)")
    profile_options = profile_options or profiles.ProfileOptions()
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
                                                 batch_size=batch_size, tables=tables,
                                                 forecaster=outlook_forecaster)
    if verbose:
        print("user profiles and segments")
    n_users = len(known) if not 0 < profile_options.max_users < len(known) else \
        profile_options.max_users
    user_profiles, segments = profiles.build(
        model, tables, label_config, meta["price_edges"], profile_options,
        progress=_progress(n_users, "user", verbose))
    # Everything is written into a staging folder inside output_dir and moved into place
    # at the end: a failure half-way leaves output_dir as it was.
    os.makedirs(output_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".analysis-", dir=output_dir)
    try:
        outlook_path = os.path.join(stage, "item_outlook.csv")
        outlook.write_csv(rows, outlook_path)
        profiles_path = os.path.join(stage, "profiles.parquet")
        profiles.write_parquet(user_profiles, profiles_path)
        user_pages = [_user_page(model, tables, label_config, meta, u, stage, report,
                                 profiles, user_profiles) for u in user_ids]

        compare = dict(compare or {})
        columns = {"model": model_metrics}
        if oracle_metrics:
            columns["oracle"] = oracle_metrics
        for name, record in compare.items():
            columns[name] = record.get("metrics", {})
        record = {
            "model_dir": os.path.abspath(model_dir), "contract_dir": meta["contract_dir"],
            "eval_impressions": int(len(extras["click"])), "metrics": model_metrics,
            "oracle": oracle_metrics,
            "compare": {k: v.get("metrics", {}) for k, v in compare.items()},
            "calibration": run_record.get("calibration"), "item_outlook": outlook_summary,
            "segments": segments,
        }
        # Written by the daily loop (trainers.continual) for the day after the window.
        drift_report = rundir.read_json(os.path.join(model_dir, "drift.json"))
        if drift_report:
            record["drift"] = drift_report
        rundir.write_json(os.path.join(stage, "metrics.json"), record)

        sections = _sections(model_metrics, columns, preds, extras, oracle_preds, meta,
                             run_record.get("calibration"), rows, outlook_summary, report)
        sections.append(_segments_section(user_profiles, segments, report))
        if drift_report:
            sections.append(_drift_section(drift_report, report))
        if user_pages:
            sections.append(("Users", "<ul>" + "".join(
                f'<li><a href="{report.html.escape(os.path.basename(p))}">'
                f'{report.html.escape(u)}</a></li>' for u, p in zip(user_ids, user_pages))
                + "</ul>"))
        intro = (f"model_dir {os.path.abspath(model_dir)} · data {meta['contract_dir']} · "
                 f"{len(extras['click']):,} eval impressions (all of the eval split)")
        with open(os.path.join(stage, "index.html"), "w", encoding="utf-8") as f:
            f.write(report.page("ecom-zoo analysis: " + os.path.basename(
                os.path.normpath(model_dir)), sections, intro))
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    index = os.path.join(output_dir, "index.html")
    outlook_path = os.path.join(output_dir, "item_outlook.csv")
    profiles_path = os.path.join(output_dir, "profiles.parquet")
    user_pages = [os.path.join(output_dir, os.path.basename(p)) for p in user_pages]
    if verbose:
        head = "  ".join(f"{m} {model_metrics[m]:.4f}" for m in HEADLINE)
        o = outlook_summary
        print(f"{head}\nitem outlook ({o['horizon_days']:g} days), WAPE on the "
              f"{o['items_with_model_forecast']:,} items the demand head covers: item level "
              f"{o['item_level']['wape']:.3f}, demand head {o['model']['wape']:.3f}, "
              f"trailing {o['trailing']['wape']:.3f}")
    return {"index": index, "metrics": os.path.join(output_dir, "metrics.json"),
            "item_outlook": outlook_path, "profiles": profiles_path,
            "user_pages": user_pages, **record}


def _drift_section(drift_report: dict, report) -> tuple[str, str]:
    """The drift the daily loop (`trainers.continual`) measured on the day after this
    model's window: PSI per feature and the OOV shares, flags first."""
    from trainers.core import drift

    flags = drift_report.get("flags") or []
    rows = [[name, float(value), "large" if value > drift.PSI_LARGE else
             "moderate" if value > drift.PSI_MODERATE else "stable"]
            for name, value in sorted(drift_report["psi"].items())]
    oov = [[name, float(share)] for name, share in sorted(drift_report["oov_share"].items())]
    n = drift_report.get("impressions", {})
    body = (f"<p>{report.html.escape(str(drift_report.get('date', '')))}: "
            f"{n.get('day', 0):,} impressions of the day against {n.get('window', 0):,} of "
            f"the training window. PSI below {drift.PSI_MODERATE} is stable, above "
            f"{drift.PSI_LARGE} large.</p>"
            + ("<ul>" + "".join(f"<li><b>{report.html.escape(f)}</b></li>" for f in flags)
               + "</ul>" if flags else "<p>No large drift.</p>")
            + report.table(["feature", "PSI", "drift"], rows, numbers="{:.3f}")
            + report.table(["id", "share of the day's impressions unseen by the model"], oov,
                           numbers="{:.3f}"))
    return ("Drift", body)


def _segments_section(user_profiles: dict, segments: dict, report) -> tuple[str, str]:
    rows = [[s["segment"], s["users"], s["share"], s["top_categories"],
             s["price_range_model"], str(s["price_range_probs"]), s["median_events"],
             s["median_sessions"], s["purchases_per_session"], s["p_purchase_model"]]
            for s in segments["segments"]]
    sample = (f"a seeded sample of {segments['users']:,} of the log's "
              f"{segments['users_in_log']:,} users" if segments["sampled"]
              else f"all {segments['users']:,} users")
    return ("Segments", (
        f"<p>k-means over the encoder's representation of each user ({sample}; a new "
        f"session at the end of the log, averaged over {segments['items_per_category']} "
        f"representative items of each of {len(segments['categories'])} categories). "
        f"Per-user profiles are in profiles.parquet.</p>"
        + report.table(["segment", "users", "share", "top categories (log)",
                        "price range (model)", "price-range probabilities",
                        "median events", "median sessions", "purchases per session",
                        "p(purchase), model"], rows, numbers="{:.3f}")
        + report.img(report.segments_chart(user_profiles["representation"],
                                           user_profiles["segment"], segments["segments"]),
                     "segments chart")))


def _user_page(model, tables, label_config, meta, user_id, output_dir, report,
               profiles, built: dict) -> str:
    """user_<id>.html: the user's recent behaviour, profile (their row of the `built`
    profiles; profiled alone when the sample left them out) and top recommendations."""
    import re

    events = profiles.recent_events(tables, user_id)
    row = np.flatnonzero(np.asarray(built["user_id"]) == user_id)
    if len(row):
        one = {k: np.asarray(v)[row] for k, v in built.items()}
    else:
        one = profiles.build(model, tables, label_config, meta["price_edges"],
                             profiles.ProfileOptions(max_users=0, num_segments=1),
                             users=np.array([user_id]))[0]
    k = sum(1 for c in one if c.startswith("price_range_model_"))
    probs = [float(one[f"price_range_model_{i}"][0]) for i in range(k)]
    names = report.price_range_names(meta.get("price_edges"), k)
    recs = profiles.user_recommendations(model, tables, label_config, user_id)
    fields = [("events", "events"), ("sessions", "sessions"), ("active days", "active_days"),
              ("clicks", "clicks"), ("carts", "carts"), ("purchases", "purchases"),
              ("purchases per session", "purchases_per_session"),
              ("top categories (log)", "top_category_history"),
              ("top categories (model)", "model_top_categories"),
              ("top brands (log)", "top_brand_history"),
              ("median price paid", "median_price_paid"),
              ("price range paid (log)", "price_range_history"),
              ("price range (model)", "price_range_model"),
              ("p(purchase), model, mean over representative items", "p_purchase_model")]
    profile_rows = [[label, (lambda v: v.item() if hasattr(v, "item") else v)(one[key][0])]
                    for label, key in fields]
    import datetime

    def when(t):
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S")

    timeline = [[when(e["timestamp"]), e["event"], e["session_id"], e["query"], e["item_id"],
                 e["category"], e["price"]] for e in events]
    def because(events):
        return "; ".join(f"{e['event']} of {e['item_id']} ({e['category']})" for e in events)

    rec_rows = [[i + 1, recs["item_id"][i], recs["category"][i], recs["brand"][i],
                 recs["price"][i], recs["p_click"][i], recs["p_purchase"][i],
                 because(recs["because"][i])] for i in range(len(recs["item_id"]))]
    sections = [
        ("Profile", report.img(report.user_chart(events, one["top_category_history"][0],
                                                 one["model_top_categories"][0], probs, names),
                               "user profile chart")
         + report.table(["", "value"], profile_rows, numbers="{:.3f}")),
        ("Top recommendations", "<p>The whole catalogue scored by the model for a new "
         "session now (no query), ordered by p(purchase); \"because of\": the two history "
         "events whose integrated-gradients attribution raises this item's p(purchase) "
         "most beyond their mean over the ten items.</p>"
         + report.table(["rank", "item", "category", "brand", "price", "p(click)",
                         "p(purchase)", "because of"], rec_rows)),
        ("Recent behaviour", report.table(["time (UTC)", "event", "session", "query", "item",
                                           "category", "price"], timeline, numbers="{:.2f}")),
    ]
    path = os.path.join(output_dir, "user_" + re.sub(r"[^A-Za-z0-9_.-]", "_", user_id)
                        + ".html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(report.page(f"user {user_id}", sections,
                            '<a href="index.html">back to the report</a>'))
    os.replace(path + ".tmp", path)
    return path


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
            for name in ("model", "trailing", "item_level", "all_items")]
    top = [[r["rank"], r["item_id"], r["category"], r["brand"], r["price"], r["forecast"],
            f"{r['low']:g}-{r['high']:g}", r["actual_units"], r["source"]]
           for r in outlook_rows[:20]]
    slow = sorted((r for r in outlook_rows if r["outlook"] == "slow"),
                  key=lambda r: r["forecast"])
    slow_rows = [[r["item_id"], r["category"], r["forecast"], r["trailing_units"],
                  r["actual_units"]] for r in slow]
    sections.append(("Item outlook", (
        f"<p>Forecast units over the {s['horizon_days']:g} days after "
        f"the eval split starts (requested {s['requested_horizon_days']:g}). Ranked by "
        f"the <b>{s['forecaster']}</b> forecast. item_level: a LightGBM Poisson forecaster "
        f"of the items' own series (trailing units, carts, clicks, impressions), fitted on "
        f"{s['item_level_fit']['origins']} earlier origins; model: the demand head averaged "
        f"over each item's impressions in the last {s['recent_days']:g} day(s) before the "
        f"origin, which {s['items_with_model_forecast']:,} of {s['items']:,} items have "
        f"({s['share_of_units_on_those_items']:.1%} of the units sold); the first three "
        f"rows are scored on those items, all_items on the whole catalogue with the ranked "
        f"forecast.</p>"
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
