"""trainers.launch on clusters of tests/fake_trainer.py (no TensorFlow: seconds in all)."""

import glob
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import helpers
import pytest

from trainers import launch

FAKE = "tests.fake_trainer"
ENV = {"PYTHONPATH": helpers.REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Lines:
    """The launcher's `output`: keeps every line, lets a test wait for one."""

    def __init__(self):
        self.lines = []
        self._cond = threading.Condition()

    def __call__(self, line):
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def mark(self):
        with self._cond:
            return len(self.lines)

    def wait_for(self, text, timeout=10.0, since=0):
        """Until a line (from line `since` on) contains text."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(text in line for line in self.lines[since:]), timeout)
        assert found, f"no line with {text!r} in {timeout}s:\n" + self.text

    @property
    def text(self):
        with self._cond:
            return "\n".join(self.lines)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_dead(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "processes left alive"


def records(out_dir):
    """task name -> the fake trainer's records, one per process, oldest first."""
    out = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json")), key=os.path.getmtime):
        with open(path) as f:
            record = json.load(f)
        task = record["tf_config"]["task"]
        out.setdefault(f"{task['type']}:{task['index']}", []).append(record)
    return out


def wait_records(out_dir, names, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(names) <= set(records(out_dir)):
        time.sleep(0.05)
    assert set(names) <= set(records(out_dir)), records(out_dir)


def make(tmp_path, num_workers, num_ps, *args, output=None, **kwargs):
    strategy = "parameter_server" if num_ps else "multi_worker_mirrored"
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    kwargs.setdefault("grace_seconds", 5.0)
    return launch.Cluster(num_workers, num_ps,
                          [f"--strategy={strategy}", f"--out_dir={out_dir}", *args],
                          trainer=FAKE, env=ENV, output=output or Lines(), **kwargs)


def wait_in_thread(cluster):
    """wait() in the background, so the test can kill tasks while the policy runs."""
    result = {}

    def target():
        try:
            result["code"] = cluster.wait(timeout=20)
        except BaseException as e:  # reported by join()
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def join(thread, result):
    thread.join(25)
    assert not thread.is_alive(), "wait() did not return"
    assert "error" not in result, result["error"]
    return result["code"]


def all_pids(cluster, out_dir):
    return ([p.pid for p in cluster.tasks.values()]
            + [r["pid"] for rs in records(out_dir).values() for r in rs])


# --- layout ------------------------------------------------------------------------------
def test_cluster_spec_layouts():
    ps = launch.cluster_spec(2, 2, [10, 11, 12, 13, 14])
    assert ps == {"chief": ["127.0.0.1:10"], "worker": ["127.0.0.1:11", "127.0.0.1:12"],
                  "ps": ["127.0.0.1:13", "127.0.0.1:14"]}
    assert launch.cluster_spec(3, 0, [1, 2, 3]) == {
        "worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}
    assert json.loads(launch.tf_config(ps, "ps", 1)) == {
        "cluster": ps, "task": {"type": "ps", "index": 1}}
    assert launch.task_names(1, 1) == ["chief:0", "worker:0", "ps:0"]
    with pytest.raises(ValueError, match="need 3 ports"):
        launch.cluster_spec(1, 1, [1, 2])
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        launch.cluster_spec(0, 1, [])
    with pytest.raises(ValueError, match="no task worker:2"):
        launch.tf_config(ps, "worker", 2)
    ports = launch.free_ports(8)
    assert len(set(ports)) == 8 and all(p > 0 for p in ports)


@pytest.mark.parametrize("num_ps,args,error", [
    (1, ["--strategy=parameter_server"], None),
    (1, ["--strategy", "parameter_server", "--steps", "3"], None),
    (0, ["--strategy=multi_worker_mirrored"], None),
    (1, ["--strategy=multi_worker_mirrored"],
     r"must contain --strategy=parameter_server \(got --strategy=multi_worker_mirrored\)"),
    (0, ["--steps=3"], r"must contain --strategy=multi_worker_mirrored \(no --strategy"),
    (0, ["--strategy", "mirrored"], r"MultiWorkerMirroredStrategy .*got --strategy=mirrored"),
])
def test_check_strategy(num_ps, args, error):
    if error is None:
        launch.check_strategy(args, num_ps)
    else:
        with pytest.raises(ValueError, match=error):
            launch.check_strategy(args, num_ps)


def test_line_splitter_treats_carriage_return_as_a_line_break():
    splitter = launch._LineSplitter()
    assert splitter.feed(b"a\r\nb\rc") == ["a", "b"]
    assert splitter.feed(b"\r") == ["c"]
    assert splitter.feed(b"\n\nd\xc3") == [""]  # the \n of \r\n split across reads
    assert splitter.feed(b"\xa9\r\re") == ["d\u00e9"]
    assert splitter.feed(b"", final=True) == ["e"]


@pytest.mark.parametrize("num_workers,num_ps", [(2, 2), (3, 0)])
def test_every_task_gets_its_tf_config(tmp_path, num_workers, num_ps):
    until = tmp_path / "until"
    cluster = make(tmp_path, num_workers, num_ps, "--steps=1000", f"--until_file={until}")
    names = launch.task_names(num_workers, num_ps)
    with cluster:
        wait_records(tmp_path / "out", names)
        until.touch()
        assert cluster.wait(timeout=20) == 0
    got = records(tmp_path / "out")
    assert sorted(got) == sorted(names)
    spec = got[names[0]][0]["tf_config"]["cluster"]
    assert spec == cluster.spec
    assert sorted(spec) == (["chief", "ps", "worker"] if num_ps else ["worker"])
    addresses = [a for task in spec.values() for a in task]
    assert len(addresses) == len(names) == len(set(addresses))
    assert all(a.startswith("127.0.0.1:") for a in addresses)
    for name in names:
        (record,) = got[name]
        task_type, index = name.split(":")
        assert record["tf_config"] == {"cluster": spec,
                                       "task": {"type": task_type, "index": int(index)}}
        assert record["unbuffered"] == "1"
        assert record["argv"] == cluster.trainer_args  # verbatim


# --- output ------------------------------------------------------------------------------
def test_output_is_prefixed_per_task_and_logged(tmp_path):
    out = io.StringIO()
    log_dir = tmp_path / "logs"
    cluster = make(tmp_path, 2, 0, "--progress", "--stderr", output=out,
                   log_dir=str(log_dir))
    with cluster:
        assert cluster.wait(timeout=20) == 0
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\[(launch|worker:[01])\] ", line) for line in lines), lines
    for i in (0, 1):
        for text in ("TF_CONFIG {", "progress 1/3", "progress 2/3", "progress 3/3",
                     f"to stderr from worker:{i}", "step 3", "done"):
            assert any(line.startswith(f"[worker:{i}] {text}") for line in lines), text
        raw = (log_dir / f"worker-{i}.log").read_bytes()
        assert b"\rprogress 1/3\rprogress 2/3\rprogress 3/3\n" in raw
        assert f"to stderr from worker:{i}".encode() in raw
    assert "[launch] job succeeded" in lines


# --- lifecycle ---------------------------------------------------------------------------
def test_ps_success_stops_servers_and_workers(tmp_path):
    until = tmp_path / "until"
    lines = Lines()
    cluster = make(tmp_path, 2, 1, "--steps=1000", f"--until_file={until}", output=lines)
    with cluster:
        wait_records(tmp_path / "out", ["chief:0", "worker:0", "worker:1", "ps:0"])
        lines.wait_for("[ps:0] serving")
        until.touch()
        assert cluster.wait(timeout=20) == 0
    for name in ("worker:0", "worker:1", "ps:0"):
        assert cluster.tasks[name].returncode == 143  # their SIGTERM handler ran
        assert f"[{name}] got SIGTERM" in lines.text
    assert cluster.tasks["chief:0"].returncode == 0
    wait_dead(all_pids(cluster, tmp_path / "out"))
    cluster.stop()  # idempotent


def test_sigkill_after_grace_for_a_task_ignoring_sigterm(tmp_path):
    lines = Lines()
    cluster = make(tmp_path, 1, 1, "--ignore_sigterm=ps", output=lines, grace_seconds=0.5)
    with cluster:
        lines.wait_for("[ps:0] serving")  # its SIG_IGN is in place
        assert cluster.wait(timeout=20) == 0
    assert "ps:0 still running after SIGTERM: SIGKILL" in lines.text
    assert cluster.tasks["ps:0"].returncode == -signal.SIGKILL
    wait_dead(all_pids(cluster, tmp_path / "out"))


def test_mwms_worker_failure_stops_the_others(tmp_path):
    lines = Lines()
    cluster = make(tmp_path, 3, 0, "--steps=1000", "--step_seconds=0.05",
                   "--fail_task=worker:1", "--fail_step=5", "--fail_code=3", output=lines)
    with cluster:
        assert cluster.wait(timeout=20) == 3
    assert "[launch] worker:1 exited with code 3: the job failed" in lines.text
    for name in ("worker:0", "worker:2"):
        assert cluster.tasks[name].returncode in (143, -signal.SIGTERM)
    wait_dead(all_pids(cluster, tmp_path / "out"))


def test_ps_chief_failure_fails_the_job(tmp_path):
    lines = Lines()
    with make(tmp_path, 1, 1, "--exit_code=5", output=lines) as cluster:
        assert cluster.wait(timeout=20) == 5
    assert "chief:0 exited with code 5: the job failed" in lines.text
    wait_dead(all_pids(cluster, tmp_path / "out"))


@pytest.mark.parametrize("restart", [False, True])
def test_ps_worker_killed_the_coordinator_carries_on(tmp_path, restart):
    until = tmp_path / "until"
    lines = Lines()
    out_dir = tmp_path / "out"
    cluster = make(tmp_path, 2, 1, "--steps=100000", "--step_seconds=0.05",
                   f"--until_file={until}", output=lines, restart_workers=restart)
    with cluster:
        thread, result = wait_in_thread(cluster)
        wait_records(out_dir, ["worker:1"])
        lines.wait_for("[chief:0] step 2")
        first = cluster.pid("worker:1")
        os.kill(first, signal.SIGKILL)
        lines.wait_for("worker:1 killed by SIGKILL; the coordinator carries on")
        after_kill = lines.mark()
        if restart:
            lines.wait_for("restarting worker:1")
            deadline = time.monotonic() + 10
            while len(records(out_dir).get("worker:1", [])) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            old, new = records(out_dir)["worker:1"]
            assert new["pid"] == cluster.pid("worker:1") != first
            assert new["tf_config"] == old["tf_config"]  # same task, same port
            assert cluster.restarts == {"worker:1": 1}
        lines.wait_for("[chief:0] step", since=after_kill)  # still running
        assert not alive(first)
        until.touch()
        assert join(thread, result) == 0
    assert "job succeeded" in lines.text
    wait_dead(all_pids(cluster, out_dir))


def test_ps_all_workers_dead_without_restarts_fails(tmp_path):
    lines = Lines()
    cluster = make(tmp_path, 1, 1, "--steps=100000", "--step_seconds=0.05", output=lines)
    with cluster:
        thread, result = wait_in_thread(cluster)
        lines.wait_for("[worker:0] serving")
        os.kill(cluster.pid("worker:0"), signal.SIGKILL)
        assert join(thread, result) == 1
    assert "every worker has exited" in lines.text
    wait_dead(all_pids(cluster, tmp_path / "out"))


def test_ps_server_killed_stops_everything(tmp_path):
    lines = Lines()
    cluster = make(tmp_path, 2, 1, "--steps=100000", "--step_seconds=0.05", output=lines)
    with cluster:
        thread, result = wait_in_thread(cluster)
        lines.wait_for("[ps:0] serving")
        lines.wait_for("[chief:0] step 2")
        os.kill(cluster.pid("ps:0"), signal.SIGKILL)
        assert join(thread, result) == 1
    assert "ps:0 killed by SIGKILL before the chief finished: the job failed" in lines.text
    assert cluster.tasks["chief:0"].returncode in (143, -signal.SIGTERM)
    wait_dead(all_pids(cluster, tmp_path / "out"))


# --- command line ------------------------------------------------------------------------
def cli(*args):
    return [sys.executable, "-m", "trainers.launch", "--trainer", FAKE, "--grace_seconds", "5",
            *args]


def test_cli_end_to_end(tmp_path):
    out_dir, log_dir = tmp_path / "out", tmp_path / "logs"
    out_dir.mkdir()
    proc = subprocess.run(
        cli("--num_workers", "2", "--num_ps", "1", "--log_dir", str(log_dir), "--",
            "--strategy=parameter_server", "--steps", "3", "--out_dir", str(out_dir)),
        capture_output=True, text=True, timeout=60, env=helpers.subprocess_env(),
        cwd=helpers.REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in ("[chief:0] step 3", "[chief:0] done", "[launch] job succeeded"):
        assert text in proc.stdout
    assert sorted(os.listdir(log_dir)) == ["chief-0.log", "ps-0.log", "worker-0.log",
                                           "worker-1.log"]
    assert b"step 3" in (log_dir / "chief-0.log").read_bytes()
    got = records(out_dir)
    assert got["chief:0"][0]["argv"] == ["--strategy=parameter_server", "--steps", "3",
                                         "--out_dir", str(out_dir)]
    wait_dead([r["pid"] for rs in got.values() for r in rs])


def test_cli_refuses_a_wrong_strategy():
    proc = subprocess.run(cli("--num_workers", "2", "--num_ps", "1", "--",
                              "--strategy=multi_worker_mirrored"),
                          capture_output=True, text=True, timeout=60,
                          env=helpers.subprocess_env(), cwd=helpers.REPO)
    assert proc.returncode == 2
    assert "must contain --strategy=parameter_server" in proc.stderr
    assert "[launch]" not in proc.stdout  # nothing started


def start_cli(tmp_path, *args):
    lines = Lines()
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=helpers.subprocess_env(), cwd=helpers.REPO)

    def pump():
        for line in proc.stdout:
            lines(line.rstrip("\n"))

    lines.pump = threading.Thread(target=pump, daemon=True)
    lines.pump.start()
    return proc, lines


def test_cli_forwards_sigterm_to_the_tasks(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, lines = start_cli(tmp_path, "--num_workers", "2", "--num_ps", "0", "--",
                            "--strategy", "multi_worker_mirrored", "--steps=100000",
                            "--step_seconds=0.05", f"--out_dir={out_dir}")
    try:
        lines.wait_for("[worker:0] step 2")
        lines.wait_for("[worker:1] step 2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines.pump.join(10)  # the last lines
    assert "[launch] got SIGTERM: stopping the job" in lines.text
    for name in ("worker:0", "worker:1"):
        assert f"[{name}] got SIGTERM" in lines.text
    pids = [r["pid"] for rs in records(out_dir).values() for r in rs]
    assert len(glob.glob(str(out_dir / "sigterm-*"))) == 2
    wait_dead(pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_no_orphans_when_the_launcher_is_killed(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, lines = start_cli(tmp_path, "--num_workers", "1", "--num_ps", "1", "--",
                            "--strategy=parameter_server", "--steps=100000",
                            "--step_seconds=0.05", f"--out_dir={out_dir}")
    try:
        lines.wait_for("[ps:0] serving")
        lines.wait_for("[worker:0] serving")
        lines.wait_for("[chief:0] step 2")
        pids = [r["pid"] for rs in records(out_dir).values() for r in rs]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        proc.kill()  # no chance to clean up
        proc.wait(timeout=10)
        wait_dead(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kubernetes_example_parses():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(helpers.REPO, "examples", "kubernetes", "tfjob.yaml")) as f:
        jobs = [doc for doc in yaml.safe_load_all(f) if doc]
    strategies = {}
    for job in jobs:
        assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
        replicas = job["spec"]["tfReplicaSpecs"]
        for spec in replicas.values():
            (container,) = spec["template"]["spec"]["containers"]
            assert container["name"] == "tensorflow"  # the operator looks for this name
            assert container["command"][:3] == ["python", "-m", "trainers.multitask"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/data" in mounts
        strategy = launch.flag_value(container["command"], "strategy")
        strategies[strategy] = {k: (v["replicas"], v["restartPolicy"])
                                for k, v in replicas.items()}
    assert strategies["parameter_server"] == {
        "Chief": (1, "ExitCode"), "Worker": (4, "OnFailure"), "PS": (2, "Never")}
    assert set(strategies["multi_worker_mirrored"]) == {"Worker"}
