"""A hand-written log whose labels were computed by hand (see test_labels.py)."""

import csv
import os

import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1767571200  # 2026-01-05 00:00:00 UTC, a Monday
DAY = 86400

ITEMS = [
    # item_id, title, category, brand, price
    ("A", "red running shoe", "shoes", "acme", 10.0),
    ("B", "blue running shoe", "shoes", "zoom", 20.0),
    ("C", "steel water bottle", "outdoor", "acme", 30.0),
    ("D", "trail backpack", "outdoor", "peak", 40.0),
    ("E", "gps watch", "electronics", "peak", 50.0),
]

EVENTS = [
    # event_id, user, session, timestamp, event, query, item, position, quantity
    ("e1", "u1", "s1", T0 + 0, "search", "running shoes", "", "", ""),
    ("e2", "u1", "s1", T0 + 10, "impression", "running shoes", "A", 0, ""),
    ("e3", "u1", "s1", T0 + 10, "impression", "running shoes", "B", 1, ""),
    ("e4", "u1", "s1", T0 + 20, "click", "", "A", "", ""),
    ("e5", "u1", "s1", T0 + 30, "cart", "", "A", "", ""),
    ("e6", "u1", "s1", T0 + 40, "purchase", "", "A", "", 2),
    ("e7", "u1", "s1", T0 + 50, "impression", "", "C", 0, ""),
    ("e17", "u1", "s1", T0 + 50, "click", "", "B", "", ""),
    ("e8", "u1", "s2", T0 + DAY, "impression", "shoes", "B", 0, ""),
    ("e9", "u1", "s2", T0 + DAY + 5, "click", "", "B", "", ""),
    ("e10", "u1", "s2", T0 + DAY + 10, "purchase", "", "D", "", 1),
    ("e11", "u2", "s3", T0 + 15, "impression", "acme", "A", 2, ""),
    ("e12", "u2", "s3", T0 + 100, "purchase", "", "A", "", 1),
    ("e15", "u2", "s4", T0 + 7 * DAY + 11, "purchase", "", "A", "", 1),
    ("e16", "u2", "s4", T0 + 7 * DAY + 100, "impression", "zoom", "B", 0, ""),
    ("e18", "u2", "s4", T0 + 7 * DAY + 100, "impression", "zoom", "A", 1, ""),
    ("e13", "u1", "s5", T0 + 9 * DAY, "impression", "watch", "E", 0, ""),
    ("e14", "u1", "s5", T0 + 9 * DAY + 1, "purchase", "", "E", "", 1),
]

EVENT_COLUMNS = ["event_id", "user_id", "session_id", "timestamp", "event", "query",
                 "item_id", "position", "quantity"]
ITEM_COLUMNS = ["item_id", "title", "category", "brand", "price"]


def write_csv(folder, events=EVENTS, items=ITEMS, iso_rows=()):
    """Writes the log as CSV; rows whose event_id is in `iso_rows` get ISO-8601 timestamps."""
    import datetime
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "events.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EVENT_COLUMNS)
        for row in events:
            row = list(row)
            if row[0] in iso_rows:
                row[3] = datetime.datetime.fromtimestamp(
                    row[3], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.writerow(row)
    with open(os.path.join(folder, "items.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ITEM_COLUMNS)
        w.writerows(items)
    return folder


def write_parquet(folder, events=EVENTS, items=ITEMS):
    os.makedirs(folder, exist_ok=True)
    cols = list(zip(*events))
    ev = {name: list(c) for name, c in zip(EVENT_COLUMNS, cols)}
    ev["timestamp"] = pa.array(ev["timestamp"], pa.int64())
    ev["position"] = pa.array([None if v == "" else v for v in ev["position"]], pa.int64())
    ev["quantity"] = pa.array([None if v == "" else v for v in ev["quantity"]], pa.int64())
    pq.write_table(pa.table(ev), os.path.join(folder, "events.parquet"))
    icols = list(zip(*items))
    pq.write_table(pa.table({n: list(c) for n, c in zip(ITEM_COLUMNS, icols)}),
                   os.path.join(folder, "items.parquet"))
    return folder
