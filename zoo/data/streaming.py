"""Examples of a log larger than memory: prepared by user buckets, memory bounded by a bucket.

`examples.ExampleSource` holds the whole log's columns, its total order and every label at
once (about 0.65 GiB per million events). Windows in time are not enough to cut that: the
histories, the user's counts with the candidate's item, category and brand, the price
labels and the pretext's next event reach back (or ahead) however far the user's own
events go. They never reach *other* users, though, so a bucket that holds every event of
its users computes them exactly with the in-memory code. What does cross users is small
and item- or shop-level, and is computed beside:

1. `scan`: the events are read in record batches (one batch held at a time), validated
   batch by batch (errors name the file and its row), given their row in the whole log and
   their price-label draw (`labels.PRICE_LABEL_SEED`'s stream at that row), and written to
   bucket files: by user (everything), by item (what the item's statistics and the demand
   label read) and by event id (the uniqueness check). Kept whole: the first and last time,
   each item's first time (the price edges) and the shop's counts per second.
2. per item bucket: `log_features.item_features`, the trailing statistics and the demand
   label of its impressions, and when each was clicked, written by user bucket; the
   impressions go on to (query, category) buckets.
3. per (query, category) bucket: `log_features.query_category_features`, by user bucket.
4. per user bucket: `ExampleSource` over its events with those columns joined by row.

The examples equal the in-memory ones (tested, within float rounding of running sums) but
come out bucket by bucket, in time order within a bucket; training shuffles, and each
example carries its event id and timestamp.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import shutil
import tempfile
import threading
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoo.data import contract, examples as examples_lib, labels as labels_lib, log_features
from zoo.data.contract import EVENT_INDEX

# Events a bucket should hold: a bucket's examples cost about what a log of this size costs
# in memory (~0.65 GiB per million events), whatever the whole log's size.
DEFAULT_BUCKET_EVENTS = 1_000_000
# Rows read, validated and routed at a time in the first pass.
BATCH_ROWS = 1_000_000
# Logs at least this large (estimated from the files) are prepared by buckets by default.
AUTO_MIN_EVENTS = 5_000_000

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)
# Columns of the user buckets: what ExampleSource reads, plus the row in the whole log.
_USER_TEXT = ("event_id", "user_id", "session_id", "query")
_USER_NUMBERS = ("timestamp", "event_type", "item_code", "position", "quantity")
# Item-level columns computed outside the user buckets ("stat:" and "label:" are the
# examples' trailing statistics and demand label, the rest `log_features.CROSS_USER`).
_ITEM_STATS = ("stat:item_clicks_7d", "stat:item_purchases_7d", "label:demand",
               "label:demand_mask")


def hash64(strings: pa.Array) -> np.ndarray:
    """FNV-1a of each string's UTF-8 bytes, vectorised over byte positions: a bucket of a
    user (or an id) that every batch of the log agrees on, with no Python call per row."""
    arr = pc.cast(strings, pa.large_binary())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = (np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None
            else np.zeros(0, np.uint8))
    start, length = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    for j in range(int(length.max(initial=0))):
        live = np.flatnonzero(length > j)
        h[live] = (h[live] ^ data[start[live] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def estimate_events(folder: str) -> int:
    """Events in the log, from Parquet footers (exact) or CSV sizes (~80 bytes a row)."""
    fs, _ = contract.filesystem(folder)
    total = 0
    for f in contract.table_files(folder, "events"):
        if f.path.endswith(".parquet"):
            with fs.open_input_file(f.path) as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        else:
            total += int(f.size or 0) // 80
    return total


@dataclasses.dataclass
class SharedLog:
    """What a user bucket cannot see in its own events (`labels.Prepared`'s `shared`)."""

    cut: int
    edges: np.ndarray
    log_end: int
    shop: log_features.ShopCounts
    num_events: int
    cross_dir: str

    def cross_columns(self, bucket: int, rows: np.ndarray) -> dict:
        """The item-level and (query, category) columns of the impressions whose rows in
        the whole log are `rows`, from passes 2 and 3."""
        parts = [dict(np.load(p)) for p in sorted(glob.glob(
            os.path.join(self.cross_dir, f"u{bucket}", "*.npz")))]
        out = {}
        for kind, names in (("i", log_features.ITEM_LEVEL + _ITEM_STATS),
                            ("q", log_features.QUERY_CATEGORY)):
            got = [p for p in parts if str(p["kind"]) == kind]
            row = np.concatenate([p["row"] for p in got]) if got else np.zeros(0, np.int64)
            order = np.argsort(row)
            at = np.minimum(np.searchsorted(row[order], rows), max(len(row) - 1, 0))
            if len(rows) and (len(row) == 0 or not np.array_equal(row[order][at], rows)):
                raise RuntimeError(f"user bucket {bucket}: item-level columns missing for "
                                   "some impressions (a bucket file was lost)")
            for name in names:
                values = (np.concatenate([p[name] for p in got]) if got
                          else np.zeros(0, np.float64))
                out[name] = values[order][at] if len(rows) else values[:0]
        return out


class _ItemBucketLog:
    """The events of a bucket of items, as `labels`' item-level functions read a log."""

    def __init__(self, table: pa.Table, shared: SharedLog, config: labels_lib.LabelConfig):
        col = {name: table.column(name).to_numpy() for name in table.column_names}
        self.ts, self.kind, self.item = col["timestamp"], col["event_type"], col["item_code"]
        self.quantity, self.row, self.ubucket = col["quantity"], col["row"], col["ubucket"]
        self.session, self.qc = col["session"], col["qc"]
        self.cut, self.log_end, self.config = shared.cut, shared.log_end, config


class _Writers:
    """One Parquet file per bucket, appended to batch by batch."""

    def __init__(self, folder: str, num_buckets: int):
        self.folder, self.num_buckets, self.open = folder, num_buckets, {}
        self.lock = threading.Lock()
        os.makedirs(folder, exist_ok=True)

    def write(self, table: pa.Table, bucket: np.ndarray):
        order = np.argsort(bucket, kind="stable")
        sorted_b = bucket[order]
        table = table.take(pa.array(order))
        bounds = np.searchsorted(sorted_b, np.arange(self.num_buckets + 1))
        with self.lock:  # passes 2 and 3 write from two threads
            for b in range(self.num_buckets):
                lo, hi = int(bounds[b]), int(bounds[b + 1])
                if hi > lo:
                    part = table.slice(lo, hi - lo)
                    if b not in self.open:
                        # Uncompressed: the files live minutes; time matters, not bytes.
                        self.open[b] = pq.ParquetWriter(self.path(b), part.schema,
                                                        compression="none")
                    self.open[b].write_table(part)

    def path(self, b: int) -> str:
        return os.path.join(self.folder, f"b{b:05d}.parquet")

    def close(self):
        for w in self.open.values():
            w.close()

    def read(self, b: int) -> pa.Table | None:
        return pq.read_table(self.path(b)) if b in self.open else None


class BucketedLog:
    """A contract folder split into user buckets, with what crosses users computed;
    `sources()` gives an ExampleSource per bucket. `cleanup()` removes the bucket files (done
    here on failure)."""

    def __init__(self, contract_dir: str, config: labels_lib.LabelConfig | None = None,
                 bucket_events: int = DEFAULT_BUCKET_EVENTS, work_dir: str | None = None,
                 batch_rows: int = BATCH_ROWS, log=lambda msg: None):
        self.contract_dir = contract_dir
        self.config = config or labels_lib.LabelConfig()
        self.num_buckets = max(1, -(-estimate_events(contract_dir) // max(1, bucket_events)))
        self.work = tempfile.mkdtemp(prefix="ecom_zoo_buckets_", dir=work_dir)
        self.batch_rows = batch_rows
        self.log = log
        try:
            self.items_path = contract._find_table(contract_dir, "items")
            self.items = contract.read_items(self.items_path)
            self._scan()
            self._item_pass()
            self._query_category_pass()
        except BaseException:
            self.cleanup()
            raise

    # -- pass 1 ---------------------------------------------------------------------
    def _scan(self):
        k = self.num_buckets
        users = _Writers(os.path.join(self.work, "users"), k)
        items = _Writers(os.path.join(self.work, "items"), k)
        ids = _Writers(os.path.join(self.work, "ids"), k)
        category = labels_lib._codes(self.items["category"]).astype(np.uint64)
        draws = np.random.default_rng(labels_lib.PRICE_LABEL_SEED)
        first_seen = np.full(len(self.items["price"]), np.iinfo(np.int64).max, np.int64)
        self.files: list[tuple[str, str, int]] = []  # (events path, file, first row in log)
        # The bucket files are written on a second thread while the next batch is read and
        # validated (Arrow's readers and writers release the GIL): two batches in memory.
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                total, shop, t_min, t_max = self._read_batches(
                    pool, users, items, ids, category, draws, first_seen)
        finally:  # the pool has finished its last write, whether or not a batch failed
            for w in (users, items, ids):
                w.close()
        if total == 0:
            raise contract.ContractError(f"{self.contract_dir}: no events; expected at least one")
        self.users, self.item_buckets = users, items
        self._check_unique_ids(ids)
        cut = contract.split_time(np.array([t_min, t_max]), self.config.eval_fraction)
        seen = np.flatnonzero(first_seen < cut)
        if not len(seen):
            seen = np.arange(len(self.items["price"]))
        edges = contract.price_edges(self.items["price"][seen], self.config.num_price_ranges)
        self.shared = SharedLog(cut=cut, edges=edges, log_end=t_max,
                                shop=log_features.ShopCounts(log_features.ShopCounts.merge(shop)),
                                num_events=total, cross_dir=os.path.join(self.work, "cross"))

    def _read_batches(self, pool, users, items, ids, category, draws, first_seen):
        """Reads, validates and routes every batch; (events, shop counts, first, last time)."""
        items_name = os.path.basename(self.items_path.rstrip("/"))
        t_min, t_max, total, shop, writing = None, None, 0, [], None
        for events_path, shown, offset, table in contract.event_batches(
                self.contract_dir, self.batch_rows):
            if offset == 0:
                self.files.append((events_path, shown, total))
            with contract.batch_errors(events_path, shown, offset):
                ev = contract.validate_events(table, self.items, events_path, items_name)
            n = len(ev["timestamp"])
            self.events_path = events_path
            row = np.arange(total, total + n, dtype=np.int64)
            ts, kind, item = ev["timestamp"], ev["event_type"], ev["item_code"]
            t_min = int(ts.min()) if t_min is None else min(t_min, int(ts.min()))
            t_max = int(ts.max()) if t_max is None else max(t_max, int(ts.max()))
            has_item = item >= 0
            np.minimum.at(first_seen, item[has_item], ts[has_item])
            shop.append(log_features.ShopCounts.count(ts, kind))
            if len(shop) >= 16:
                shop = [log_features.ShopCounts.merge(shop)]
            if writing is not None:
                writing.result()
            writing = pool.submit(self._route, ev, row, draws.random(n), category,
                                  users, items, ids)
            total += n
            self.log(f"read {total:,} events")
        if writing is not None:
            writing.result()
        return total, shop, t_min, t_max

    def _route(self, ev, row, draw, category, users, items, ids):
        """Writes one validated batch to the user, item and id buckets."""
        k = self.num_buckets
        ts, kind, item = ev["timestamp"], ev["event_type"], ev["item_code"]
        user_hash = hash64(ev["user_id"])
        ubucket = (user_hash % np.uint64(k)).astype(np.int32)
        cols = {name: ev[name] for name in _USER_TEXT}
        cols.update({name: ev[name] for name in _USER_NUMBERS})
        cols["row"], cols["price_draw"] = row, draw
        users.write(pa.table(cols), ubucket)
        # The item buckets: impressions, clicks and purchases (what item-level statistics
        # count), with the session (for clicks) and the (query, category).
        keep = np.flatnonzero(np.isin(kind, [EVENT_INDEX[e] for e in
                                             ("impression", "click", "purchase")]))
        session = (user_hash * _MIX) ^ hash64(ev["session_id"])
        qc = hash64(ev["query"]) * _MIX + category[np.maximum(item, 0)]
        items.write(pa.table({
            "timestamp": ts[keep], "event_type": kind[keep], "item_code": item[keep],
            "quantity": ev["quantity"][keep], "row": row[keep],
            "session": session[keep].view(np.int64), "qc": qc[keep].view(np.int64),
            "ubucket": ubucket[keep]}), (item[keep] % k).astype(np.int32))
        ids.write(pa.table({"event_id": ev["event_id"], "row": row}),
                  (hash64(ev["event_id"]) % np.uint64(k)).astype(np.int32))

    def _check_unique_ids(self, ids: _Writers):
        for b in range(self.num_buckets):
            table = ids.read(b)
            if table is None:
                continue
            codes = pc.dictionary_encode(table.column("event_id")).combine_chunks().indices
            codes = codes.to_numpy(zero_copy_only=False)
            if len(np.unique(codes)) == len(codes):
                continue
            rows = table.column("row").to_numpy()
            order = np.lexsort((rows, codes))
            dup = np.flatnonzero(codes[order][1:] == codes[order][:-1])[0]
            first, second = rows[order][dup], rows[order][dup + 1]
            value = table.column("event_id")[int(order[dup])].as_py()
            raise contract.ContractError(
                f"{self.events_path}: {self._where(second)}, column 'event_id': duplicate "
                f"value {value!r} (first at {self._where(first)}); expected unique values")
        shutil.rmtree(ids.folder)

    def _where(self, row: int) -> str:
        starts = [s for _, _, s in self.files]
        events_path, shown, start = self.files[int(np.searchsorted(starts, row, "right")) - 1]
        return contract.describe_row(events_path, shown, int(row - start))

    # -- passes 2 and 3 -------------------------------------------------------------------
    def _save(self, kind: str, bucket: int, ubucket: np.ndarray, columns: dict):
        order = np.argsort(ubucket, kind="stable")
        bounds = np.searchsorted(ubucket[order], np.arange(self.num_buckets + 1))
        for u in range(self.num_buckets):
            sel = order[bounds[u]:bounds[u + 1]]
            if len(sel):
                folder = os.path.join(self.shared.cross_dir, f"u{u}")
                os.makedirs(folder, exist_ok=True)
                np.savez(os.path.join(folder, f"{kind}{bucket}.npz"), kind=kind,
                         **{name: values[sel] for name, values in columns.items()})

    def _item_pass(self):
        qc_writers = _Writers(os.path.join(self.work, "query_category"), self.num_buckets)
        _each_bucket(self.num_buckets, lambda b: self._item_bucket(b, qc_writers))
        qc_writers.close()
        self.qc_buckets = qc_writers
        shutil.rmtree(self.item_buckets.folder)

    def _item_bucket(self, b: int, qc_writers: _Writers):
        table = self.item_buckets.read(b)
        if table is None:
            return
        log = _ItemBucketLog(table, self.shared, self.config)
        imp = np.flatnonzero(log.kind == EVENT_INDEX["impression"])
        cols = {"row": log.row[imp]}
        cols.update(log_features.item_features(log, imp, self.shared.shop))
        stats = labels_lib.item_trailing_stats(log, imp)
        demand, mask = labels_lib.future_item_demand(log, imp)
        cols.update({"stat:item_clicks_7d": stats["item_clicks_7d"],
                     "stat:item_purchases_7d": stats["item_purchases_7d"],
                     "label:demand": demand, "label:demand_mask": mask})
        self._save("i", b, log.ubucket[imp], cols)
        _, session = np.unique(log.session, return_inverse=True)
        clicked_at = log_features._click_time(log.ts, log.kind, session.astype(np.int64),
                                              log.item, imp)
        qc = log.qc[imp]
        qc_writers.write(pa.table({"qc": qc, "timestamp": log.ts[imp],
                                   "clicked_at": clicked_at, "row": log.row[imp],
                                   "ubucket": log.ubucket[imp]}),
                         (qc.view(np.uint64) % np.uint64(self.num_buckets)).astype(np.int32))
        self.log(f"item bucket {b + 1}/{self.num_buckets}")

    def _query_category_pass(self):
        _each_bucket(self.num_buckets, self._query_category_bucket)
        shutil.rmtree(self.qc_buckets.folder)

    def _query_category_bucket(self, b: int):
        table = self.qc_buckets.read(b)
        if table is None:
            return
        _, keys = np.unique(table.column("qc").to_numpy(), return_inverse=True)
        ts = table.column("timestamp").to_numpy()
        cols = {"row": table.column("row").to_numpy()}
        cols.update(log_features.query_category_features(
            keys, ts, table.column("clicked_at").to_numpy(), keys, ts, self.shared.shop))
        self._save("q", b, table.column("ubucket").to_numpy(), cols)

    # -- pass 4 -----------------------------------------------------------------------
    def sources(self) -> Iterator[examples_lib.ExampleSource]:
        """An ExampleSource per user bucket, one at a time."""
        for b in range(self.num_buckets):
            table = self.users.read(b)
            if table is None:
                continue
            events = {name: table.column(name).combine_chunks() for name in _USER_TEXT}
            events.update({name: table.column(name).to_numpy()
                           for name in _USER_NUMBERS + ("row", "price_draw")})
            tables = contract.Tables(events=events, items=self.items,
                                     events_path=self.events_path, items_path=self.items_path)
            yield examples_lib.ExampleSource(tables, self.config, shared=_BucketShare(
                self.shared, b))

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)


def _each_bucket(num_buckets: int, work):
    """work(b) for every bucket on two threads (numpy's sorts and searches and Arrow's
    reads release the GIL): the passes over buckets are independent."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(work, b) for b in range(num_buckets)]:
            future.result()


@dataclasses.dataclass
class _BucketShare:
    """One user bucket's view of the SharedLog, as ExampleSource asks for it."""

    log: SharedLog
    bucket: int

    def __getattr__(self, name):
        return getattr(self.log, name)

    def cross_columns(self, tables: contract.Tables, impressions: np.ndarray) -> dict:
        return self.log.cross_columns(self.bucket, tables.events["row"][impressions])
