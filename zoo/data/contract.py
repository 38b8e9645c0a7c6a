"""The event-log contract: one folder, two tables (`events`, `items`), CSV or Parquet.

A table is one file (`events.parquet`, `events.csv`) or a folder of them (`events/`, as
Spark or BigQuery write a log: many Parquet parts, optionally hive-partitioned
`dt=YYYY-MM-DD/`; files whose names start with `_` or `.`, such as `_SUCCESS` and CRC
files, are not data). The parts are read in path order; errors name the part and its row.
The folder may be a local path or a URI that `pyarrow.fs` opens: `file://` works as it is,
`gs://` and `s3://` through the same code with pyarrow's GCS / S3 filesystems (built into
the pyarrow wheels; credentials from the environment, as pyarrow reads them).

Everything downstream (labels, examples, the simulator's oracle) reads logs through
`read_contract`, so a malformed log fails here once, with the file, the line and the
column named, instead of deep inside TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

EVENT_TYPES = ("search", "impression", "click", "cart", "purchase")
EVENT_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}
# Events that make up the behaviour sequence: engagement with an item. Searches carry
# no item, and impressions are what the shop did, not what the user wanted.
HISTORY_EVENTS = ("click", "cart", "purchase")

EVENTS_REQUIRED = ("event_id", "user_id", "session_id", "timestamp", "event", "query", "item_id")
EVENTS_OPTIONAL = ("position", "quantity")
ITEMS_REQUIRED = ("item_id", "title", "category", "brand", "price")

SECONDS_PER_DAY = 86400

# Label and split defaults: K price ranges, H / D day windows, eval share.
DEFAULT_NUM_PRICE_RANGES = 5
DEFAULT_PRICE_HORIZON_DAYS = 7
# 3 days (was 7): with the eval split's last fifth of a 4-week log (6 days), a 7-day window
# is cut off by the end of the log for every eval impression, and censored windows are now
# masked (`labels.compute_labels`); 3 days leaves half the eval days with whole windows.
DEFAULT_DEMAND_HORIZON_DAYS = 3
DEFAULT_EVAL_FRACTION = 0.2
DEFAULT_HISTORY_LENGTH = 50
# Training impressions that keep the price-range label of one next purchase (0: all).
DEFAULT_PRICE_LABELS_PER_PURCHASE = 3


class ContractError(ValueError):
    """A contract folder that does not hold to the contract; the message says where."""


@dataclasses.dataclass
class Tables:
    """Validated, typed columns. Strings stay pyarrow/numpy object arrays; rows keep file order."""

    events: dict  # name -> numpy array (numbers, codes) or pyarrow array (text)
    items: dict
    events_path: str
    items_path: str

    @property
    def num_events(self) -> int:
        return len(self.events["event_id"])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a URI (`file://`, `gs://`, `s3://`, ...)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(location)
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as e:
        raise ContractError(f"{location}: cannot open this URI ({e}); expected a local "
                            "path or a URI pyarrow.fs opens (file://, gs://, s3://)") from None
    return fs, path


def is_folder(location: str) -> bool:
    """Whether a local path or a URI names a folder (False for a URI that cannot open)."""
    try:
        fs, path = filesystem(location)
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except (ContractError, OSError):
        return False


def local_path(location: str) -> str:
    """A local path for a local path or a file:// URI (other URIs are returned as they are)."""
    if location.startswith("file://"):
        return filesystem(location)[1]
    return location


# Folder tables: display path -> (their part files, the first row of each part).
_PARTS: dict[str, tuple[list, np.ndarray]] = {}


def _is_data(path: str) -> bool:
    return not any(part.startswith(("_", ".")) for part in path.split("/"))


def table_files(folder: str, name: str) -> list[pafs.FileInfo]:
    """The files of table `name` in `folder` (one, or a folder table's parts in path order)."""
    fs, root = filesystem(folder)
    base = f"{root.rstrip('/')}/{name}"
    found = [base + ext for ext in (".parquet", ".csv")
             if fs.get_file_info(base + ext).type == pafs.FileType.File]
    is_dir = fs.get_file_info(base).type == pafs.FileType.Directory
    if len(found) + is_dir > 1:
        what = found + ([base + "/"] if is_dir else [])
        raise ContractError(f"{folder}: both {what[0]} and {what[1]} exist; keep one")
    if found:
        return [fs.get_file_info(found[0])]
    if not is_dir:
        raise ContractError(f"{folder}: missing table '{name}': expected {name}.parquet, "
                            f"{name}.csv or a folder {name}/ of Parquet or CSV parts")
    parts = [f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if f.type == pafs.FileType.File and _is_data(f.path[len(base) + 1:])]
    kinds = {os.path.splitext(f.path)[1] for f in parts}
    if not parts or not kinds <= {".parquet", ".csv"} or len(kinds) > 1:
        raise ContractError(
            f"{base}/: expected Parquet parts (*.parquet) or CSV parts (*.csv), all of one "
            f"kind; found {sorted(kinds) or 'no data files'}")
    return sorted(parts, key=lambda f: f.path)


def _find_table(folder: str, name: str) -> str:
    """The table's display path: its file, or its folder with a trailing "/"."""
    first = table_files(folder, name)[0].path
    base = f"{filesystem(folder)[1].rstrip('/')}/{name}"
    return (_display(folder, base) + "/" if first.startswith(base + "/")
            else _display(folder, first))


def _display(folder: str, path: str) -> str:
    """`path` as the user named its folder (a URI keeps its scheme)."""
    if "://" in folder:
        scheme = folder.split("://", 1)[0]
        return f"{scheme}://{path}" if scheme != "file" else path
    return path


def _partition_values(relative: str) -> dict:
    """hive partition keys of a part's path: "dt=2026-01-05/part-0.parquet" -> {dt: ...}."""
    return dict(seg.split("=", 1) for seg in relative.split("/")[:-1] if "=" in seg)


def _read_one(fs, path: str, shown: str, wanted, required, extra: dict) -> pa.Table:
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            part = pq.ParquetFile(f)
            schema_names = part.schema_arrow.names
            _check_columns(shown, list(schema_names) + list(extra), required)
            table = part.read(columns=[c for c in wanted if c in schema_names])
    else:
        with fs.open_input_stream(path) as f:
            data = f.read()
        header = data.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r")
        header = [h.strip().strip('"') for h in header.split(",")]
        _check_columns(shown, header + list(extra), required)
        columns = [c for c in wanted if c in header]
        # Read everything as text and type it ourselves: the errors then name the line.
        try:
            table = pacsv.read_csv(
                pa.BufferReader(data),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns,
                    column_types={c: pa.string() for c in columns},
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as e:  # ragged rows, bad UTF-8, unbalanced quotes
            raise ContractError(f"{shown}: not a readable CSV table: {e}") from None
    for key, value in extra.items():  # hive partition columns the part does not carry
        if key in wanted and key not in table.column_names:
            table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    return table


def _read_table(path: str, required, optional) -> pa.Table:
    """A table by its display path (`_find_table`): one file, or a folder's parts."""
    wanted = list(required) + list(optional)
    if not path.endswith("/"):
        fs, local = filesystem(path)
        table = _read_one(fs, local, path, wanted, required, {})
    else:
        folder, name = os.path.split(path.rstrip("/"))
        fs, base = filesystem(path.rstrip("/"))
        files = [f.path for f in table_files(folder, name)]
        tables = []
        for f in files:
            relative = f[len(base) + 1:]
            tables.append(_read_one(fs, f, _display(path, f), wanted, required,
                                    _partition_values(relative)))
        starts = np.cumsum([0] + [t.num_rows for t in tables])
        _PARTS[path] = ([_display(path, f) for f in files], starts)
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ContractError(f"{path}: the parts' columns do not agree ({e})") from None
    if table.num_rows == 0:
        raise ContractError(f"{path}: the table is empty; expected at least one data row")
    return table


# Table display path -> (the file of the batch being validated, the batch's first row in it).
_BATCHES: dict[str, tuple[str, int]] = {}


def event_batches(folder: str, batch_rows: int = 1_000_000):
    """The events table of `folder` as raw Arrow tables of at most `batch_rows` rows, in
    file (and part) order, for reading a log larger than memory: one batch is held at a
    time. Yields (events display path, file display path, first row of the batch in its
    file, table). `validate_events(table, ...)` inside `batch_errors(...)` names the file
    and row of a bad value as reading the whole table would."""
    events_path = _find_table(folder, "events")
    wanted = list(EVENTS_REQUIRED) + list(EVENTS_OPTIONAL)
    fs, _ = filesystem(folder)
    if events_path.endswith("/"):
        _, base = filesystem(events_path.rstrip("/"))
        files = [f.path for f in table_files(folder, "events")]
        shown = [_display(events_path, f) for f in files]
        extras = [_partition_values(f[len(base) + 1:]) for f in files]
    else:
        files = [filesystem(events_path)[1]]
        shown, extras = [events_path], [{}]
    for path, name, extra in zip(files, shown, extras):
        for offset, table in _file_batches(fs, path, name, wanted, extra, batch_rows):
            yield events_path, name, offset, table


def _file_batches(fs, path, shown, wanted, extra, batch_rows):
    required = EVENTS_REQUIRED
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            part = pq.ParquetFile(f)
            names = part.schema_arrow.names
            _check_columns(shown, list(names) + list(extra), required)
            batches = part.iter_batches(batch_size=batch_rows,
                                        columns=[c for c in wanted if c in names])
            offset = 0
            for batch in batches:
                table = _with_partition_columns(pa.Table.from_batches([batch]), wanted, extra)
                yield offset, table
                offset += batch.num_rows
        return
    with fs.open_input_stream(path) as f:
        head = f.read(1 << 16)
    header = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r")
    header = [h.strip().strip('"') for h in header.split(",")]
    _check_columns(shown, header + list(extra), required)
    columns = [c for c in wanted if c in header]
    with fs.open_input_stream(path) as f:
        try:
            reader = pacsv.open_csv(
                f, read_options=pacsv.ReadOptions(block_size=1 << 24),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, column_types={c: pa.string() for c in columns},
                    strings_can_be_null=False))
            offset, pending = 0, []
            for batch in reader:
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= batch_rows:
                    table = _with_partition_columns(pa.Table.from_batches(pending), wanted,
                                                    extra)
                    pending = []
                    yield offset, table
                    offset += table.num_rows
            if pending:
                yield offset, _with_partition_columns(pa.Table.from_batches(pending), wanted,
                                                      extra)
        except pa.ArrowInvalid as e:  # ragged rows, bad UTF-8, unbalanced quotes
            raise ContractError(f"{shown}: not a readable CSV table: {e}") from None


def _with_partition_columns(table: pa.Table, wanted, extra: dict) -> pa.Table:
    for key, value in extra.items():
        if key in wanted and key not in table.column_names:
            table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    return table


class batch_errors:
    """While validating one batch: its rows are named as rows of `file_shown` from `offset`."""

    def __init__(self, events_path: str, file_shown: str, offset: int):
        self.key, self.value = events_path, (file_shown, offset)

    def __enter__(self):
        _BATCHES[self.key] = self.value

    def __exit__(self, *exc):
        _BATCHES.pop(self.key, None)


def describe_row(events_path: str, file_shown: str, row: int) -> str:
    """"part F, row R" / "line N": a row of a file, as the contract's errors name it."""
    inner = _file_line(file_shown, row)
    return inner if file_shown == events_path else f"part {file_shown}, {inner}"


def _check_columns(path, present, required):
    missing = [c for c in required if c not in present]
    if missing:
        raise ContractError(
            f"{path}: missing column(s) {missing}; expected at least {list(required)}")


def _line(path: str, row: int) -> str:
    # CSV line numbers count the header as line 1; Parquet has rows, not lines. A folder
    # table's row is its part's (named) and the row in that part; a batch's row is its
    # file's row past the batch's first.
    if path in _BATCHES:
        shown, offset = _BATCHES[path]
        inner = _file_line(shown, row + offset)
        return inner if shown == path else f"part {shown}, {inner}"
    if path in _PARTS:
        files, starts = _PARTS[path]
        i = int(np.searchsorted(starts, row, side="right")) - 1
        return f"part {files[i]}, {_line(files[i], row - int(starts[i]))}"
    return _file_line(path, row)


def _file_line(path: str, row: int) -> str:
    return f"line {row + 2}" if path.endswith(".csv") else f"row {row}"


def _bad(path, rows, column, expected, values):
    row = int(rows[0])
    value = values[row]
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    elif isinstance(value, np.generic):  # a plain 0.0 in the message, not np.float64(0.0)
        value = value.item()
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    raise ContractError(
        f"{path}: {_line(path, row)}, column '{column}': got {value!r}, "
        f"expected {expected}{more}")


def _strings(path, table, column) -> pa.Array:
    """Text columns stay Arrow arrays: 10M Python strings would cost gigabytes."""
    col = table.column(column)
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    return pc.fill_null(col, "").combine_chunks()


def _empty(arr: pa.Array) -> np.ndarray:
    return pc.equal(arr, "").to_numpy(zero_copy_only=False)


def _numbers(path, table, column, dtype, expected, default=None) -> np.ndarray:
    if column not in table.column_names:
        return np.full(table.num_rows, default, dtype=dtype)
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
        empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
        if default is not None:
            text = pc.if_else(pc.equal(text, ""), str(default), text)
        try:
            col = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            raw = text.to_numpy(zero_copy_only=False)
            ok = np.array([_is_number(v) for v in raw])
            _bad(path, np.flatnonzero(~ok), column, expected, raw)
        if default is None and empty.any():
            _bad(path, np.flatnonzero(empty), column, expected, np.full(len(empty), ""))
    values = pc.fill_null(pc.cast(col, pa.float64()), np.nan if default is None else default)
    values = values.to_numpy(zero_copy_only=False)
    if default is None and np.isnan(values).any():
        _bad(path, np.flatnonzero(np.isnan(values)), column, expected, values)
    if np.issubdtype(dtype, np.integer):
        frac = values != np.floor(values)
        if frac.any():
            _bad(path, np.flatnonzero(frac), column, expected, values)
    return values.astype(dtype)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _timestamps(path, table) -> np.ndarray:
    """Integer Unix seconds or ISO-8601 text, mixed freely, to int64 seconds."""
    col = table.column("timestamp")
    if col.null_count:
        rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))
        _bad(path, rows, "timestamp", "integer Unix seconds or an ISO-8601 date-time",
             np.full(table.num_rows, None))
    if pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()).to_numpy(
            zero_copy_only=False)
    text = pc.utf8_trim_whitespace(pc.fill_null(pc.cast(col, pa.string()), ""))
    raw = text.to_numpy(zero_copy_only=False)
    is_int = pc.match_substring_regex(text, r"^-?\d+$").to_numpy(zero_copy_only=False)
    too_long = is_int & (pc.utf8_length(text).to_numpy(zero_copy_only=False) > 18)
    if too_long.any():  # int64 holds 18 digits safely; Unix seconds need 10
        _bad(path, np.flatnonzero(too_long), "timestamp",
             "integer Unix seconds or an ISO-8601 date-time", raw)
    out = np.zeros(len(raw), dtype=np.int64)
    if is_int.any():
        out[is_int] = raw[is_int].astype(np.int64)
    iso = ~is_int
    if iso.any():
        iso_text = raw[iso].astype(str)
        # numpy parses ISO-8601 without zone; accept a trailing 'Z' / '+00:00' (UTC).
        cleaned = np.char.replace(np.char.replace(iso_text, "Z", ""), "+00:00", "")
        parsed = np.empty(len(cleaned), dtype=np.int64)
        bad = np.zeros(len(cleaned), dtype=bool)
        for start in range(0, len(cleaned), 1_000_000):
            chunk = cleaned[start:start + 1_000_000]
            try:
                parsed[start:start + len(chunk)] = chunk.astype("datetime64[s]").astype(np.int64)
            except ValueError:
                for j, v in enumerate(chunk):
                    try:
                        parsed[start + j] = np.datetime64(v, "s").astype(np.int64)
                    except ValueError:
                        bad[start + j] = True
        if bad.any():
            rows = np.flatnonzero(iso)[bad]
            _bad(path, rows, "timestamp", "integer Unix seconds or an ISO-8601 date-time", raw)
        out[iso] = parsed
    return out


MAX_TIMESTAMP = 2**34  # seconds (year 2514); millisecond timestamps are well above it


def _check_timestamps(path, ts: np.ndarray, raw):
    bad = (ts < 0) | (ts >= MAX_TIMESTAMP)
    if bad.any():
        _bad(path, np.flatnonzero(bad), "timestamp",
             "Unix SECONDS between 1970 and 2514 (milliseconds? divide by 1000)", raw)


def read_contract(folder: str) -> Tables:
    """Reads and validates a contract folder; raises ContractError naming file, line, column."""
    fs, root = filesystem(folder)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise ContractError(f"{folder}: not a directory; expected a contract folder with "
                            "events.(csv|parquet) and items.(csv|parquet), or folders of "
                            "their parts")
    events_path = _find_table(folder, "events")
    items_path = _find_table(folder, "items")
    ev = _read_table(events_path, EVENTS_REQUIRED, EVENTS_OPTIONAL)
    items = read_items(items_path)
    events = validate_events(ev, items, events_path, os.path.basename(items_path))
    return Tables(events=events, items=items, events_path=events_path, items_path=items_path)


def read_items(items_path: str) -> dict:
    """The items table's columns, typed and checked (item_id, title, category, brand as
    Arrow strings, price as float64)."""
    fs, local = filesystem(items_path.rstrip("/"))
    want = pafs.FileType.Directory if items_path.endswith("/") else pafs.FileType.File
    if fs.get_file_info(local).type != want:
        raise ContractError(f"{items_path}: no such file; expected an items table "
                            "(items.csv, items.parquet or a folder items/ of parts)")
    it = _read_table(items_path, ITEMS_REQUIRED, ())
    items = {c: _strings(items_path, it, c) for c in ("item_id", "title", "category", "brand")}
    price = _numbers(items_path, it, "price", np.float64, "a price > 0")
    bad = ~(np.isfinite(price) & (price > 0))
    if bad.any():
        _bad(items_path, np.flatnonzero(bad), "price", "a finite price > 0", price)
    items["price"] = price
    empty_id = _empty(items["item_id"])
    if empty_id.any():
        _bad(items_path, np.flatnonzero(empty_id), "item_id", "a non-empty item id",
             items["item_id"])
    _check_unique(items_path, "item_id", items["item_id"])
    return items


def validate_events(ev: pa.Table, items: dict, events_path: str, items_name: str) -> dict:
    """An events table's columns, typed and checked against the items (the rules of the
    files, for rows from anywhere: an online store names its request as `events_path`)."""
    _check_columns(events_path, ev.column_names, EVENTS_REQUIRED)
    if ev.num_rows == 0:
        raise ContractError(f"{events_path}: no events; expected at least one")
    events = {c: _strings(events_path, ev, c)
              for c in ("event_id", "user_id", "session_id", "event", "query", "item_id")}
    events["timestamp"] = _timestamps(events_path, ev)
    _check_timestamps(events_path, events["timestamp"], events["timestamp"])
    events["position"] = _numbers(events_path, ev, "position", np.int64,
                                  "an integer rank >= 0 or empty", default=-1)
    events["quantity"] = _numbers(events_path, ev, "quantity", np.int64,
                                  "an integer quantity >= 1 or empty", default=1)

    for column in ("event_id", "user_id", "session_id"):
        empty = _empty(events[column])
        if empty.any():
            _bad(events_path, np.flatnonzero(empty), column, f"a non-empty {column}",
                 events[column])
    kind = pc.index_in(events["event"], value_set=pa.array(EVENT_TYPES))
    kind = pc.fill_null(kind, -1).to_numpy(zero_copy_only=False).astype(np.int8)
    if (kind < 0).any():
        _bad(events_path, np.flatnonzero(kind < 0), "event", f"one of {list(EVENT_TYPES)}",
             events["event"])
    events["event_type"] = kind
    _check_unique(events_path, "event_id", events["event_id"])

    needs_item = kind != EVENT_INDEX["search"]
    no_item = needs_item & _empty(events["item_id"])
    if no_item.any():
        _bad(events_path, np.flatnonzero(no_item), "item_id",
             "an item id on every non-search event", events["item_id"])
    item_code = pc.fill_null(pc.index_in(events["item_id"], value_set=items["item_id"]), -1)
    events["item_code"] = item_code.to_numpy(zero_copy_only=False).astype(np.int64)
    unknown = needs_item & (events["item_code"] < 0)
    if unknown.any():
        _bad(events_path, np.flatnonzero(unknown), "item_id",
             f"an item_id listed in {items_name}", events["item_id"])
    bad_q = events["quantity"] < 1
    if bad_q.any():
        _bad(events_path, np.flatnonzero(bad_q), "quantity", "an integer quantity >= 1",
             events["quantity"])
    bad_p = events["position"] < -1
    if bad_p.any():
        _bad(events_path, np.flatnonzero(bad_p), "position", "an integer rank >= 0",
             events["position"])
    return events


def _check_unique(path, column, values: pa.Array):
    codes = pc.dictionary_encode(values).indices.to_numpy(zero_copy_only=False)
    if len(np.unique(codes)) == len(codes):
        return
    seen = np.zeros(int(codes.max()) + 1, dtype=np.int64)
    np.add.at(seen, codes, 1)
    dup_code = np.flatnonzero(seen > 1)[0]
    rows = np.flatnonzero(codes == dup_code)
    raise ContractError(
        f"{path}: {_line(path, int(rows[1]))}, column '{column}': duplicate value "
        f"{values[int(rows[1])].as_py()!r} (first at {_line(path, int(rows[0]))}); "
        "expected unique values")


# ---- Definitions shared by the example builder and the simulator's oracle. ----

def split_time(timestamps: np.ndarray, eval_fraction: float) -> int:
    """First second of the eval split: the last `eval_fraction` of whole days of the log.

    Splitting on day boundaries (UTC) keeps a day's sessions on one side; at least one day
    stays on each side whenever the log spans two days or more.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    first_day = int(timestamps.min()) // SECONDS_PER_DAY
    last_day = int(timestamps.max()) // SECONDS_PER_DAY
    num_days = last_day - first_day + 1
    if eval_fraction == 0.0:
        return (last_day + 1) * SECONDS_PER_DAY
    eval_days = max(1, int(round(num_days * eval_fraction)))
    eval_days = min(eval_days, max(num_days - 1, 1))
    return (last_day + 1 - eval_days) * SECONDS_PER_DAY


def price_edges(train_item_prices: np.ndarray, num_buckets: int) -> np.ndarray:
    """K-1 inner edges at the price quantiles of the training period's (distinct) items."""
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    qs = np.arange(1, num_buckets) / num_buckets
    return np.quantile(np.asarray(train_item_prices, np.float64), qs).astype(np.float64)


def price_bucket(prices: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket b holds edges[b-1] <= price < edges[b]."""
    return np.searchsorted(edges, prices, side="right").astype(np.int64)


def training_price_edges(tables: Tables, cut: int, num_buckets: int) -> np.ndarray:
    """Edges from the distinct items that appear in any event before the split time `cut`."""
    ev = tables.events
    codes = ev["item_code"][(ev["timestamp"] < cut) & (ev["item_code"] >= 0)]
    seen = np.unique(codes) if len(codes) else np.arange(len(tables.items["price"]))
    return price_edges(tables.items["price"][seen], num_buckets)
