"""ParameterServerStrategy against one device as the item vocabulary grows (1M, 10M ids).

    python benchmarks/ps_scale.py [--presets tiny,small] [--items 1000000,10000000]
        [--strategies parameter_server,one_device] [--num_workers 1] [--num_ps 2]
        [--steps 60] [--batch_size 256] [--data_dir CONTRACT] [--out runs/ps_scale.json]
        [--lazy_table_updates auto|true|false]

Each row is one `python -m trainers.multitask` run (under parameter_server a local cluster
of trainers.launch: chief = coordinator, workers, ps) of a preset whose item vocabulary
has N ids. The vocabulary is the trainer's own, fitted once per preset by a 1-step
one_device run into a scratch model_dir, with `item_id` padded by synthetic ids
("bench-item-%d") up to N and written to MODEL_DIR/vocabulary.json before training (the
trainer reuses it). The data only ever looks up the real ids, so the rows looked up per
step (bounded by batch x history) are those of a real shop, while the item table, its
optimizer slots and the string lookup really have N rows. A 10M-id vocabulary is a large
JSON file and a large StringLookup in every process that builds the model or the input
pipeline: that cost is part of what is measured (memory).

Measured, per (preset, items, strategy):
  examples/s, step ms  from the coordinator's progress bar (`--steps_per_loop` steps per
                       update): the wall time between the first update at a step
                       >= --warmup (A) and the last one (B, the final step), as the lines
                       reach this process; examples/s = (B - A) x batch / that time.
                       metrics.json's examples_per_second (whole run, warm-up included)
                       is shown next to it.
  peak RSS MiB         VmHWM of /proc/<pid>/status of every process (chief, each worker,
                       each ps; the single trainer under one_device), polled every 0.5 s
                       for the whole run (data preparation, training, the final gathered
                       copy, evaluation and saving included); growth in the last 0.5 s of
                       a process is missed. For one_device, the kernel's exact ru_maxrss
                       (wait4) is kept in the JSON as a check of the polling.
  bytes/step           the loopback interface's received bytes (/proc/net/dev, `lo:`) at
                       A and at B, difference / (B - A). No checkpoint falls between A and
                       B (--checkpoint_every is set past the end). This counts ALL
                       loopback traffic on the machine: run nothing else meanwhile. Under
                       one_device it is 0 by construction (one process, no RPC); the
                       loopback delta measured there anyway is kept in the JSON as the
                       background level. Before every run the loopback rate is also sampled
                       for 2 s; a warning is printed when that background, over the
                       window, would be more than 5% of the figure.
  item table MiB       rows x dim x 4 (float32), rows = len(item_id) + 1 + num_oov_indices;
                       the number of shards is read from the trainer's "N rows on DEVICE"
                       lines under parameter_server (1 when unsharded or one_device).
                       If whole tables travelled every step, bytes/step would be at least
                       this.

Both strategies run with --jit_compile=false by default (XLA cannot compile a step whose
variables live on parameter servers, so this compares the same step). All runs go to
scratch directories that are removed at the end. A failed run prints its output's tail and
the benchmark goes on with the next row.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainers import launch  # noqa: E402  (no TensorFlow import: this process stays light)

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PREFIX = re.compile(r"^\[([a-z]+:\d+)\] ?")
PROGRESS = re.compile(r"^\s*(\d+)/(\d+) ")
TABLE_LINE = re.compile(r"item_embedding/embeddings: (.*)$")
SHARD = re.compile(r"(\d+) rows on (\S+?)(?:,|$)")
POLL_SECONDS = 0.5
BACKGROUND_SECONDS = 2.0
MIB = 2 ** 20


# --- measurements ------------------------------------------------------------------------
def loopback_rx_bytes() -> int:
    with open("/proc/net/dev", encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError("no lo interface in /proc/net/dev")


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None  # a zombie has no Vm* lines


class Watch:
    """Receives every output line of one run (from the reader threads) and samples the
    progress window; a poller thread keeps every process's peak RSS."""

    def __init__(self, batch_size: int, warmup: int, coordinator: str | None,
                 echo: bool = False):
        self.batch_size = batch_size
        self.warmup = warmup
        self.coordinator = coordinator  # "chief:0" under PS; None: unprefixed lines
        self.echo = echo
        self.tail = collections.deque(maxlen=60)
        self.a = None  # (step, seconds, rx bytes)
        self.b = None
        self.rss_at_b: dict[str, int] = {}
        self.shards: list[tuple[int, str]] = []
        self.peak: dict[str, int] = {}
        self._pids: Callable = lambda: {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="rss-poller")

    # -- lines ----------------------------------------------------------------------------
    def line(self, raw: str) -> None:
        now = time.monotonic()
        text = ANSI.sub("", raw).replace("\b", "")
        if text.strip():
            self.tail.append(text)
            if self.echo:
                print("    " + text, flush=True)
        task = None
        match = PREFIX.match(text)
        if match:
            task, text = match.group(1), text[match.end():]
        table = TABLE_LINE.search(text)
        if table:
            self.shards = [(int(r), d) for r, d in SHARD.findall(table.group(1))]
        if task != self.coordinator:
            return
        progress = PROGRESS.match(text)
        if not progress:
            return
        step = int(progress.group(1))
        if step == 0 or step < self.warmup:
            return
        sample = (step, now, loopback_rx_bytes())
        if self.a is None:
            self.a = sample
        elif step > self.a[0]:
            self.b = sample
            self.rss_at_b = {n: v for n, v in ((n, vm_hwm_bytes(p))
                                               for n, p in self._pids().items()) if v}

    # -- memory ---------------------------------------------------------------------------
    def start_polling(self, pids) -> None:
        """pids: a callable returning {task name: pid} (tasks can be (re)started late)."""
        self._pids = pids
        self._poller.start()

    def stop_polling(self) -> None:
        self._sample()
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join()

    def _sample(self) -> None:
        for name, pid in list(self._pids().items()):
            value = vm_hwm_bytes(pid)
            if value:
                self.peak[name] = max(self.peak.get(name, 0), value)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(POLL_SECONDS)

    # -- results --------------------------------------------------------------------------
    def window(self) -> dict | None:
        if self.a is None or self.b is None:
            return None
        steps = self.b[0] - self.a[0]
        seconds = self.b[1] - self.a[1]
        return {"step_a": self.a[0], "step_b": self.b[0], "seconds": seconds,
                "examples_per_second": steps * self.batch_size / seconds,
                "step_ms": 1e3 * seconds / steps,
                "loopback_bytes_per_step": (self.b[2] - self.a[2]) / steps}


# --- runs --------------------------------------------------------------------------------
def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TF_CONFIG", None)
    return env


def trainer_args(args, preset: str, model_dir: str, strategy: str, steps: int) -> list:
    out = ["--preset", preset, f"--strategy={strategy}", "--model_dir", model_dir,
           "--steps", str(steps), "--steps_per_loop", str(args.steps_per_loop),
           "--checkpoint_every", str(10 ** 9), "--batch_size", str(args.batch_size),
           "--jit_compile", args.jit_compile]
    out += [f"--lazy_table_updates={args.lazy_table_updates}"]
    if args.data_dir:
        out += ["--data_dir", args.data_dir]
    if args.tfds_dir:
        out += ["--tfds_dir", args.tfds_dir]
    if strategy == "parameter_server" and args.ps_min_shard_bytes:
        out += ["--ps_min_shard_bytes", str(args.ps_min_shard_bytes)]
    return out


def _read_lines(pipe, out: Callable[[str], None]) -> None:
    """Lines of a child's output; `\\r` ends a line too (progress bar updates)."""
    buffer = b""
    while True:
        data = os.read(pipe.fileno(), 65536)
        if not data:
            break
        buffer += data
        parts = re.split(rb"\r\n|\r|\n", buffer)
        buffer = parts.pop()
        for part in parts:
            out(part.decode("utf-8", "replace"))
    if buffer:
        out(buffer.decode("utf-8", "replace"))
    pipe.close()


def run_one_device(args, targs: list, watch: Watch, timeout: float) -> tuple[int, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "trainers.multitask", *targs],
                            env=child_env(), cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, watch.line),
                              daemon=True)
    reader.start()
    watch.start_polling(lambda: {"trainer": proc.pid})
    extra = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            # wait4 rather than Popen.wait: the kernel's exact peak RSS comes with it.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                extra["ru_maxrss_mib"] = usage.ru_maxrss * 1024 / MIB
                break
            if time.monotonic() > deadline:
                watch.line(f"(ps_scale: still running after {timeout:g}s: killed)")
                os.killpg(proc.pid, 9)
                proc.wait()
                break
            watch._sample()  # one last look before it exits, too
            time.sleep(0.1)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        watch.stop_polling()
        reader.join(timeout=10)
    return proc.returncode, extra


def run_parameter_server(args, targs: list, watch: Watch, timeout: float
                         ) -> tuple[int, dict]:
    cluster = launch.Cluster(args.num_workers, args.num_ps, targs, env=child_env(),
                             output=watch.line, grace_seconds=10.0)
    try:
        cluster.start()
        watch.start_polling(lambda: {n: p.pid for n, p in list(cluster.tasks.items())})
        try:
            code = cluster.wait(timeout=timeout)
        except TimeoutError:
            watch.line(f"(ps_scale: still running after {timeout:g}s: stopped)")
            code = 124
    finally:
        cluster.stop()
        watch.stop_polling()
    return code, {}


def fit_vocabulary(args, preset: str, scratch: str) -> tuple[dict, dict]:
    """The trainer's own vocabulary (and model config) of `preset`: a 1-step one_device run."""
    model_dir = os.path.join(scratch, f"fit-{preset}")
    watch = Watch(args.batch_size, 1, None, echo=args.verbose)
    code, _ = run_one_device(args, trainer_args(args, preset, model_dir, "one_device", 1),
                             watch, args.timeout)
    if code != 0:
        raise RuntimeError(f"vocabulary fit of {preset} {launch.describe_exit(code)}:\n"
                           + "\n".join(watch.tail))
    with open(os.path.join(model_dir, "vocabulary.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(os.path.join(model_dir, "run_spec.json"), encoding="utf-8") as f:
        model_config = json.load(f)["model_config"]
    shutil.rmtree(model_dir, ignore_errors=True)
    return vocabulary, model_config


def write_padded_vocabulary(vocabulary: dict, items: int, path: str) -> int:
    """vocabulary with item_id padded to `items` ids, streamed to `path` (a 10M-id list is
    never held here); returns the number of real ids."""
    padded = ("item_id", "item_titles")  # one title per item id; synthetic ids: none ("")
    rest = {k: v for k, v in vocabulary.items() if k not in padded}
    real = list(vocabulary["item_id"])
    if len(real) > items:
        raise ValueError(f"--items {items} is below the {len(real)} fitted item ids")
    head = json.dumps(rest)
    chunk = 100_000
    with open(path, "w", encoding="utf-8") as f:
        f.write(head[:-1])
        for key in padded:
            if key not in vocabulary:
                continue
            values = list(vocabulary[key])
            f.write(f', "{key}": [' + ", ".join(json.dumps(s) for s in values))
            for start in range(0, items - len(values), chunk):
                stop = min(items - len(values), start + chunk)
                f.write("".join(
                    (", " if (i or values) else "")
                    + (f'"bench-item-{i}"' if key == "item_id" else '""')
                    for i in range(start, stop)))
            f.write("]")
        f.write("}")
    return len(real)


def read_metrics(model_dir: str) -> dict:
    path = os.path.join(model_dir, "metrics.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    return {k: metrics.get(k) for k in ("examples_per_second", "step", "start_step",
                                        "train_seconds")}


def bench_row(args, preset: str, items: int, strategy: str, vocab_path: str,
              model_config: dict, scratch: str) -> dict:
    model_dir = os.path.join(scratch, f"{preset}-{items}-{strategy}")
    os.makedirs(model_dir)
    shutil.copyfile(vocab_path, os.path.join(model_dir, "vocabulary.json"))
    targs = trainer_args(args, preset, model_dir, strategy, args.steps)
    ps = strategy == "parameter_server"
    watch = Watch(args.batch_size, args.warmup, "chief:0" if ps else None, echo=args.verbose)
    rx0 = loopback_rx_bytes()
    time.sleep(BACKGROUND_SECONDS)
    background = (loopback_rx_bytes() - rx0) / BACKGROUND_SECONDS
    t0 = time.monotonic()
    if ps:
        code, extra = run_parameter_server(args, targs, watch, args.timeout)
    else:
        code, extra = run_one_device(args, targs, watch, args.timeout)
    dim = int(model_config["hidden_dim"])
    rows = items + 1 + int(model_config["num_oov_indices"])
    row = {"preset": preset, "items": items, "strategy": strategy,
           "num_workers": args.num_workers if ps else 0, "num_ps": args.num_ps if ps else 0,
           "exit_code": code, "wall_seconds": time.monotonic() - t0,
           "table_rows": rows, "table_dim": dim, "table_mib": rows * dim * 4 / MIB,
           "shards": len(watch.shards) if (ps and watch.shards) else 1,
           "shard_rows": [r for r, _ in watch.shards] if ps else [rows],
           "vocabulary_json_mib": os.path.getsize(vocab_path) / MIB,
           "peak_rss_mib": {n: v / MIB for n, v in watch.peak.items()},
           "rss_at_step_b_mib": {n: v / MIB for n, v in watch.rss_at_b.items()},
           "metrics": read_metrics(model_dir),
           "loopback_background_bytes_per_second": background, **extra}
    window = watch.window()
    if ps and watch.shards and sum(row["shard_rows"]) != rows:
        row["note"] = f"the trainer reports {sum(row['shard_rows'])} rows, expected {rows}"
    if code != 0 or window is None:
        row["error"] = (launch.describe_exit(code) if code != 0 else
                        f"no progress window (no bar update at a step >= {args.warmup} "
                        "and a later one)")
        row["tail"] = list(watch.tail)
        print(f"  FAILED ({row['error']}); last lines:", flush=True)
        for line in watch.tail:
            print("    " + line, flush=True)
    if window is not None:
        row["window"] = window
        row["examples_per_second"] = window["examples_per_second"]
        row["step_ms"] = window["step_ms"]
        if ps:
            row["bytes_per_step"] = window["loopback_bytes_per_step"]
            noise = background * window["step_ms"] / 1e3
            if noise > 0.05 * row["bytes_per_step"]:
                print(f"  WARNING: loopback background before the run was "
                      f"{background / MIB:,.2f} MiB/s, {noise / MIB:,.3f} MiB per step: is "
                      "something else running?", flush=True)
        else:
            row["bytes_per_step"] = 0.0
            row["loopback_background_bytes_per_step"] = window["loopback_bytes_per_step"]
    shutil.rmtree(model_dir, ignore_errors=True)
    return row


# --- report ------------------------------------------------------------------------------
def short_task(name: str) -> str:
    kind, _, index = name.partition(":")
    return {"chief": "chief", "worker": f"w{index}", "ps": f"ps{index}"}.get(kind, name)


def format_row(row: dict) -> str:
    def num(key, fmt):
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    order = sorted(row["peak_rss_mib"], key=lambda n: ({"chief": 0, "worker": 1, "ps": 2}
                                                       .get(n.split(":")[0], 0), n))
    rss = " ".join(f"{short_task(n)}={row['peak_rss_mib'][n]:,.0f}" for n in order) or "-"
    moved = row.get("bytes_per_step")
    moved = "-" if moved is None else (
        "0 (1 process)" if row["strategy"] == "one_device" else f"{moved / MIB:,.3f}")
    strategy = row["strategy"] + (f" ({row['num_workers']}w/{row['num_ps']}ps)"
                                  if row["strategy"] == "parameter_server" else "")
    status = "" if "error" not in row else f" FAILED: {row['error']}"
    return (f"| {row['preset']} | {row['items']:,} | {strategy} | "
            f"{num('examples_per_second', ',.0f')} | "
            f"{format(row['metrics']['examples_per_second'], ',.0f') if row['metrics'].get('examples_per_second') else '-'} | "  # noqa: E501
            f"{num('step_ms', ',.1f')} | {rss} | {moved} | {row['table_mib']:,.1f} | "
            f"{row['shards']} |{status}")


HEADER = ("| preset | items | strategy | examples/s (A->B) | examples/s (metrics.json) | "
          "step ms | peak RSS MiB | MiB moved/step | item table MiB | shards |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--items", default="1000000,10000000",
                        help="Item vocabulary sizes (ids in the item table).")
    parser.add_argument("--strategies", default="parameter_server,one_device")
    parser.add_argument("--num_workers", type=int, default=1,
                        help="parameter_server workers (1 on a 2-core machine).")
    parser.add_argument("--num_ps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--steps_per_loop", type=int, default=5,
                        help="Steps per progress update (the window's resolution).")
    parser.add_argument("--warmup", type=int, default=10,
                        help="The window starts at the first update at a step >= this.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--jit_compile", default="false", choices=["auto", "true", "false"],
                        help="For every row (parameter_server never compiles its step).")
    parser.add_argument("--lazy_table_updates", default="auto",
                        choices=["auto", "true", "false"],
                        help="The trainers' --lazy_table_updates (auto: LazyAdamW here, the "
                             "tables have 1M+ rows).")
    parser.add_argument("--ps_min_shard_bytes", type=int, default=0,
                        help="Passed to the trainer if > 0 (default: the trainer's).")
    parser.add_argument("--data_dir", default=None,
                        help="Contract folder (default: the simulator's default data set).")
    parser.add_argument("--tfds_dir", default=None)
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="Seconds per trainer run before it is stopped.")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "ps_scale.json"),
                        help="All figures as JSON.")
    parser.add_argument("--verbose", action="store_true", help="Echo the trainers' output.")
    args = parser.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    items_list = [int(float(n)) for n in args.items.split(",") if n]
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in ("parameter_server", "one_device"):
            parser.error(f"--strategies: {s!r} is not parameter_server or one_device")
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")

    rows = []
    scratch = tempfile.mkdtemp(prefix="ps_scale_")
    try:
        for preset in presets:
            print(f"{preset}: fitting the vocabulary (1-step one_device run)", flush=True)
            try:
                vocabulary, model_config = fit_vocabulary(args, preset, scratch)
            except RuntimeError as e:
                print(f"  FAILED: {e}", flush=True)
                continue
            for items in items_list:
                vocab_path = os.path.join(scratch, f"vocabulary-{preset}-{items}.json")
                real = write_padded_vocabulary(vocabulary, items, vocab_path)
                print(f"{preset}: {real:,} fitted item ids padded to {items:,} "
                      f"({os.path.getsize(vocab_path) / MIB:,.0f} MiB of JSON)", flush=True)
                for strategy in strategies:
                    print(f"{preset} / {items:,} items / {strategy}: training "
                          f"{args.steps} steps", flush=True)
                    row = bench_row(args, preset, items, strategy, vocab_path,
                                    model_config, scratch)
                    rows.append(row)
                    print("  " + format_row(row), flush=True)
                os.unlink(vocab_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"batch {args.batch_size}, window: first progress update at step >= "
          f"{args.warmup} to step {args.steps}; jit_compile={args.jit_compile}; "
          f"lazy_table_updates={args.lazy_table_updates}; "
          "loopback counts all traffic on this machine")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print("Peak RSS: whole run, polled VmHWM per process (chief = coordinator, wN = "
          "worker, psN = parameter server). If whole item tables travelled each step, "
          "MiB moved/step would be at least the item table MiB.")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
