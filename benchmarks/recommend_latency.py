"""Latency of a real-time recommendation against the catalogue's size, on 127.0.0.1.

    python benchmarks/recommend_latency.py --model_dir runs/bert_mtl_small \\
        --retrieval_dir runs/two_tower_small --sizes 10000,100000,1000000

For each catalogue size N: the shop's items plus synthetic ones up to N (drawn from the
shop's own categories, brands, title words and prices), exported with the `recommend`
signature (--candidates re-ranked, default 200; K 10; batch 1), then
  - the signature alone: the loaded SavedModel called in-process, inputs prepared;
  - end to end: GET /recommend on the recommender service (SQLite store holding the
    requesting users' events) -> gRPC -> `export.serve` -> JSON,
p50/p99 over --requests requests of real users of the log, and where the time goes (the
service's own split: building the request's features, the gRPC call). The server, the
service and this client share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402


def percentiles(ms) -> tuple[float, float]:
    ms = np.asarray(ms)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def grown_catalogue(tables, size: int, seed: int = 0):
    """`tables` with synthetic items appended up to `size` items (no events of them)."""
    from zoo.data import contract

    items = tables.items
    n = len(items["price"])
    extra = max(0, size - n)
    if not extra:
        return tables
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n, extra)
    other = rng.integers(0, n, extra)
    text = {c: np.asarray(items[c].to_numpy(zero_copy_only=False), object)
            for c in ("title", "category", "brand")}
    words = [t.split() for t in text["title"]]
    titles = [" ".join(words[a][:2] + words[b][2:]) for a, b in zip(pick, other)]
    grown = {
        "item_id": pa.concat_arrays([items["item_id"], pa.array(
            [f"synthetic-{i}" for i in range(extra)], pa.string())]),
        "title": pa.concat_arrays([items["title"], pa.array(titles, pa.string())]),
        "category": pa.concat_arrays([items["category"], items["category"].take(pa.array(pick))]),
        "brand": pa.concat_arrays([items["brand"], items["brand"].take(pa.array(other))]),
        "price": np.r_[items["price"], items["price"][pick] * rng.uniform(0.8, 1.25, extra)],
    }
    return contract.Tables(events=tables.events, items=grown, events_path=tables.events_path,
                           items_path=tables.items_path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", required=True, help="a trained ranker (bert_mtl, ...)")
    p.add_argument("--retrieval_dir", required=True, help="a trained two_tower")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--candidates", default="200", help="candidates re-ranked per request; "
                   "a comma list measures each")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ranker_history", type=int, default=0, help="history events the ranker "
                   "is given per candidate (0: what its preprocessor reads)")
    p.add_argument("--explain_steps", default="0", help="reasons per answered item "
                   "(integrated-gradients steps in the graph; 0: none); a comma list "
                   "measures each")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args()

    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    from export import (client as client_lib, event_store, recommend_signature, recommender,
                        saved_model, serve)
    from trainers.core import recommend_lib, rundir
    from zoo.data import contract, prepare as prepare_lib

    ranker, ranker_labels = rundir.load_trained(args.model_dir)
    retriever, retriever_labels = rundir.load_trained(args.retrieval_dir)
    data_dir = rundir.train_config_of(args.model_dir).get("data_dir")
    base_tables = contract.read_contract(prepare_lib.resolve_contract_dir(data_dir))
    ev = base_tables.events
    # The requesting users: the log's last sessions' users, their events in the store.
    users = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False), object)
    order = np.argsort(ev["timestamp"], kind="stable")
    chosen = list(dict.fromkeys(users[order][::-1].tolist()))[:50]
    events = event_store.log_rows(base_tables, chosen)
    at = int(ev["timestamp"].max()) + 1
    results = []
    runs = [(int(s), int(c), int(e)) for s in args.sizes.split(",")
            for c in args.candidates.split(",") for e in args.explain_steps.split(",")]
    for size, candidates, explain_steps in runs:
        options = recommend_lib.Options(k=args.k, candidates=candidates,
                                        ranker_history=args.ranker_history,
                                        explain_steps=explain_steps)
        tmp = tempfile.mkdtemp(prefix="recommend_latency-")
        try:
            tables = grown_catalogue(base_tables, size)
            t0 = time.time()
            rec = recommend_signature.Recommender(
                ranker, retriever, tables, ranker_labels.history_length,
                retriever_labels.history_length, options)
            version = os.path.join(tmp, "shop", "1")
            saved_model.write_saved_model(ranker, version, ranker_labels.history_length, rec)
            export_s = time.time() - t0
            on_disk = sum(os.path.getsize(os.path.join(d, f))
                          for d, _, fs in os.walk(version) for f in fs)

            # The signature alone, in-process.
            loaded = tf.saved_model.load(version)
            fn = loaded.signatures[recommend_signature.SIGNATURE]
            store = event_store.SQLiteEventStore(os.path.join(tmp, "events.sqlite"))
            for start in range(0, len(events), event_store.MAX_ROWS_PER_APPEND):
                store.append(event_store.validate(
                    events[start:start + event_store.MAX_ROWS_PER_APPEND], tables.items))
            service = recommender.RecommenderService(store, None, "shop", tables.items)
            prepared = []
            for i in range(min(len(chosen), args.requests)):
                inputs, _, _ = service.request_inputs(chosen[i], "", at)
                prepared.append(recommend_signature.to_tensors(inputs))
            for t in prepared[:3]:
                fn(**t)
            signature_ms = []
            for i in range(args.requests):
                t = prepared[i % len(prepared)]
                s = time.perf_counter()
                fn(**t)
                signature_ms.append(1e3 * (time.perf_counter() - s))
            del loaded, fn

            # End to end: HTTP -> store -> features -> gRPC -> server.
            proc, target = serve.launch(["--model_name", "shop", "--model_base_path",
                                         os.path.join(tmp, "shop")],
                                        os.path.join(tmp, "server.log"), timeout=900)
            client = client_lib.PredictionClient(target)
            service.client = client
            server = recommender.serve(service, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            try:
                end_ms, feature_ms, model_ms = [], [], []
                for i in range(args.requests + 3):
                    user = chosen[i % len(chosen)]
                    s = time.perf_counter()
                    with urllib.request.urlopen(
                            f"{url}/recommend?user_id={user}&k={args.k}&at={at}",
                            timeout=120) as r:
                        answer = json.loads(r.read())
                    if i >= 3:  # the first calls warm the client's metadata cache
                        end_ms.append(1e3 * (time.perf_counter() - s))
                        feature_ms.append(answer["timing_ms"]["features"])
                        model_ms.append(answer["timing_ms"]["model"])
            finally:
                server.shutdown()
                client.close()
                serve.terminate(proc)
                store.close()
            row = {"catalogue": size, "candidates": candidates, "explain_steps": explain_steps,
                   "ranker_history": args.ranker_history, "export_seconds": round(export_s, 1),
                   "export_mb": round(on_disk / 2**20, 1),
                   "signature_ms": percentiles(signature_ms),
                   "end_to_end_ms": percentiles(end_ms),
                   "features_ms": percentiles(feature_ms), "grpc_ms": percentiles(model_ms)}
            results.append(row)
            print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'catalogue':>10} {'cands':>5} {'expl':>4} {'export':>8} {'size MB':>8} {'signature p50/p99':>18} "
          f"{'end-to-end p50/p99':>19} {'features p50/p99':>17} {'gRPC p50/p99':>14}")
    for r in results:
        def pair(v):
            return f"{v[0]:.0f}/{v[1]:.0f} ms"
        print(f"{r['catalogue']:>10,} {r['candidates']:>5} {r['explain_steps']:>4} "
              f"{r['export_seconds']:>7.0f}s {r['export_mb']:>8.0f} "
              f"{pair(r['signature_ms']):>18} {pair(r['end_to_end_ms']):>19} "
              f"{pair(r['features_ms']):>17} {pair(r['grpc_ms']):>14}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
