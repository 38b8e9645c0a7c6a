"""Serving latency and throughput of an export through the local gRPC server, on 127.0.0.1.

    python benchmarks/serving_latency.py --export_base runs/exports --name bert_mtl_small

Prints p50/p99 latency of Predict (serving_default, raw features) at batch 1 and 64 through
gRPC, the same signature called in-process (loaded SavedModel, tensors prepared) in the same
run, their p99 ratio at batch 1 (the server's overhead; goal <= 1.5), and QPS with 1 and 8
concurrent clients. The server and this client share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401

from export import client as client_lib, saved_model, serve  # noqa: E402


def percentiles(seconds: list) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def inputs_of_batch(version_dir: str, batch: int) -> dict:
    """Raw serving inputs of `batch` rows, tiled from the version's warmup requests."""
    requests = saved_model.read_warmup(os.path.join(version_dir, "assets.extra",
                                                    saved_model.WARMUP_FILE))
    r = max((r for r in requests if r.model_spec.signature_name == "serving_default"),
            key=lambda r: tf.make_ndarray(r.inputs["query"]).shape[0])
    cols = {k: tf.make_ndarray(v) for k, v in r.inputs.items()}
    n = len(cols["query"])
    idx = np.arange(batch) % n
    return {k: v[idx] for k, v in cols.items()}


def qps(client, request, clients: int, seconds: float) -> float:
    count = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i):
        while time.perf_counter() < stop:
            client.predict_response(request)
            count[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export_base", default="runs/exports")
    p.add_argument("--name", default="bert_mtl_small")
    p.add_argument("--requests", type=int, default=300, help="Timed calls per measurement.")
    p.add_argument("--seconds", type=float, default=10.0, help="Duration of each QPS run.")
    p.add_argument("--threads", type=int, default=8, help="Server threads.")
    args = p.parse_args()
    model_base = os.path.join(args.export_base, args.name)
    versions = saved_model.versions(model_base)
    if not versions:
        sys.exit(f"error: no version under {model_base}; run `make demo` or "
                 "python -m export.saved_model first")
    version_dir = os.path.join(model_base, str(versions[-1]))
    print(f"export {version_dir}; {os.cpu_count()} CPUs; tensorflow {tf.__version__}")

    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    batches = {b: inputs_of_batch(version_dir, b) for b in (1, 64)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = serve.launch(["--model_name", args.name, "--model_base_path", model_base,
                                     "--grpc_max_threads", str(args.threads),
                                     "--file_system_poll_wait_seconds", "0"],
                                    os.path.join(tmp, "server.log"))
        try:
            with client_lib.PredictionClient(target) as client:
                for b, cols in batches.items():
                    tensors = {k: tf.constant(v) for k, v in cols.items()}
                    request = client.predict_request(args.name, cols)
                    timed(lambda: fn(**tensors), 20)  # warm both paths
                    timed(lambda: client.predict_response(request), 20)
                    # Interleave the two measurements so that both see the same machine state.
                    local, remote = [], []
                    for _ in range(args.requests // 10):
                        local += timed(lambda: fn(**tensors), 10)
                        remote += timed(lambda: client.predict_response(request), 10)
                    rows.append((b, percentiles(remote), percentiles(local)))
                request1 = client.predict_request(args.name, batches[1])
                throughput = {c: qps(client, request1, c, args.seconds) for c in (1, 8)}
        finally:
            serve.terminate(proc)

    print(f"\n{'batch':>5} {'gRPC p50 ms':>12} {'gRPC p99 ms':>12} {'in-proc p50':>12} "
          f"{'in-proc p99':>12} {'p99 ratio':>10}")
    for b, (g50, g99), (l50, l99) in rows:
        print(f"{b:>5} {g50:>12.2f} {g99:>12.2f} {l50:>12.2f} {l99:>12.2f} {g99 / l99:>10.2f}")
    for c, q in throughput.items():
        print(f"QPS, batch 1, {c} concurrent client{'s' if c > 1 else ''}: {q:.0f}")
    ratio = rows[0][1][1] / rows[0][2][1]
    print(f"\nserver overhead at batch 1: gRPC p99 / in-process p99 = {ratio:.2f} "
          f"(goal <= 1.5): {'met' if ratio <= 1.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
