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
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainers.metrics import auc, gauc  # noqa: E402
from zoo.data import contract, labels as labels_lib  # noqa: E402


def _read_predictions(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = np.array([r["event_id"] for r in rows])
    return ids, {k: np.array([float(r[k]) for r in rows]) for k in ("click", "purchase")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--predictions", required=True, action="append",
                   help="trainers.predict CSV (repeat to compare models)")
    args = p.parse_args()

    ev = pq.read_table(os.path.join(args.data_dir, "events.parquet"),
                       columns=["event_id", "session_id", "timestamp", "event", "query"])
    imp = ev.filter(pc.equal(ev["event"], "impression"))
    eid = imp["event_id"].to_numpy(zero_copy_only=False)
    session = imp["session_id"].to_numpy(zero_copy_only=False)
    ts = imp["timestamp"].to_numpy()
    query = imp["query"].fill_null("").to_numpy(zero_copy_only=False)
    # A page is (session, timestamp): a page's impressions share the timestamp.
    _, s_code = np.unique(session, return_inverse=True)
    page_key = s_code.astype(np.int64) * (1 << 34) + ts
    _, page = np.unique(page_key, return_inverse=True)
    first_ts = np.full(s_code.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, s_code, ts)
    first_page = ts == first_ts[s_code]

    # Labels exactly as the trainer computes them.
    lab = labels_lib.compute_labels(contract.read_contract(args.data_dir),
                                    labels_lib.LabelConfig())
    oracle = pq.read_table(os.path.join(args.data_dir, "oracle.parquet"))
    runs = [(os.path.basename(path), *_read_predictions(path)) for path in args.predictions]
    ids = runs[0][1]

    def index(of, keys):
        where = {e: i for i, e in enumerate(of)}
        return np.array([where[e] for e in keys])

    sel = index(eid, ids)
    osel = index(oracle["event_id"].to_numpy(zero_copy_only=False), ids)
    li = index(lab["event_id"], ids)
    labels = {task: lab[task][li] for task in ("click", "purchase")}
    orc = {"click": oracle["p_click"].to_numpy()[osel],
           "purchase": oracle["p_purchase"].to_numpy()[osel]}
    search = query[sel] != ""
    first = first_page[sel]
    pages = page[sel]
    segments = {
        "all": np.ones(len(ids), bool),
        "search pages": search,
        "feed pages": ~search,
        "first page of session": first,
        "later pages": ~first,
        "feed, first page": (~search) & first,
    }
    for task in ("click", "purchase"):
        print(f"\n{task} AUC ({len(ids):,} eval impressions)")
        head = f"{'segment':24s} {'share':>6s} {'oracle':>7s}"
        for name, _, _ in runs:
            head += f" {name[:14]:>14s} {'ratio':>6s}"
        print(head)
        for seg, m in segments.items():
            o = auc(labels[task][m], orc[task][m])
            line = f"{seg:24s} {m.mean():6.2f} {o:7.4f}"
            for _, rid, preds in runs:
                assert (rid == ids).all(), "prediction files must list the same impressions"
                a = auc(labels[task][m], preds[task][m])
                line += f" {a:14.4f} {a / o:6.3f}"
            print(line)
        o = gauc(labels[task], orc[task], pages)
        line = f"{'within pages (GAUC)':24s} {'':6s} {o:7.4f}"
        for _, _, preds in runs:
            a = gauc(labels[task], preds[task], pages)
            line += f" {a:14.4f} {a / o:6.3f}"
        print(line)


if __name__ == "__main__":
    main()
