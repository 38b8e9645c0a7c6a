"""`python -m export.recommender`: real-time recommendations over HTTP, from a store of
users' recent events and a model server's `recommend` signature.

    python -m export.recommender --model_name NAME --serving 127.0.0.1:8500 \\
        --items DATA/items.csv --events_db events.sqlite --port 8080

    POST /events            a JSON list of event-log rows (the contract's fields); checked
                            as the contract checks files, all or nothing: a bad row is a 400
                            naming its row and field, and nothing is stored
    GET  /recommend?user_id=U&query=Q&k=10[&exclude=A,B][&at=UNIX_SECONDS]
                            the user's stored events before `at` (default: now) -> the
                            request's inputs (`zoo.data.serving_features.request_inputs`,
                            the examples' own code) -> gRPC Predict of `recommend` -> JSON:
                            items (item_id, title, category, brand, price, score, click,
                            purchase), best first; with an export that explains
                            (--recommend_explain_steps), each item's "because": up to two
                            of the user's events (event, item_id, title, category,
                            seconds_ago, weight) that raise it most beyond the other items
                            of the answer. A user never seen is not an error: the
                            model answers from the query and the items' statistics alone
                            (`"cold_start": true`).
    GET  /healthz           200 when the store and the model server answer

A request continues the user's latest session when its last event is less than
--session_gap_minutes old, and opens a new session otherwise. The store
(`export.event_store`) is SQLite in WAL mode by default; a shop with a shared database
implements `EventStore`'s three methods over it and passes it to `RecommenderService`.

The service bounds what a request can cost before doing any work: the body size
(--max_body_bytes, 413), rows per POST (`event_store.MAX_ROWS_PER_APPEND`), k (at most the
export's K), exclusions (MAX_EXCLUDE), and a socket timeout per connection
(--request_timeout) so a client that stalls mid-body cannot hold a thread.
Like TF Serving it has no authentication: keep it behind loopback or a service mesh.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from export import event_store as store_lib  # noqa: E402
from zoo.data import contract  # noqa: E402

SIGNATURE = "recommend"
MAX_EXCLUDE = 1000
MAX_QUERY_CHARS = 500


class BadRequest(ValueError):
    """A client mistake: answered 400 with its message."""


class RecommenderService:
    """Ingest and recommend, independent of HTTP (the handler below is a thin shell)."""

    def __init__(self, store: store_lib.EventStore, client, model_name: str, items: dict,
                 history_limit: int = 200, session_gap_seconds: int = 1800,
                 timeout: float = 10.0):
        self.store, self.client, self.model_name = store, client, model_name
        self.items = items
        self._row = {i: r for r, i in enumerate(items["item_id"].to_numpy(
            zero_copy_only=False).tolist())}
        self.history_limit = int(history_limit)
        self.session_gap = int(session_gap_seconds)
        self.timeout = float(timeout)
        self._k_max = None  # the model's K, once an answer has shown it

    def ingest(self, rows) -> int:
        return self.store.append(store_lib.validate(rows, self.items))

    def request_inputs(self, user_id: str, query: str, at: int, exclude=()) -> tuple:
        """(the `recommend` inputs of one request, its session id, cold start?)."""
        from zoo.data import requests as requests_lib, serving_features

        # Events of items no longer in the catalogue (a store older than the export) drop out.
        rows = [r for r in self.store.user_events(user_id) if r["timestamp"] < at
                and (r["event"] == "search" or r["item_id"] in self._row)]
        if rows and at - rows[-1]["timestamp"] <= self.session_gap:
            session = rows[-1]["session_id"]
        else:
            session = f"recommend-{at}"
        reqs = requests_lib.Requests(
            user_id=np.array([user_id], object), session_id=np.array([session], object),
            timestamp=np.array([at], np.int64), query=np.array([query], object),
            clicked=[np.zeros(0, np.int64)], purchased=[np.zeros(0, np.int64)])
        inputs = serving_features.request_inputs(
            store_lib.tables_of(rows, self._items_of(rows)), reqs, self.history_limit)
        inputs["exclude_item_id"] = np.array([list(exclude) or [""]], object)
        return inputs, session, not rows

    def _items_of(self, rows: list) -> dict:
        """The catalogue rows the user's events name (and the first, which the request's
        placeholder candidate uses): the request's inputs read nothing else of the
        catalogue, and its cost then does not grow with the catalogue."""
        import pyarrow as pa

        wanted = sorted({0} | {self._row[r["item_id"]] for r in rows
                               if r["item_id"] in self._row})
        take = pa.array(wanted)
        return {k: (v.take(take) if isinstance(v, pa.Array) else v[wanted])
                for k, v in self.items.items()}

    def recommend(self, user_id: str, query: str = "", k: int = 10, at: int | None = None,
                  exclude=()) -> dict:
        if not user_id:
            raise BadRequest("user_id: expected a non-empty user id")
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"query: {len(query)} characters; at most {MAX_QUERY_CHARS}")
        if k < 1:
            raise BadRequest(f"k: got {k}, expected an integer >= 1")
        if len(exclude) > MAX_EXCLUDE:
            raise BadRequest(f"exclude: {len(exclude)} items; at most {MAX_EXCLUDE}")
        at = int(time.time()) if at is None else int(at)
        if not 0 <= at < contract.MAX_TIMESTAMP:
            raise BadRequest(f"at: got {at}, expected Unix seconds")
        if self._k_max is not None and k > self._k_max:  # known from an earlier answer
            raise BadRequest(f"k: got {k}; this model answers at most {self._k_max}")
        started = time.perf_counter()
        inputs, session, cold = self.request_inputs(user_id, query, at, exclude)
        built = time.perf_counter()
        out = self.client.predict(self.model_name, inputs, signature=SIGNATURE,
                                  timeout=self.timeout)
        answered = time.perf_counter()
        available = self._k_max = int(out["item_id"].shape[1])
        if k > available:
            raise BadRequest(f"k: got {k}; this model answers at most {available}")

        def text(v):
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        items = [{"item_id": text(out["item_id"][0, j]), "title": text(out["title"][0, j]),
                  "category": text(out["category"][0, j]), "brand": text(out["brand"][0, j]),
                  "price": round(float(out["price"][0, j]), 4),
                  "score": float(out["score"][0, j]), "click": float(out["click"][0, j]),
                  "purchase": float(out["purchase"][0, j]),
                  **({"because": self._because(out, j, text)} if "because_item_id" in out
                     else {})}
                 for j in range(k)
                 if np.isfinite(out["score"][0, j])]  # -inf: excluded, too few items left
        return {"user_id": user_id, "query": query, "session_id": session, "at": at,
                "cold_start": cold, "items": items,
                "timing_ms": {"features": round(1000 * (built - started), 2),
                              "model": round(1000 * (answered - built), 2)}}

    def _because(self, out: dict, j: int, text) -> list:
        """Item j's reasons in the answer, with the catalogue's title and category."""
        reasons = []
        for r in range(out["because_item_id"].shape[2]):
            item = text(out["because_item_id"][0, j, r])
            if not item:
                continue
            row = self._row.get(item)
            reasons.append({
                "event": text(out["because_event"][0, j, r]), "item_id": item,
                "title": None if row is None else str(self.items["title"][row]),
                "category": None if row is None else str(self.items["category"][row]),
                "seconds_ago": round(float(out["because_seconds_ago"][0, j, r]), 1),
                "weight": float(out["because_weight"][0, j, r])})
        return reasons

    def healthy(self) -> bool:
        try:
            self.store.user_events("")
            return any(s["state"] == "AVAILABLE" for s in self.client.status(self.model_name))
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False


def _handler(service: RecommenderService, max_body_bytes: int, request_timeout: float):
    import grpc

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout  # socket timeout: a stalled client gives up its thread
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str):
            self._send(code, {"error": message})

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            if url.path == "/healthz":
                ok = service.healthy()
                return self._send(200 if ok else 503, {"healthy": ok})
            if url.path != "/recommend":
                return self._error(404, f"no such path {url.path}; expected /recommend, "
                                        "/events (POST) or /healthz")

            def one(name, default=None):
                values = params.get(name)
                return default if not values else values[-1]

            try:
                k = one("k", "10")
                at = one("at")
                if not re.fullmatch(r"-?[0-9]{1,9}", k):
                    raise BadRequest(f"k: got {k!r}, expected an integer >= 1")
                if at is not None and not re.fullmatch(r"[0-9]{1,12}", at):
                    raise BadRequest(f"at: got {at!r}, expected Unix seconds")
                exclude = [x for x in (one("exclude", "") or "").split(",") if x]
                answer = service.recommend(one("user_id", ""), one("query", ""), int(k),
                                           None if at is None else int(at), exclude)
            except (BadRequest, contract.ContractError) as e:
                return self._error(400, str(e))
            except grpc.RpcError as e:
                code = 503 if e.code() == grpc.StatusCode.UNAVAILABLE else 502
                return self._error(code, f"model server: {e.code().name}: {e.details()}")
            self._send(200, answer)

        def do_POST(self):
            if urllib.parse.urlsplit(self.path).path != "/events":
                self.close_connection = True  # its body is never read
                return self._error(404, f"no such path {self.path}; expected POST /events")
            length = self.headers.get("Content-Length")
            if length is None or not re.fullmatch(r"[0-9]+", length):
                self.close_connection = True  # the body, if any, is never read
                return self._error(411, "POST /events needs a Content-Length >= 0")
            if int(length) > max_body_bytes:
                self.close_connection = True
                return self._error(413, f"body of {length} bytes; at most {max_body_bytes}")
            try:
                body = self.rfile.read(int(length))
            except OSError:  # the socket timed out mid-body
                self.close_connection = True
                return
            if len(body) < int(length):
                self.close_connection = True
                return self._error(400, "the body ended before its Content-Length")
            try:
                rows = json.loads(body)
            except (ValueError, RecursionError) as e:
                return self._error(400, f"POST /events: not JSON: {e}")
            try:
                stored = service.ingest(rows)
            except contract.ContractError as e:
                return self._error(400, str(e))
            self._send(200, {"stored": stored})

    return Handler


def serve(service: RecommenderService, host: str, port: int, max_body_bytes: int = 1 << 20,
          request_timeout: float = 10.0) -> ThreadingHTTPServer:
    """Starts the HTTP server on a thread; returns it (`shutdown()` stops it)."""
    server = ThreadingHTTPServer((host, port),
                                 _handler(service, max_body_bytes, request_timeout))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def read_items(path: str) -> dict:
    """The catalogue the events are checked against: a contract folder or its items table."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    items_path = path if not os.path.isdir(path) else contract._find_table(folder, "items")
    return contract.read_items(items_path)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_name", None, "The model (an export with the recommend "
                        "signature: export.saved_model --retrieval_dir).")
    flags.DEFINE_string("serving", "127.0.0.1:8500", "The model server's gRPC host:port "
                        "(export.serve or tensorflow_model_server).")
    flags.DEFINE_string("items", None, "The catalogue: a contract folder or its items table "
                        "(the one the export was made from).")
    flags.DEFINE_string("events_db", "events.sqlite", "The SQLite file of the event store.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
    flags.DEFINE_integer("port", 8080, "HTTP port (0: any free port).")
    flags.DEFINE_integer("keep_per_user", 500, "Events kept per user in the store.")
    flags.DEFINE_integer("history_limit", 200, "Behaviour events per user sent to the model.")
    flags.DEFINE_integer("session_gap_minutes", 30, "A request continues the user's session "
                         "when its last event is younger than this.")
    flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest POST body accepted.")
    flags.DEFINE_float("request_timeout", 10.0, "Seconds a connection may stall, and the "
                       "gRPC deadline.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    problems = []
    if not FLAGS.model_name:
        problems.append("--model_name is required")
    if not FLAGS.items:
        problems.append("--items is required (the catalogue's contract folder or items table)")
    if not 0 <= FLAGS.port < 65536:
        problems.append(f"--port must be in [0, 65535], got {FLAGS.port}")
    for name in ("keep_per_user", "history_limit", "session_gap_minutes", "max_body_bytes"):
        if getattr(FLAGS, name) < 1:
            problems.append(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
    if not FLAGS.request_timeout > 0:
        problems.append(f"--request_timeout must be > 0, got {FLAGS.request_timeout}")
    db_dir = os.path.dirname(os.path.abspath(FLAGS.events_db))
    if not os.path.isdir(db_dir):
        problems.append(f"--events_db {FLAGS.events_db}: folder {db_dir} does not exist")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    from export.client import PredictionClient

    try:
        items = read_items(FLAGS.items)
    except (contract.ContractError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = store_lib.SQLiteEventStore(FLAGS.events_db, FLAGS.keep_per_user)
    client = PredictionClient(FLAGS.serving, timeout=FLAGS.request_timeout)
    service = RecommenderService(store, client, FLAGS.model_name, items,
                                 FLAGS.history_limit, 60 * FLAGS.session_gap_minutes,
                                 FLAGS.request_timeout)
    server = serve(service, FLAGS.host, FLAGS.port, FLAGS.max_body_bytes,
                   FLAGS.request_timeout)
    host, port = server.server_address[:2]
    print(f"recommender at http://{host}:{port} (model {FLAGS.model_name} at "
          f"{FLAGS.serving}, events in {FLAGS.events_db})", flush=True)
    stop = threading.Event()
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    store.close()
    client.close()
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
