"""Where a model's click/purchase AUC falls short of the simulator's oracle.

    python -m trainers.predict --model_dir M --data_dir D --split eval --output preds.csv
    python benchmarks/oracle_gap.py --data_dir D --predictions preds.csv [--predictions P2 ...]

The oracle's p_click is conditional on the simulator's whole hidden state at the impression,
including the session's intent category, which no log shows (`zoo/data/simulate.py`).
This splits the eval impressions by what the log does reveal about that intent:
search pages (the query names the intended category 93 % of the time) against feed pages
(empty query: the page's category is the recommender's, which may or may not be the
intent), and the session's first page against later ones (earlier pages' clicks are in the
history). It also reports the AUC within pages (GAUC grouped by page: every item of a page
shares the user, the intent and the page's category, so what is left is the ranking of the
page's items) against the AUC across pages.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
import pyarrow.compute as pc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainers.core.metrics import auc, gauc  # noqa: E402
from trainers.core.evaluation import oracle_predictions, read_oracle  # noqa: E402
from zoo.data import contract, labels as labels_lib  # noqa: E402

TASKS = ("click", "purchase")


def _read_predictions(path: str):
    """(event ids, {task: scores}) of a trainers.predict CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("event_id", *TASKS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: lacks column(s) {missing}; expected the CSV of "
                             "python -m trainers.predict")
        rows = list(reader)
    try:
        scores = {k: np.array([float(r[k]) for r in rows]) for k in TASKS}
    except ValueError as e:
        raise ValueError(f"{path}: a click/purchase value is not a number ({e})") from None
    return np.array([r["event_id"] for r in rows], dtype=object), scores


def gap_table(data_dir: str, prediction_paths: list) -> str:
    """The printable tables (one per task): AUC of the oracle and of each prediction file,
    per segment, and their ratio."""
    tables = contract.read_contract(data_dir)
    oracle = read_oracle(data_dir)
    if oracle is None:
        raise ValueError(f"{data_dir}: no oracle.parquet / oracle.csv; expected a folder "
                         "written by python -m zoo.data.simulate")
    prep = labels_lib.Prepared(tables, labels_lib.LabelConfig())
    lab = labels_lib.compute_labels(tables, prep.config, prepared=prep)
    where = {e: i for i, e in enumerate(lab["event_id"])}
    runs = []
    for path in prediction_paths:
        ids, scores = _read_predictions(path)
        unknown = [e for e in ids if e not in where]
        if unknown:
            raise ValueError(f"{path}: event_id {unknown[0]!r} is not an impression of "
                             f"{tables.events_path}; predictions of another log?")
        if runs and not np.array_equal(ids, runs[0][1]):
            raise ValueError(f"{path}: lists other impressions than {runs[0][0]}; predict "
                             "the same --split of the same folder")
        runs.append((os.path.basename(path), ids, scores))
    ids = runs[0][1]
    sel = np.array([where[e] for e in ids])
    orc = oracle_predictions(oracle, ids, prep.config.num_price_ranges)
    if orc is None:
        raise ValueError(f"{data_dir}: the oracle table does not cover these impressions")

    # A page is one (session, timestamp): a page's impressions share the timestamp.
    rows = lab["row"][sel]
    session, ts = prep.session[rows], prep.ts[rows]
    page = np.unique(session.astype(np.int64) * (1 << 34) + ts, return_inverse=True)[1]
    first_ts = np.full(session.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, session, ts)  # over these impressions: a split is whole days
    first = ts == first_ts[session]
    query = tables.events["query"].take(rows)
    search = pc.fill_null(pc.not_equal(query, ""), False).to_numpy(zero_copy_only=False)
    segments = {
        "all": np.ones(len(ids), bool),
        "search pages": search,
        "feed pages": ~search,
        "first page of session": first,
        "later pages": ~first,
        "feed, first page": ~search & first,
    }
    out = []
    for task in TASKS:
        y = lab[task][sel]
        out.append(f"\n{task} AUC ({len(ids):,} impressions)")
        out.append(f"{'segment':24s} {'share':>6s} {'oracle':>7s}" + "".join(
            f" {name[:14]:>14s} {'ratio':>6s}" for name, _, _ in runs))
        def row(name, share, score):  # score(scores) -> AUC of one set of scores
            o = score(orc[task])
            return f"{name:24s} {share:6s} {o:7.4f}" + "".join(
                f" {a:14.4f} {a / o:6.3f}" for a in (score(sc[task]) for _, _, sc in runs))

        for seg, m in segments.items():
            out.append(row(seg, f"{m.mean():6.2f}", lambda s, m=m: auc(y[m], s[m])))
        out.append(row("within pages (GAUC)", "", lambda s: gauc(y, s, page)))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the simulator's contract folder")
    p.add_argument("--predictions", required=True, action="append",
                   help="trainers.predict CSV (repeat to compare models)")
    args = p.parse_args()
    try:
        print(gap_table(args.data_dir, args.predictions))
    except (contract.ContractError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
