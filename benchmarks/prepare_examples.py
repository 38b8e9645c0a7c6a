"""Preparation throughput and memory: contract folder -> TFDS train/eval examples.

    python benchmarks/prepare_examples.py --sizes 1m,10m,30m --streaming on
    python benchmarks/prepare_examples.py --sizes 100k,1m,10m --streaming off

For each size it simulates a shop of about that many events (oracle off: the benchmark is
about preparation), then runs `python -m zoo.data.prepare` in a fresh process and prints
wall time, events/s, examples/s and that process's peak RSS (from wait4's rusage).
`--streaming on` prepares by user buckets of `--bucket_events` events (flat memory);
`off` holds the whole log (about 0.65 GiB per million events).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# About 200 events per user over 28 days with the simulator's defaults.
SIZES = {"100k": dict(num_users=500, num_items=2000),
         "1m": dict(num_users=5000, num_items=10000),
         "10m": dict(num_users=50000, num_items=50000, num_brands=300),
         "30m": dict(num_users=150000, num_items=100000, num_brands=500)}


def run_measured(cmd, env) -> tuple[float, int, str]:
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=REPO, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return time.time() - start, usage.ru_maxrss * 1024, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1m,10m")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "ecom_zoo_bench"))
    parser.add_argument("--streaming", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--bucket_events", type=int, default=1_000_000)
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    for size in args.sizes.split(","):
        data = os.path.join(args.work_dir, f"shop_{size}")
        tfds_dir = os.path.join(args.work_dir, f"tfds_{size}")
        if not os.path.exists(data):
            flags = [f"--{k}={v}" for k, v in SIZES[size].items()]
            sim_s, sim_rss, _ = run_measured(
                [sys.executable, "-m", "zoo.data.simulate", "--output_dir", data,
                 "--oracle_replays", "0", "--noverbose", *flags], env)
            print(f"[{size}] simulated in {sim_s:.1f}s (peak {sim_rss / 2**30:.2f} GiB)",
                  flush=True)
        subprocess.run(["rm", "-rf", tfds_dir], check=True)
        secs, rss, out = run_measured(
            [sys.executable, "-m", "zoo.data.prepare", "--data_dir", data,
             "--tfds_dir", tfds_dir, f"--streaming={args.streaming}",
             f"--bucket_events={args.bucket_events}"], env)
        events = int(next(l for l in out.splitlines() if l.startswith("events read"))
                     .split(":")[1].replace(",", ""))
        examples = sum(int(l.split(":")[1].split("examples")[0].replace(",", ""))
                       for l in out.splitlines() if " split     :" in l)
        subprocess.run(["rm", "-rf", tfds_dir], check=True)  # the disk is for the next size
        rows.append({"size": size, "streaming": args.streaming, "events": events, "examples": examples,
                     "seconds": round(secs, 1), "events_per_s": round(events / secs),
                     "examples_per_s": round(examples / secs),
                     "peak_rss_gib": round(rss / 2**30, 2)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| events | examples | wall s | events/s | examples/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['events']:,} | {r['examples']:,} | {r['seconds']} | {r['events_per_s']:,} "
              f"| {r['examples_per_s']:,} | {r['peak_rss_gib']} |")


if __name__ == "__main__":
    main()
