"""The daily loop: a log replayed at the cadence of production.

It trains, exports and promotes, so it sits above `export/` beside the entry points, not in
the run library (`trainers/core` never imports `export`).

For each day d: the last `window_days` days before d are the training window, day d is the
holdout. The loop's model is trained on the window (warm-started from the model being served,
or from scratch), exported as a new version, and evaluated beside the version being served on
d's holdout; it is promoted (the `export.registry` label the server follows) only if it passes
the validation gate, TFX Evaluator's "blessing": no main metric worse than the served
version's by more than its tolerance. A version that fails is kept, unpromoted, with the
reason. Baseline arms (a model trained once and frozen, daily from-scratch training) can run
beside it on the same windows and rows, for the comparison the loop exists to make.

Each day's window is written as a contract folder: the events of a look-back, the W training
days and day d, and the whole items table. It is prepared with one eval day (`eval_fraction =
1 / (look-back + W + 1)`), so its eval split is exactly day d and every arm and the served
version are measured on the same impressions; the look-back days are trained with
`--train_start`, i.e. not trained on, but their events give the first training days' users
their histories and features, as the whole log would. No training label is made of the
holdout day's events (the preparation cuts them at the split). The holdout day's own labels
are what is known at its end: click and purchase (they close within the session), the price
range of a next purchase made that day; its demand labels need the days after it, so demand
is not gated (its deviance is NaN there).

A warm-started day trains on the newest `warm_days` days of the window only (yesterday's model
has seen the rest), `warm_epochs` passes at `warm_learning_rate`: the fine-tuning that makes
a daily warm start cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import os
import time

import numpy as np

from trainers.core import config as config_lib, rundir
from zoo.data import contract

DAY = contract.SECONDS_PER_DAY
ARMS = ("warm", "scratch", "frozen")
# The gate: metric -> the most the candidate may lose against the served version.
DEFAULT_GATE = {"click/auc": 0.005, "purchase/auc": 0.005, "price_range/accuracy": 0.02}
LOWER_IS_BETTER = {"demand/poisson_deviance"}
CSV_COLUMNS = ("date", "arm", "trained", "parent", "steps", "train_seconds",
               "click/auc", "purchase/auc", "price_range/accuracy", "demand/poisson_deviance",
               "oracle_click/auc", "oracle_purchase/auc", "served_version",
               "served_click/auc", "served_purchase/auc", "served_price_range/accuracy",
               "served_demand/poisson_deviance", "version", "blessed", "promoted", "reason",
               "max_psi", "oov_item_share", "drift_flags", "model_dir", "same_as")
# How `read_rows` types the CSV's cells back (the rest stay strings; metrics go to
# row["metrics"] and row["served"]).
INT_COLUMNS = ("steps", "served_version", "version")
BOOL_COLUMNS = ("trained", "blessed", "promoted")
FLOAT_COLUMNS = ("train_seconds", "oracle_click/auc", "oracle_purchase/auc", "max_psi",
                 "oov_item_share")
METRIC_COLUMNS = ("click/auc", "purchase/auc", "price_range/accuracy",
                  "demand/poisson_deviance")


@dataclasses.dataclass
class Options:
    start_day: str                  # YYYY-MM-DD, the first holdout day
    days: int
    window_days: int
    export_base: str
    name: str
    output_dir: str
    label: str = "stable"
    mode: str = "warm"              # the loop's own arm: warm or scratch
    baselines: tuple = ()           # arms measured beside it (scratch, frozen, warm)
    warm_days: int = 2              # a warm-started day trains on the window's newest days
    warm_epochs: float = 1.0        # passes over them
    warm_learning_rate: float = 5e-4
    gate: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_GATE))
    keep_windows: bool = False      # keep each day's window folder (else deleted after use)
    lookback_days: int = 7          # context days before each window (histories, features)
    resume: bool = False            # go on after the days OUTPUT_DIR/days.csv holds


def parse_day(text: str, flag: str = "--start_day") -> int:
    return config_lib.day_start(text, flag)


def day_name(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d")


def parse_gate(text: str) -> dict:
    """'click/auc=0.005,purchase/auc=0.005' -> {metric: tolerance}; metrics checked."""
    from trainers.core.metrics import MAIN_METRICS

    gate = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in MAIN_METRICS:
            raise ValueError(f"--gate: {part!r} is not metric=tolerance with a metric of "
                             f"{', '.join(MAIN_METRICS)}")
        try:
            gate[name] = float(value)
        except ValueError:
            raise ValueError(f"--gate: tolerance of {name} is {value!r}, expected a number "
                             ">= 0") from None
        if not (gate[name] >= 0 and np.isfinite(gate[name])):
            raise ValueError(f"--gate: tolerance of {name} must be a number >= 0")
    if not gate:
        raise ValueError("--gate: name at least one metric=tolerance")
    return gate


def check(options: Options, config: config_lib.TrainConfig) -> None:
    """Every check that needs no data, before anything is created."""
    from export.registry import check_label, check_name

    # --evict_after_days and --warm_start_optimizer apply to the warm-started days only.
    config_lib.check_evict_after_days(config.evict_after_days)
    for flag in ("evict_after_days", "warm_start_optimizer"):
        if getattr(config, flag) and "warm" not in (options.mode, *options.baselines):
            raise ValueError(f"--{flag}: no arm is warm-started (--mode scratch, no warm "
                             "baseline)")
    config = dataclasses.replace(config, evict_after_days=0.0, warm_start_optimizer=False)
    config_lib.validate(config)
    if options.days < 1:
        raise ValueError(f"--days must be >= 1, got {options.days}")
    if options.window_days < 1:
        raise ValueError(f"--window_days must be >= 1, got {options.window_days}")
    if options.lookback_days < 0:
        raise ValueError(f"--lookback_days must be >= 0, got {options.lookback_days}")
    if config.train_start:
        raise ValueError("--train_start: set by the loop for each day; leave it out")
    if options.mode not in ("warm", "scratch"):
        raise ValueError(f"--mode must be warm or scratch, got {options.mode!r}")
    unknown = sorted(set(options.baselines) - set(ARMS))
    if (unknown or options.mode in options.baselines
            or len(set(options.baselines)) != len(options.baselines)):
        raise ValueError(f"--baselines: expected some of {', '.join(a for a in ARMS if a != options.mode)}"
                         f", got {', '.join(options.baselines)}")
    if not (options.warm_epochs > 0 and np.isfinite(options.warm_epochs)):
        raise ValueError(f"--warm_epochs must be > 0, got {options.warm_epochs}")
    if not (options.warm_learning_rate > 0 and np.isfinite(options.warm_learning_rate)):
        raise ValueError(f"--warm_learning_rate must be > 0, got {options.warm_learning_rate}")
    if not 1 <= options.warm_days <= options.window_days:
        raise ValueError(f"--warm_days must be in [1, --window_days {options.window_days}], "
                         f"got {options.warm_days}")
    if config.steps:
        raise ValueError("--steps: the loop sets each day's length from --epochs (from "
                         "scratch) and --warm_epochs (warm); leave --steps at 0")
    parse_day(options.start_day)
    check_name(options.name)
    check_label(options.label)
    for flag, path in (("--export_base", options.export_base),
                       ("--output_dir", options.output_dir)):
        config_lib.check_writable_dir(path, flag)
    if config.data_dir is None:
        raise ValueError("--data_dir: name the log to replay (a contract folder)")
    # What every day's run will be checked against, now: the family trains from a day
    # (the multi-task rankers) and, warm-started, can grow its vocabulary.
    import zoo
    from trainers.core import train_lib
    from trainers.core.multitask_task import MultitaskTask

    train_lib.check(MultitaskTask(), dataclasses.replace(config, train_start=options.start_day,
                                                         export_base=None))
    if zoo.spec(config.model).task == "retrieval" or zoo.spec(config.model).trainer != "keras":
        raise ValueError(f"--model {config.model}: the daily loop trains the multi-task "
                         "rankers (bert_mtl and its structures, dnn_mtl)")
    if "warm" in (options.mode, *options.baselines) and zoo.spec(
            config.model).grow_vocabulary is None:
        raise ValueError(f"--model {config.model} cannot be warm-started (its vocabulary "
                         "cannot grow); use --mode scratch")
    if not options.resume and os.path.isdir(os.path.join(options.export_base, options.name)):
        raise ValueError(f"--name {options.name}: {options.export_base} already holds a "
                         f"model {options.name}; the loop starts a model line of its own "
                         "(name another, or another --export_base, or --resume it)")


def run(options: Options, config: config_lib.TrainConfig, progress=print) -> list[dict]:
    """Replays the days; returns the rows written to OUTPUT_DIR/days.csv."""
    check(options, config)
    tables = contract.read_contract(config.data_dir)
    first = parse_day(options.start_day)
    ts = tables.events["timestamp"]
    log_first, log_last = int(ts.min()) // DAY * DAY, int(ts.max()) // DAY * DAY
    span = options.window_days + options.lookback_days
    if first - span * DAY < log_first:
        raise ValueError(f"--start_day {options.start_day}: its {options.window_days}-day "
                         f"window and {options.lookback_days}-day look-back start before "
                         f"the log's first day {day_name(log_first)}")
    last = first + (options.days - 1) * DAY
    if last > log_last:
        raise ValueError(f"--start_day {options.start_day} --days {options.days}: the last "
                         f"day {day_name(last)} is after the log's last day "
                         f"{day_name(log_last)}")
    imp = tables.events["event_type"] == contract.EVENT_INDEX["impression"]
    have = set((ts[imp] // DAY * DAY).tolist())
    empty = [day_name(first + i * DAY) for i in range(options.days)
             if first + i * DAY not in have]
    if empty:
        raise ValueError(f"{config.data_dir}: no impressions on {', '.join(empty[:5])}"
                         f"{' ...' if len(empty) > 5 else ''}; every replayed day needs "
                         "impressions to be measured on")
    os.makedirs(options.output_dir, exist_ok=True)
    os.makedirs(options.export_base, exist_ok=True)
    oracle = _oracle(config.data_dir)
    label_config = dataclasses.replace(config.label_config,
                                       eval_fraction=1.0 / (span + 1))
    config = dataclasses.replace(config, label_config=label_config, verbose=False,
                                 tfds_dir=config.tfds_dir
                                 or os.path.join(options.output_dir, "tfds"))
    arms = (options.mode, *options.baselines)
    # arm -> (its latest model_dir, the day that model was trained for: it has seen the
    # days before it), or None before the first day.
    state = {arm: None for arm in arms}
    rows, done = [], 0
    if options.resume:
        rows, state, done = resume_state(options, arms)
        progress(f"resuming after {done} day(s) ({rows[-1]['date']}); "
                 f"{max(options.days - done, 0)} to go")
    for i in range(done, options.days):
        day = first + i * DAY
        rows += _one_day(options, config, tables, day, arms, state, oracle, progress)
        write_outputs(rows, options.output_dir)
    return rows


def resume_state(options: Options, arms: tuple) -> tuple[list, dict, int]:
    """(rows, state per arm, days done) of an interrupted loop, from OUTPUT_DIR/days.csv
    (written after each whole day) and the export registry: the loop's arm goes on from
    the version its label serves, `frozen` from the first day's model, the others from
    their newest. A day cut off half-way is redone (a version it exported stays there,
    unpromoted)."""
    from export import registry

    path = os.path.join(options.output_dir, "days.csv")
    if not os.path.exists(path):
        raise ValueError(f"--resume: {path} does not exist; nothing to resume (leave "
                         "--resume out to start)")
    rows = read_rows(path)
    dates = list(dict.fromkeys(r["date"] for r in rows))
    first = parse_day(options.start_day)
    if not dates or dates != [day_name(first + i * DAY) for i in range(len(dates))]:
        raise ValueError(f"--resume: {path} holds the days {', '.join(dates[:3])}...; "
                         f"expected consecutive days from --start_day {options.start_day}")
    if sorted(set(r["arm"] for r in rows)) != sorted(arms):
        raise ValueError(f"--resume: {path} holds the arms "
                         f"{sorted(set(r['arm'] for r in rows))}, this run has {sorted(arms)}"
                         " (--mode and --baselines must be the interrupted run's)")

    def model_dir_of(row):
        if row.get("model_dir"):
            return row["model_dir"]
        for arm in (row["arm"], options.mode):  # a CSV written before the column existed
            folder = os.path.join(options.output_dir, "runs", arm, row["date"])
            if os.path.isdir(folder):
                return folder
        raise ValueError(f"--resume: no model folder of {row['arm']} for {row['date']}")

    state = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if arm == options.mode:
            served = registry.labels(options.export_base, options.name).get(options.label)
            row = next((r for r in mine if r.get("version") == served), None)
            if row is None:
                raise ValueError(f"--resume: {options.export_base}/{options.name} serves "
                                 f"version {served} under {options.label!r}, which {path} "
                                 "does not hold")
            state[arm] = (registry.read_manifest(options.export_base, options.name,
                                                 served)["model_dir"], parse_day(row["date"]))
        else:
            row = mine[0] if arm == "frozen" else mine[-1]
            state[arm] = (model_dir_of(row), parse_day(row["date"]))
    return rows, state, len(dates)


def read_rows(path: str) -> list[dict]:
    """days.csv back into the rows `write_outputs` wrote (typed, metrics nested)."""
    import csv

    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for cells in csv.DictReader(f):
            row = {"metrics": {}}
            for name, text in cells.items():
                if text in ("", None):
                    continue
                if name in METRIC_COLUMNS:
                    row["metrics"][name] = float(text)
                elif name.startswith("served_") and name[len("served_"):] in METRIC_COLUMNS:
                    row.setdefault("served", {})[name[len("served_"):]] = float(text)
                elif name in INT_COLUMNS:
                    row[name] = int(text)
                elif name in BOOL_COLUMNS:
                    row[name] = text == "True"
                elif name in FLOAT_COLUMNS:
                    row[name] = float(text)
                else:
                    row[name] = text
            rows.append(row)
    return rows


def _one_day(options, config, tables, day, arms, state, oracle, progress) -> list[dict]:
    name = day_name(day)
    window = os.path.join(options.output_dir, "windows", name)
    start = day - options.window_days * DAY
    write_window(tables, start - options.lookback_days * DAY, day + DAY, window)
    try:
        rows = _train_and_judge(options, config, tables, day, start, window, arms, state,
                                oracle)
    finally:
        if not options.keep_windows:
            import shutil
            shutil.rmtree(window, ignore_errors=True)
    progress(_progress_line(rows))
    return rows


def _train_and_judge(options, config, tables, day, start, window, arms, state,
                     oracle) -> list[dict]:
    import keras
    from export import registry, saved_model
    from trainers.core import drift, train_lib
    from zoo.data import prepare as prepare_lib

    name = day_name(day)
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS' "Downloading and preparing"
        builder = prepare_lib.prepare(window, config.tfds_dir, config.label_config)
    if "eval" not in builder.info.splits:
        raise ValueError(f"{name}: the log has no impressions on that day")
    cut = int(builder.info.metadata["eval_start_timestamp"])
    assert cut == day, (name, cut)  # run() checked that the day has impressions
    rows, runs = [], {}     # runs: (parent, epochs) -> the row of the run trained today
    for arm in arms:
        keras.backend.clear_session()
        row = {"date": name, "arm": arm}
        parent, parent_day = state[arm] or (None, None)
        warm = arm == "warm" and parent is not None
        same = runs.get((parent if warm else None, options.warm_epochs if warm
                         else config.epochs))
        if arm == "frozen" and parent is not None:
            model_dir, row["trained"] = parent, False
            row["metrics"], _ = evaluate(parent, builder, config)
        elif same is not None and arm != options.mode:
            # The same run as another arm's today (every arm's first day): not trained twice.
            model_dir = same["model_dir"]
            row.update({k: same[k] for k in ("trained", "parent", "steps", "train_seconds",
                                            "metrics", "model_dir")}, same_as=same["arm"])
        else:
            model_dir = os.path.join(options.output_dir, "runs", arm, name)
            # Warm: the newest warm_days, and every day since the parent's (after days
            # the gate rejected, the served parent has not seen them), within the window.
            first = (max(start, min(day - options.warm_days * DAY, parent_day)) if warm
                     else start)
            run_config = dataclasses.replace(
                config, data_dir=window, model_dir=model_dir, train_start=day_name(first),
                warm_start_from=parent if warm else None,
                evict_after_days=config.evict_after_days if warm else 0.0,
                warm_start_optimizer=config.warm_start_optimizer and warm,
                epochs=options.warm_epochs if warm else config.epochs,
                learning_rate=options.warm_learning_rate if warm else config.learning_rate,
                export_base=None)
            t0 = time.time()
            result = train_lib.train(run_config)
            row.update(trained=True, parent=parent if warm else "", steps=result["step"],
                       train_seconds=round(result["train_seconds"], 1),
                       wall_seconds=round(time.time() - t0, 1), metrics=result["metrics"])
            runs[(parent if warm else None, run_config.epochs)] = dict(row, model_dir=model_dir)
        if arm == options.mode:
            # Tomorrow warm-starts from what serves: a rejected version is not built on.
            state[arm] = _gate(options, config, builder, row, model_dir, day, state[arm],
                               registry, saved_model)
        elif arm != "frozen" or parent is None:
            state[arm] = (model_dir, day)
        row["model_dir"] = model_dir
        if oracle is not None:
            row.update(_oracle_aucs(oracle, builder, config))
        rows.append(row)
    # Drift of the day against the training window, seen by the model trained on that
    # window (its vocabulary: the ids the window holds; its predictions on both).
    mine = next(r for r in rows if r["arm"] == options.mode)
    report = _drift_report(builder, tables, start, day, options.lookback_days, config,
                           mine["model_dir"], drift)
    rundir.write_json(os.path.join(options.output_dir, "drift", f"{name}.json"), report)
    rundir.write_json(os.path.join(mine["model_dir"], "drift.json"), report)
    for row in rows:
        row["max_psi"] = max(report["psi"].values())
        row["oov_item_share"] = report["oov_share"].get("item_id", float("nan"))
        row["drift_flags"] = "; ".join(report["flags"])
    return rows


def _gate(options, config, builder, row, model_dir, day, serving, registry,
          saved_model) -> tuple:
    """Exports the loop's candidate, compares it with the served version on the day's
    holdout and promotes it if it passes; returns (model_dir, day) of what serves
    tomorrow. `serving`: that pair for the version serving now (None: none yet)."""
    row["model_dir"] = model_dir
    export_dir = saved_model.export(model_dir, options.export_base, options.name)
    row["version"] = version = int(os.path.basename(export_dir))
    served = registry.labels(options.export_base, options.name).get(options.label)
    if served is None:
        row.update(blessed=True, reason="no version served yet")
    else:
        served_dir = registry.read_manifest(options.export_base, options.name,
                                            served)["model_dir"]
        row["served_version"], row["served_dir"] = served, served_dir
        row["served"], _ = evaluate(served_dir, builder, config)
        failures = gate_failures(row["metrics"], row["served"], options.gate)
        row["blessed"] = not failures
        row["reason"] = "; ".join(failures) or "passed the gate"
    if row["blessed"]:
        registry.promote(options.export_base, options.name, version, options.label)
        row["promoted"] = True
        return model_dir, day
    row["promoted"] = False
    return serving


def gate_failures(candidate: dict, served: dict, gate: dict) -> list[str]:
    """The gate's verdict: one line per main metric the candidate loses by more than its
    tolerance against the served version on the same rows (empty: blessed). A metric the
    candidate cannot compute (NaN) fails; one the served version lacks is not compared."""
    failures = []
    for metric, tolerance in gate.items():
        new, old = float(candidate.get(metric, np.nan)), float(served.get(metric, np.nan))
        if np.isnan(old):
            continue
        loss = (new - old) if metric in LOWER_IS_BETTER else (old - new)
        if np.isnan(new) or loss > tolerance:
            failures.append(f"{metric} {new:.4f} vs served {old:.4f} (tolerance {tolerance})")
    return failures


def evaluate(model_dir: str, builder, config):
    """(main metrics, (predictions, extras)) of a finished run on the window's holdout."""
    from trainers.core import evaluation, loop

    model, _ = rundir.load_trained(model_dir)
    ds = evaluation.eval_dataset(builder, "eval", model.preprocessor, config)
    preds, extras = loop.predict_dataset(model, ds)
    metrics, _, _ = evaluation.metrics_table(preds, extras, builder.info.metadata, config)
    return metrics, (preds, extras)


def write_window(tables, start: int, end: int, folder: str) -> str:
    """The events in [start, end) and the whole items table as a contract folder (Parquet),
    written into a temporary sibling and renamed into place."""
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    ev = _window_tables(tables, start, end).events
    if not len(ev["timestamp"]):
        raise ValueError(f"the log has no events between {day_name(start)} and "
                         f"{day_name(end - 1)}")
    events = pa.table({
        **{c: ev[c] for c in ("event_id", "user_id", "session_id")},
        "timestamp": ev["timestamp"], "event": ev["event"], "query": ev["query"],
        "item_id": ev["item_id"], "position": ev["position"], "quantity": ev["quantity"]})
    items = pa.table({c: tables.items[c] for c in ("item_id", "title", "category", "brand",
                                                   "price")})
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".window-", dir=parent)
    try:
        pq.write_table(events, os.path.join(tmp, "events.parquet"))
        pq.write_table(items, os.path.join(tmp, "items.parquet"))
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _oracle(data_dir: str):
    """event_id -> (p_click, p_purchase) of the simulator's oracle, if the log has one (both
    are exact and do not depend on the label settings, so they hold on every window)."""
    from trainers.core import evaluation

    table = evaluation.read_oracle(contract.local_path(data_dir))
    if table is None:
        return None
    ids = table.column("event_id").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids)
    return (ids[order], table.column("p_click").to_numpy()[order],
            table.column("p_purchase").to_numpy()[order])


def _oracle_aucs(oracle, builder, config) -> dict:
    from sklearn.metrics import roc_auc_score
    from zoo.data import pipeline

    ids, p_click, p_purchase = oracle
    event_ids, labels = [], {"click": [], "purchase": []}
    for batch in pipeline.make_dataset(pipeline.split_files(builder, "eval"),
                                       batch_size=4096,
                                       history_length=config.label_config.history_length):
        event_ids.append(batch["event_id"].numpy().astype(str))
        for task in labels:
            labels[task].append(batch[task].numpy())
    event_ids = np.concatenate(event_ids)
    at = np.clip(np.searchsorted(ids, event_ids), 0, len(ids) - 1)
    if not (ids[at] == event_ids).all():
        return {}
    out = {}
    for task, p in (("click", p_click), ("purchase", p_purchase)):
        y = np.concatenate(labels[task]).ravel() > 0
        if 0 < y.sum() < len(y):
            out[f"oracle_{task}/auc"] = float(roc_auc_score(y, p[at]))
    return out


def _drift_report(builder, tables, start, day, lookback_days, config, model_dir,
                  drift) -> dict:
    """The day against its training window [start, day), with the serving model's
    vocabulary and predictions (histories counted from the look-back on)."""
    from trainers.core import evaluation, loop

    window = _window_tables(tables, start - lookback_days * DAY, day + DAY)
    features = drift.impression_features(window, config.label_config.history_length)
    keep = features["timestamp"] >= start
    features = {k: v[keep] for k, v in features.items()}
    model, _ = rundir.load_trained(model_dir)
    predictions = {}
    for split, fraction, time_range in (("train", 0.1, (start, None)), ("eval", 1.0, None)):
        ds = evaluation.eval_dataset(builder, split, model.preprocessor, config,
                                     keep_fraction=fraction, time_range=time_range)
        preds, _ = loop.predict_dataset(model, ds)
        predictions["window" if split == "train" else "day"] = preds
    report = drift.report(features, day, rundir.read_vocabulary(model_dir), predictions)
    report.update(date=day_name(day), model_dir=model_dir)
    return report


def _window_tables(tables, start, end):
    """The tables with the events in [start, end) only."""
    ev = tables.events
    rows = np.flatnonzero((ev["timestamp"] >= start) & (ev["timestamp"] < end))
    import pyarrow as pa

    take = pa.array(rows)
    events = {k: (v.take(take) if isinstance(v, (pa.Array, pa.ChunkedArray)) else v[rows])
              for k, v in ev.items()}
    return contract.Tables(events=events, items=tables.items, events_path=tables.events_path,
                           items_path=tables.items_path)


def _progress_line(rows) -> str:
    parts = []
    for r in rows:
        m = r["metrics"]
        text = (f"{r['arm']} click {m.get('click/auc', np.nan):.4f} purchase "
                f"{m.get('purchase/auc', np.nan):.4f}"
                + (f" ({r['train_seconds']:.0f}s)" if r.get("trained") else ""))
        if "blessed" in r:
            text += (f" v{r['version']} " + ("promoted" if r["promoted"] else
                                             f"NOT promoted: {r['reason']}"))
        parts.append(text)
    flags = rows[0].get("drift_flags")
    return f"{rows[0]['date']}: " + " | ".join(parts) + (f" [drift: {flags}]" if flags else "")


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k in CSV_COLUMNS}
    for metric in METRIC_COLUMNS:
        out[metric] = row["metrics"].get(metric)
        if "served" in row:
            out[f"served_{metric}"] = row["served"].get(metric)
    return out


def write_outputs(rows: list[dict], output_dir: str) -> None:
    """days.csv (one row per day and arm) and days.png, rewritten after every day."""
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.6g}"
        return str(v)

    rundir.write_csv(os.path.join(output_dir, "days.csv"), list(CSV_COLUMNS),
                     ([cell(_flat(r).get(c)) for c in CSV_COLUMNS] for r in rows))
    plot(rows, os.path.join(output_dir, "days.png"))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes[:2], ("click/auc", "purchase/auc")):
        for arm in arms:
            mine = [r for r in rows if r["arm"] == arm]
            ax.plot([r["date"][5:] for r in mine], [r["metrics"].get(metric) for r in mine],
                    marker="o", ms=3, label=arm)
        oracle = [r for r in rows if r["arm"] == arms[0] and f"oracle_{metric}" in r]
        if oracle:
            ax.plot([r["date"][5:] for r in oracle], [r[f"oracle_{metric}"] for r in oracle],
                    "k--", lw=1, label="oracle")
        rejected = [r for r in rows if r.get("blessed") is False]
        if rejected:
            ax.scatter([r["date"][5:] for r in rejected],
                       [r["metrics"].get(metric) for r in rejected], marker="x", s=60,
                       c="red", zorder=5, label="rejected by the gate")
        ax.set_title(f"{metric} on the next day")
        ax.legend(fontsize=8)
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm and r.get("trained")]
        axes[2].plot([r["date"][5:] for r in mine], [r["train_seconds"] for r in mine],
                     marker="o", ms=3, label=arm)
    axes[2].set_title("training seconds per day")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
