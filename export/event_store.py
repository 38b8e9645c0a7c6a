"""The online store of users' recent events that a real-time recommendation reads.

`EventStore` is the interface the recommender service needs: append validated contract
rows, and read one user's last events back. `SQLiteEventStore` is the embedded default (WAL
mode: readers never wait for the writer; one process writes). A larger shop implements the
same three methods over its shared database (Postgres, Redis, Bigtable, ...) and passes it
to `export.recommender.RecommenderService`; nothing else changes.

Rows are the event log's own contract (`zoo.data.contract`): what a shop already logs is
what it posts, checked by the same rules as the files, all or nothing per call.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pyarrow as pa

from zoo.data import contract

COLUMNS = contract.EVENTS_REQUIRED + contract.EVENTS_OPTIONAL
# Most rows one append may carry (a bigger batch belongs to the batch pipeline).
MAX_ROWS_PER_APPEND = 1000


class EventStore:
    """What the recommender needs of a store of events (contract rows as dicts)."""

    def append(self, rows: list[dict]) -> int:
        """Stores the rows (already validated) atomically; returns how many."""
        raise NotImplementedError

    def user_events(self, user_id: str) -> list[dict]:
        """The user's stored events, oldest first."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# JSON numbers beyond this are not exact as doubles and overflow the int64 columns.
MAX_INTEGER = 2 ** 53


def validate(rows, items: dict, where: str = "POST /events") -> list[dict]:
    """Contract rows (a list of JSON objects) -> the same rows typed, or ContractError
    naming the row and field. Every row is checked before any is stored."""
    if not isinstance(rows, list) or not rows:
        raise contract.ContractError(f"{where}: expected a non-empty JSON list of events")
    if len(rows) > MAX_ROWS_PER_APPEND:
        raise contract.ContractError(f"{where}: {len(rows)} events; at most "
                                     f"{MAX_ROWS_PER_APPEND} per call")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise contract.ContractError(f"{where}: row {i}: expected a JSON object of "
                                         f"fields {list(contract.EVENTS_REQUIRED)}")
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise contract.ContractError(f"{where}: row {i}: unknown field(s) {unknown}; "
                                         f"expected {list(COLUMNS)}")
        for name, value in row.items():
            if isinstance(value, (dict, list)):
                raise contract.ContractError(f"{where}: row {i}, column '{name}': got "
                                             f"{value!r}, expected a string or a number")
            if isinstance(value, int) and not isinstance(value, bool) and \
                    abs(value) > MAX_INTEGER:
                raise contract.ContractError(f"{where}: row {i}, column '{name}': got "
                                             f"{value}, out of range (|n| <= 2^53)")
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise contract.ContractError(
                        f"{where}: row {i}, column '{name}': not valid text (a lone UTF-16 "
                        "surrogate escape in the JSON)") from None
    present = [c for c in COLUMNS if any(c in r for r in rows)]
    table = pa.table({c: pa.array([None if r.get(c) is None else str(r[c]) for r in rows],
                                  pa.string()) for c in present})
    events = contract.validate_events(table, items, where, "the catalogue")
    out = []
    for i in range(len(rows)):
        out.append({"event_id": events["event_id"][i].as_py(),
                    "user_id": events["user_id"][i].as_py(),
                    "session_id": events["session_id"][i].as_py(),
                    "timestamp": int(events["timestamp"][i]),
                    "event": events["event"][i].as_py(), "query": events["query"][i].as_py(),
                    "item_id": events["item_id"][i].as_py(),
                    "position": int(events["position"][i]),
                    "quantity": int(events["quantity"][i])})
    return out


def log_rows(tables: contract.Tables, users) -> list[dict]:
    """The events of `users` in a log, as the contract rows a shop would post (in log
    order; `position` only where the log has one)."""
    ev = tables.events
    user = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False), object)
    picked = np.flatnonzero(np.isin(user, np.asarray(list(users), object)))
    text = {c: np.asarray(ev[c].take(pa.array(picked)).to_numpy(zero_copy_only=False), object)
            for c in ("event_id", "user_id", "session_id", "event", "query", "item_id")}
    out = []
    for j, r in enumerate(picked):
        row = {c: v[j] for c, v in text.items()}
        row.update(timestamp=int(ev["timestamp"][r]), quantity=int(ev["quantity"][r]))
        if ev["position"][r] >= 0:
            row["position"] = int(ev["position"][r])
        out.append(row)
    return out


def busiest_user(tables: contract.Tables) -> str:
    """The user with the most events of a log (ties: the first by id)."""
    users = np.asarray(tables.events["user_id"].to_numpy(zero_copy_only=False), object)
    uniq, counts = np.unique(users, return_counts=True)
    return str(uniq[np.argmax(counts)])


def tables_of(rows: list[dict], items: dict) -> contract.Tables:
    """Stored rows (of one or a few users) as a contract.Tables over the catalogue."""
    if rows:
        table = pa.table({c: pa.array([str(r[c]) for r in rows], pa.string())
                          for c in COLUMNS})
        events = contract.validate_events(table, items, "event store", "the catalogue")
    else:
        events = {c: pa.array([], pa.string()) for c in ("event_id", "user_id", "session_id",
                                                         "event", "query", "item_id")}
        events.update(timestamp=np.zeros(0, np.int64), position=np.zeros(0, np.int64),
                      quantity=np.zeros(0, np.int64), event_type=np.zeros(0, np.int8),
                      item_code=np.zeros(0, np.int64))
    return contract.Tables(events=events, items=items, events_path="event store",
                           items_path="catalogue")


class SQLiteEventStore(EventStore):
    """Events in one SQLite file (WAL), the last `keep_per_user` per user."""

    def __init__(self, path: str, keep_per_user: int = 500):
        if keep_per_user < 1:
            raise ValueError(f"keep_per_user must be >= 1, got {keep_per_user}")
        self.path, self.keep = path, int(keep_per_user)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, "
            "user_id TEXT NOT NULL, session_id TEXT NOT NULL, timestamp INTEGER NOT NULL, "
            "event TEXT NOT NULL, query TEXT NOT NULL, item_id TEXT NOT NULL, "
            "position INTEGER NOT NULL, quantity INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS events_by_user ON events "
                         "(user_id, timestamp)")

    def append(self, rows: list[dict]) -> int:
        values = [tuple(r[c] for c in COLUMNS) for r in rows]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(COLUMNS))})", values)
                for user in {r["user_id"] for r in rows}:
                    self._db.execute(
                        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
                        "WHERE user_id = ? ORDER BY timestamp DESC, rowid DESC "
                        "LIMIT -1 OFFSET ?)", (user, self.keep))
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                self._db.execute("ROLLBACK")
                raise contract.ContractError(
                    f"POST /events: an event_id is already stored ({e}); expected new, "
                    "unique event ids") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def user_events(self, user_id: str) -> list[dict]:
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM events WHERE user_id = ? "
                "ORDER BY timestamp, rowid", (user_id,))
            return [dict(zip(COLUMNS, row)) for row in cur.fetchall()]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
