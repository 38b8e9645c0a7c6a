"""`python -m trainers.launch`: a tf.distribute cluster of trainer processes on this machine.

    python -m trainers.launch --num_workers 2 --num_ps 1 -- --strategy=parameter_server ...
    python -m trainers.launch --num_workers 2 --num_ps 0 -- --strategy=multi_worker_mirrored ...

Each task is `python -m <trainer> <flags after -->` with its own TF_CONFIG, the way a
Kubernetes TFJob runs it (examples/kubernetes), so the multi-process code paths (collectives,
parameter servers, worker loss) can be exercised without a cluster. Flags are parsed once in
`main`; `Cluster` and the functions below are plain Python that tests call directly.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, TextIO

from absl import app, flags

HOST = "127.0.0.1"
LAUNCHER = "launch"  # prefix of the launcher's own lines
_POLL_SECONDS = 0.05
_MAX_RESTART_DELAY = 30.0


# --- cluster layout ----------------------------------------------------------------------
def required_strategy(num_ps: int) -> str:
    return "parameter_server" if num_ps > 0 else "multi_worker_mirrored"


def task_names(num_workers: int, num_ps: int) -> list[str]:
    """In the order ports are assigned: chief, workers, ps."""
    chief = ["chief:0"] if num_ps > 0 else []
    return (chief + [f"worker:{i}" for i in range(num_workers)]
            + [f"ps:{i}" for i in range(num_ps)])


def cluster_spec(num_workers: int, num_ps: int, ports) -> dict:
    """Under PS the chief is the coordinator; under MWMS worker 0 is the chief (no chief task,
    so every task runs the same collective program)."""
    if num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}")
    if num_ps < 0:
        raise ValueError(f"--num_ps must be >= 0, got {num_ps}")
    names = task_names(num_workers, num_ps)
    ports = list(ports)
    if len(ports) != len(names):
        raise ValueError(f"{len(names)} tasks ({', '.join(names)}) need {len(names)} ports, "
                         f"got {len(ports)}")
    spec: dict[str, list[str]] = {}
    for name, port in zip(names, ports):
        task_type, _ = split_task(name)
        spec.setdefault(task_type, []).append(f"{HOST}:{int(port)}")
    return spec


def tf_config(spec: dict, task_type: str, index: int) -> str:
    if index < 0 or index >= len(spec.get(task_type, [])):
        raise ValueError(f"no task {task_type}:{index} in the cluster {spec}")
    return json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})


def split_task(name: str) -> tuple[str, int]:
    task_type, _, index = name.partition(":")
    return task_type, int(index)


def free_ports(count: int) -> list[int]:
    """All sockets stay bound until every port is picked, so the ports are distinct. Another
    process could still take one before the task binds it; on this machine that is rare."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def flag_value(args, name: str) -> str | None:
    """The last `--name=value` / `--name value` in args (absl: the last one wins)."""
    value = None
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{name}="):
                value = arg.split("=", 1)[1]
            elif arg == f"{dashes}{name}" and i + 1 < len(args):
                value = args[i + 1]
    return value


def check_strategy(trainer_args, num_ps: int) -> None:
    """The launcher decides the cluster's shape; a trainer running another strategy would
    train alone per process (or hang), so refuse before starting anything."""
    want = required_strategy(num_ps)
    got = flag_value(trainer_args, "strategy")
    if got != want:
        shape = (f"--num_ps={num_ps} runs ParameterServerStrategy (a chief, workers, ps)"
                 if num_ps > 0 else
                 "--num_ps=0 runs MultiWorkerMirroredStrategy (workers only)")
        found = f"got --strategy={got}" if got is not None else "no --strategy given"
        raise ValueError(f"{shape}: the trainer flags after -- must contain "
                         f"--strategy={want} ({found})")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


# --- output ------------------------------------------------------------------------------
class _LineSplitter:
    """Bytes in, lines out; `\\r` ends a line too so progress bars become one line per update.
    `\\r\\n` is one break even when split across reads."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._after_cr = False

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        text = self._decoder.decode(data, final)
        lines = []
        start = 0
        for i, char in enumerate(text):
            if char == "\n" and self._after_cr and i == start and not self._buffer:
                start = i + 1  # the \n of a \r\n
            elif char in "\r\n":
                line = self._buffer + text[start:i]
                self._buffer = ""
                # An empty line before a \r is a bar redraw, not output.
                if line or char == "\n":
                    lines.append(line)
                start = i + 1
            self._after_cr = char == "\r"
        self._buffer += text[start:]
        if final and self._buffer:
            lines.append(self._buffer)
            self._buffer = ""
        return lines


class _Output:
    """One lock for every line: tasks write concurrently, lines never interleave. A file-like
    gets the line and a newline; a callable gets the line alone. A failing output (a closed
    pipe) loses lines but never stops a reader: an undrained task would block on its pipe."""

    def __init__(self, output: TextIO | Callable[[str], object]):
        self._output = output
        self._lock = threading.Lock()

    def line(self, prefix: str, text: str) -> None:
        line = f"[{prefix}] {text}"
        with self._lock:
            try:
                if callable(getattr(self._output, "write", None)):
                    self._output.write(line + "\n")
                    flush = getattr(self._output, "flush", None)
                    if flush:
                        flush()
                else:
                    self._output(line)
            except Exception:
                pass


# --- processes ---------------------------------------------------------------------------
def _die_with_parent() -> Callable[[], None] | None:
    """Linux: the child gets SIGKILL if the launcher dies (even by SIGKILL), so no orphan
    outlives it. The kernel ties this to the thread that started the child: restarts start in
    the thread running `wait`. The prctl function is looked up here, before fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class Cluster:
    """Starts one process per task and applies the failure policy of a TFJob.

    Coordinator tasks (the chief under PS, every worker under MWMS) decide success; PS
    servers and PS workers serve forever and are stopped once the coordinators are done.
    `output` (default sys.stdout) is a file-like or a callable taking each prefixed line, so
    a caller can watch the job while `wait` runs in another thread.
    """

    def __init__(self, num_workers: int, num_ps: int, trainer_args,
                 trainer: str = "trainers.multitask", log_dir: str | None = None,
                 env: dict | None = None, restart_workers: bool = False,
                 grace_seconds: float = 20.0,
                 output: TextIO | Callable[[str], object] | None = None):
        self.num_workers = num_workers
        self.num_ps = num_ps
        self.trainer_args = list(trainer_args)
        names = task_names(num_workers, num_ps)
        cluster_spec(num_workers, num_ps, [0] * len(names))  # refuses bad counts up front
        check_strategy(self.trainer_args, num_ps)
        self.trainer = trainer
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.restart_workers = restart_workers
        self.grace_seconds = float(grace_seconds)
        self.spec: dict | None = None
        self.tasks: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.exit_code: int | None = None
        self._out = _Output(sys.stdout if output is None else output)  # today's sys.stdout
        self._logs: dict[str, object] = {}
        self._log_locks: dict[str, threading.Lock] = {}
        self._readers: list[threading.Thread] = []
        self._handled: set[str] = set()  # tasks whose current process's exit was acted on
        self._restart_at: dict[str, float] = {}
        self._signal = threading.Event()
        self._signum = 0
        self._kill_now = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False

    # -- public ---------------------------------------------------------------------------
    @property
    def coordinators(self) -> list[str]:
        if self.num_ps > 0:
            return ["chief:0"]
        return [f"worker:{i}" for i in range(self.num_workers)]

    def start(self) -> Cluster:
        if self.tasks:
            raise RuntimeError("the cluster is already started")
        names = task_names(self.num_workers, self.num_ps)
        self.spec = cluster_spec(self.num_workers, self.num_ps, free_ports(len(names)))
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        if self.restart_workers and self.num_ps == 0:
            self.say("--restart_workers is ignored under multi_worker_mirrored: every worker "
                     "is needed by the collectives, so one failing fails the job")
        self.say(f"{len(names)} tasks of `python -m {self.trainer}` under "
                 f"{required_strategy(self.num_ps)}: "
                 + ", ".join(f"{n}={self._address(n)}" for n in names))
        try:
            for name in names:
                self._spawn(name)
        except BaseException:
            self.stop()
            raise
        return self

    def pid(self, task: str) -> int:
        return self.tasks[task].pid

    def interrupt(self, signum: int = signal.SIGTERM) -> None:
        """What the launcher's SIGINT/SIGTERM handler calls: `wait` stops the job. A second
        call skips the grace period. Safe from a signal handler (sets events only)."""
        if self._signal.is_set():
            self._kill_now.set()
        self._signum = int(signum)
        self._signal.set()

    def wait(self, timeout: float | None = None) -> int:
        """Runs the policy until the job ends, stops every task, returns the exit code.
        Raises TimeoutError (the job still running) after `timeout` seconds."""
        if self.exit_code is not None:
            return self.exit_code
        if not self.tasks:
            raise RuntimeError("start() the cluster before wait()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self._step()
            if code is not None:
                self.exit_code = code
                self.stop()
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the job is still running after {timeout}s")
            time.sleep(_POLL_SECONDS)

    def stop(self) -> None:
        """SIGTERM to every task's process group (a trainer's preemption handler can
        checkpoint), SIGKILL what is left after the grace period. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            self._restart_at.clear()
            running = [n for n, p in self.tasks.items() if p.poll() is None]
            if running:
                self.say(f"stopping {', '.join(running)} (SIGTERM, SIGKILL after "
                         f"{self.grace_seconds:g}s)")
            for proc in self.tasks.values():
                self._signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds
            while (any(p.poll() is None for p in self.tasks.values())
                   and time.monotonic() < deadline and not self._kill_now.is_set()):
                time.sleep(_POLL_SECONDS)
            for name, proc in self.tasks.items():
                if proc.poll() is None:
                    self.say(f"{name} still running after SIGTERM: SIGKILL")
                self._signal_group(proc, signal.SIGKILL)  # and whatever it spawned
            for proc in self.tasks.values():
                proc.wait()
            deadline = time.monotonic() + 5  # a leftover grandchild may hold a pipe open
            for reader in self._readers:
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
            for name, log in self._logs.items():
                with self._log_locks[name]:
                    log.close()

    def say(self, text: str) -> None:
        self._out.line(LAUNCHER, text)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- policy ---------------------------------------------------------------------------
    def _step(self) -> int | None:
        """One look at every task; an exit code once the job has ended."""
        if self._stopped:  # stop() from another thread
            return self.exit_code if self.exit_code is not None else 1
        if self._signal.is_set():
            name = signal.Signals(self._signum).name if self._signum else "a stop request"
            self.say(f"got {name}: stopping the job")
            return 128 + self._signum if self._signum else 1
        now = time.monotonic()
        for name, due in list(self._restart_at.items()):
            if now >= due:
                del self._restart_at[name]
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.say(f"restarting {name} (restart {self.restarts[name]})")
                self._spawn(name)
        for name, proc in list(self.tasks.items()):
            code = proc.poll()
            if code is None or name in self._handled:
                continue
            self._handled.add(name)
            result = self._on_exit(name, code)
            if result is not None:
                return result
        if all(self.tasks[n].poll() == 0 for n in self.coordinators):
            self.say("job succeeded")
            return 0
        return None

    def _on_exit(self, name: str, code: int) -> int | None:
        task_type, _ = split_task(name)
        how = describe_exit(code)
        failed_code = code if code > 0 else 1
        if name in self.coordinators:
            if code == 0:
                self.say(f"{name} exited with code 0")
                return None
            self.say(f"{name} {how}: the job failed")
            return failed_code
        if task_type == "ps":
            self.say(f"{name} {how} before the chief finished: the job failed "
                     "(the parameter servers hold the variables)")
            return failed_code
        # A ParameterServerStrategy worker: the coordinator reschedules its steps.
        if self.restart_workers and code != 0:
            restarts = self.restarts.get(name, 0)
            delay = min(_MAX_RESTART_DELAY, 0.0 if restarts == 0 else 2.0 ** (restarts - 1))
            self.say(f"{name} {how}; the coordinator carries on; restarting it in {delay:g}s")
            self._restart_at[name] = time.monotonic() + delay
            return None
        self.say(f"{name} {how}; the coordinator carries on")
        workers = [n for n in self.tasks if n.startswith("worker:")]
        if all(self.tasks[n].poll() is not None for n in workers) and not self._restart_at:
            self.say("every worker has exited and --restart_workers is off: the coordinator "
                     "would wait for them forever; the job failed")
            return 1
        return None

    # -- processes ------------------------------------------------------------------------
    def _address(self, name: str) -> str:
        task_type, index = split_task(name)
        return self.spec[task_type][index]

    def _spawn(self, name: str) -> None:
        task_type, index = split_task(name)
        env = dict(os.environ)
        env.update(self.env)
        env["TF_CONFIG"] = tf_config(self.spec, task_type, index)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach us as they are printed
        if self.log_dir and name not in self._logs:
            path = os.path.join(self.log_dir, f"{task_type}-{index}.log")
            self._logs[name] = open(path, "wb")
            self._log_locks[name] = threading.Lock()
        with self._stop_lock:  # never start a task that stop() would miss
            if self._stopped:
                return
            proc = subprocess.Popen(
                [sys.executable, "-m", self.trainer, *self.trainer_args], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # a process group per task: stop() reaches its children
                preexec_fn=_die_with_parent())
            self.tasks[name] = proc
            self._handled.discard(name)
        for pipe in (proc.stdout, proc.stderr):
            reader = threading.Thread(target=self._read, args=(name, pipe), daemon=True,
                                      name=f"launch-{name}")
            reader.start()
            self._readers.append(reader)

    def _read(self, name: str, pipe) -> None:
        splitter = _LineSplitter()
        log = self._logs.get(name)
        fd = pipe.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if log is not None and data:
                    with self._log_locks[name]:
                        if not log.closed:
                            log.write(data)
                            log.flush()
                for line in splitter.feed(data, final=not data):
                    self._out.line(name, line)
                if not data:
                    break
        except (OSError, ValueError):
            pass
        finally:
            pipe.close()

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --- flags -------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_integer("num_workers", 2, "Worker tasks (>= 1). Under MWMS worker 0 is the "
                         "chief.")
    flags.DEFINE_integer("num_ps", 0, "Parameter server tasks; > 0 runs "
                         "ParameterServerStrategy with a chief (the coordinator), 0 runs "
                         "MultiWorkerMirroredStrategy.")
    flags.DEFINE_string("trainer", "trainers.multitask", "Module run as `python -m TRAINER "
                        "<flags after -->` once per task.")
    # --log_dir is absl.logging's flag (defined on import, unused by this module): reuse it.
    FLAGS["log_dir"].help = "Also write each task's raw output to LOG_DIR/<type>-<index>.log."
    flags.DEFINE_bool("restart_workers", False, "ParameterServerStrategy: restart a worker "
                      "that fails (like restartPolicy: OnFailure), same TF_CONFIG and port.")
    flags.DEFINE_float("grace_seconds", 20.0, "Between SIGTERM and SIGKILL when stopping "
                       "tasks (time for a preemption checkpoint).")


def main(argv):
    trainer_args = argv[1:]  # absl leaves what follows `--` here
    try:
        cluster = Cluster(FLAGS.num_workers, FLAGS.num_ps, trainer_args,
                          trainer=FLAGS.trainer, log_dir=FLAGS.log_dir,
                          restart_workers=FLAGS.restart_workers,
                          grace_seconds=FLAGS.grace_seconds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _: cluster.interrupt(s))
    try:
        cluster.start()
        return cluster.wait()
    finally:
        cluster.stop()


if __name__ == "__main__":
    define_flags()
    app.run(main)
