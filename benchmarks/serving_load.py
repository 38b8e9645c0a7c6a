"""Load on the local model server, with and without server-side batching, on 127.0.0.1.

    python benchmarks/serving_load.py --export_base runs/exports --name bert_mtl_small \
        [--clients 1,8,32] [--seconds 20] [--max_batch_size 32] [--batch_timeout_micros 2000]

For each configuration (`export.serve` without batching; with `--enable_batching` and a
BatchingParameters file), one server process is started, and for each number of concurrent
clients every client sends batch-1 Predict requests (serving_default, one real row from the
version's warmup requests) back to back for --seconds. Clients are spread over 4 processes
(threads within), so the client side is not one GIL. Prints and writes (--output, JSON)
QPS and p50/p99 latency per configuration and client count. The server and the clients
share the machine's cores: figures are for this machine, not for a server alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo import quiet  # noqa: E402

quiet.start()

import numpy as np  # noqa: E402

CLIENT_PROCESSES = 4


def one_row_request(version_dir: str, name: str) -> bytes:
    """A serialized batch-1 PredictRequest from the version's warmup requests."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from export import saved_model

    requests = saved_model.read_warmup(os.path.join(version_dir, "assets.extra",
                                                    saved_model.WARMUP_FILE))
    r = next(r for r in requests if r.model_spec.signature_name == "serving_default")
    out = predict_pb2.PredictRequest()
    out.model_spec.name = name
    out.model_spec.signature_name = "serving_default"
    for k, v in r.inputs.items():
        out.inputs[k].CopyFrom(tf.make_tensor_proto(tf.make_ndarray(v)[:1]))
    return out.SerializeToString()


def _client_process(target: str, request: bytes, threads: int, seconds: float, go, start,
                    queue) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=None, response_deserializer=None)
    call(request, timeout=60)  # connected
    queue.put("ready")
    go.wait()
    start = start.value
    latencies, errors = [], []
    lock = threading.Lock()

    def worker():
        mine, bad = [], 0
        while time.time() < start:
            time.sleep(0.001)
        stop = start + seconds
        while True:
            t0 = time.perf_counter()
            if time.time() >= stop:
                break
            try:
                call(request, timeout=30)
                mine.append(time.perf_counter() - t0)
            except grpc.RpcError:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors.append(bad)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put((latencies, sum(errors)))


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of one process, or of the whole machine (pid None)."""
    tick = os.sysconf("SC_CLK_TCK")
    if pid is None:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        return (int(fields[0]) + int(fields[1]) + int(fields[2])) / tick  # user nice system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def load(target: str, request: bytes, clients: int, seconds: float,
         server_pid: int | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = min(clients, CLIENT_PROCESSES)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    go, start = ctx.Event(), ctx.Value("d", 0.0)
    ps = [ctx.Process(target=_client_process,
                      args=(target, request, n, seconds, go, start, queue)) for n in per]
    for p in ps:
        p.start()
    for _ in ps:  # every process connected and waiting
        assert queue.get(timeout=300) == "ready"
    start.value = time.time() + 0.5
    go.set()
    time.sleep(0.5)
    cpu0 = (cpu_seconds(server_pid) if server_pid else 0.0, cpu_seconds())
    time.sleep(seconds)
    cpu1 = (cpu_seconds(server_pid) if server_pid else 0.0, cpu_seconds())
    latencies, errors = [], 0
    for _ in ps:
        lat, bad = queue.get()
        latencies.extend(lat)
        errors += bad
    for p in ps:
        p.join()
    ms = np.asarray(latencies) * 1e3
    server_cores = (cpu1[0] - cpu0[0]) / seconds
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "server_cores": server_cores, "other_cores": (cpu1[1] - cpu0[1]) / seconds
            - server_cores,
            "qps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def main() -> int:
    from export import layout, serve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export_base", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument("--batch_timeout_micros", type=int, default=2000)
    p.add_argument("--num_batch_threads", type=int, default=2)
    p.add_argument("--grpc_max_threads", type=int, default=64)
    p.add_argument("--output", default="serving_load.json")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    base = os.path.join(args.export_base, args.name)
    versions = layout.version_dirs(base)
    if not versions:
        print(f"error: no version folder under {base}", file=sys.stderr)
        return 2
    request = one_row_request(versions[max(versions)], args.name)

    work = tempfile.mkdtemp(prefix="serving_load_")
    params = os.path.join(work, "batching.config")
    with open(params, "w") as f:
        f.write(f"max_batch_size {{ value: {args.max_batch_size} }}\n"
                f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
                f"num_batch_threads {{ value: {args.num_batch_threads} }}\n"
                f"max_enqueued_batches {{ value: 1000 }}\n")
    configs = {"no batching": [],
               "batching": ["--enable_batching", "--batching_parameters_file", params]}
    results = []
    for label, extra in configs.items():
        log = os.path.join(work, f"server_{len(results)}.log")
        proc, target = serve.launch(["--model_base_path", base, "--model_name", args.name,
                                     "--file_system_poll_wait_seconds", "0",
                                     "--grpc_max_threads", str(args.grpc_max_threads),
                                     *extra], log)
        try:
            for c in clients:
                r = {"config": label, **load(target, request, c, args.seconds, proc.pid)}
                results.append(r)
                print(f"{label:<12} clients {c:>3}: {r['qps']:8.1f} QPS, p50 {r['p50_ms']:7.2f} "
                      f"ms, p99 {r['p99_ms']:7.2f} ms, errors {r['errors']}; cores busy: "
                      f"server {r['server_cores']:.2f}, clients and rest "
                      f"{r['other_cores']:.2f}", flush=True)
        finally:
            serve.terminate(proc)
    by = {(r["config"], r["clients"]): r for r in results}
    if ("batching", max(clients)) in by and ("no batching", max(clients)) in by:
        top, one = max(clients), min(clients)
        gain = by[("batching", top)]["qps"] / by[("no batching", top)]["qps"]
        ratio = by[("batching", top)]["p99_ms"] / by[("no batching", one)]["p99_ms"]
        print(f"batching at {top} clients: QPS x{gain:.2f} (goal >= 3); p99 {ratio:.2f} x the "
              f"single-client p99 without batching (goal <= 2)")
    with open(args.output, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
