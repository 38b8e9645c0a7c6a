"""Training past one machine, proven with real processes on 127.0.0.1.

Parameter servers hold the sharded id tables and the export serves like a one-device model;
a killed worker does not stop a parameter-server job; a killed parameter server stops it and
a re-launch resumes; multi-worker mirrored saves on SIGTERM and, after SIGTERM or SIGKILL,
a re-launch ends at the configured step with the weights of an uninterrupted run; a kill
during a checkpoint save leaves the previous checkpoint usable. Every kill is a real signal
at a random step (the step is printed, so a failure can be replayed).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO, TINY, subprocess_env
from trainers import launch
from trainers.core import rundir

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = re.compile(r"^\s*(\d+)/(\d+) ")
RNG = random.Random()  # unseeded on purpose: every run kills at another step


class Job:
    """A local cluster (trainers.launch) whose output is watched: once the coordinator's
    progress bar reaches `at_step`, `signum` goes to `task`'s process."""

    def __init__(self, shop, model_dir, num_workers, num_ps, *extra, kill=None):
        data, tfds_dir = shop
        strategy = "parameter_server" if num_ps else "multi_worker_mirrored"
        args = ["--data_dir", data, "--tfds_dir", tfds_dir, "--model_dir", str(model_dir),
                *TINY, "--strategy", strategy, *map(str, extra)]
        self.lines: list[str] = []
        self.kill = kill
        self.killed_at = None
        self.cluster = launch.Cluster(num_workers, num_ps, args, env=subprocess_env(),
                                      output=self._line, grace_seconds=30)
        self._watch = "[chief:0]" if num_ps else "[worker:0]"

    def _line(self, line: str):
        self.lines.append(line)
        if not self.kill or self.killed_at is not None or not line.startswith(self._watch):
            return
        m = PROGRESS.match(ANSI.sub("", line[len(self._watch):]))
        task, signum, at_step = self.kill
        if m and int(m.group(1)) >= at_step:
            self.killed_at = int(m.group(1))
            os.kill(self.cluster.pid(task), signum)

    def run(self, timeout=400) -> int:
        self.cluster.start()
        try:
            return self.cluster.wait(timeout)
        finally:
            self.cluster.stop()

    @property
    def text(self) -> str:
        return ANSI.sub("", "\n".join(self.lines))


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return json.load(f)


def _latest(model_dir):
    return tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))


def _step_of(path):
    return int(path.rsplit("-", 1)[1])


def _model_weights(checkpoint):
    """Weights and optimizer state (not the bookkeeping of saves and preemptions)."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/"))}


def _assert_same_weights(a, b):
    wa, wb = _model_weights(a), _model_weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 20
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6, err_msg=k)


# --- parameter servers -------------------------------------------------------------------
def test_parameter_server_shards_the_tables_and_its_export_serves_like_one_device(
        shop, tmp_path, uninterrupted):
    from export import client as client_lib, saved_model, serve

    # Warm-started from the multi-worker mirrored run below (its variables and optimizer
    # slots are one device's: mirrored, not sharded), evicting the ids unseen for 3 days and
    # carrying the optimizer's moments, at a learning rate that leaves the weights where
    # they were.
    parent = os.path.dirname(os.path.dirname(uninterrupted))
    model_dir, base = tmp_path / "ps", tmp_path / "exports"
    job = Job(shop, model_dir, 2, 2, "--steps", 30, "--steps_per_loop", 10,
              "--checkpoint_every", 10, "--ps_min_shard_bytes", 4096,
              "--export_base", base, "--export_name", "shop", "--warm_start_from", parent,
              "--evict_after_days", 3, "--warm_start_optimizer", "--learning_rate", 1e-9)
    assert job.run() == 0, job.text[-6000:]
    assert "evicted (unseen for 3 days)" in job.text
    # Adam's two slots for each variable the optimizer updates: a table sharded over the two
    # parameter servers has a slot pair per shard, carried from the parent's one table.
    carried = re.search(r"warm start: (\d+) optimizer slot variables carried", job.text)
    sharded = re.search(r"sharded across the parameter servers \((\d+) tables", job.text)
    assert carried and sharded, job.text[-6000:]
    # The item table lives in two shards, one on each parameter server.
    m = re.search(r"item_embedding/embeddings: (\d+) rows on /job:ps/replica:0/task:0\S*, "
                  r"(\d+) rows on /job:ps/replica:0/task:1", job.text)
    assert m, job.text[-6000:]
    rows = int(m.group(1)) + int(m.group(2))
    assert _metrics(model_dir)["step"] == 30

    # A one-device model given the weights of the parameter servers' checkpoint.
    model, _ = rundir.load_trained(str(model_dir))
    for w in model.weights:
        w.assign(tf.zeros_like(w))
    status = tf.train.Checkpoint(model=model).restore(_latest(model_dir))
    status.expect_partial().assert_existing_objects_matched()
    table = [w for w in model.weights if w.path.endswith("item_embedding/embeddings")][0]
    assert table.shape[0] == rows and float(tf.reduce_max(tf.abs(table))) > 0
    # The sharded table was filled by id: every item the parent knows and the child kept
    # has the parent's row (moved to its new index); the evicted ones are gone.
    before, _ = rundir.load_trained(parent)
    assert int(carried.group(1)) == 2 * (len(before.trainable_variables)
                                         + int(sharded.group(1)))
    kept = [i for i in model.vocabulary["item_id"] if i in set(before.vocabulary["item_id"])]
    assert len(kept) < len(before.vocabulary["item_id"])
    theirs = [w for w in before.weights if w.path.endswith("item_embedding/embeddings")][0]
    np.testing.assert_allclose(
        tf.gather(table, model.preprocessor.item_lookup(tf.constant(kept))).numpy(),
        tf.gather(theirs, before.preprocessor.item_lookup(tf.constant(kept))).numpy(),
        atol=1e-5)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        str(model_dir / saved_model.SERVING_EXAMPLES_FILE))][:32]
    raw = saved_model.raw_features(serialized, 16)
    out = model(model.preprocessor(raw), training=False)

    proc, target = serve.launch(["--model_name", "shop", "--model_base_path",
                                 str(base / "shop")], str(tmp_path / "serve.log"),
                                env=subprocess_env())
    try:
        with client_lib.PredictionClient(target) as client:
            got = client.predict("shop", raw)
            got_examples = client.predict("shop", {"examples": serialized},
                                          signature="predict_examples")
    finally:
        assert serve.terminate(proc) == 0
    for k in ("click", "purchase", "price_range", "demand"):
        np.testing.assert_allclose(got[k], np.asarray(out[k]), rtol=1e-5, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(got_examples[k], np.asarray(out[k]), rtol=1e-5, atol=1e-5)


def test_parameter_server_job_survives_a_killed_worker(shop, tmp_path):
    at = RNG.randrange(10, 35)
    print(f"SIGKILL to worker:1 at step {at}")
    model_dir = tmp_path / "ps"
    job = Job(shop, model_dir, 2, 1, "--steps", 60, "--steps_per_loop", 5,
              "--checkpoint_every", 1000, kill=("worker:1", signal.SIGKILL, at))
    assert job.run() == 0, job.text[-6000:]
    assert job.killed_at is not None
    assert re.search(r"worker:1 .*SIGKILL", job.text), job.text[-3000:]
    assert _metrics(model_dir)["step"] == 60  # exactly the configured steps
    assert _step_of(_latest(model_dir)) == 60


def test_killed_parameter_server_stops_the_job_and_a_relaunch_resumes(shop, tmp_path):
    at = RNG.randrange(12, 35)
    print(f"SIGKILL to ps:0 at step {at}")
    model_dir = tmp_path / "ps"
    common = ("--steps", 60, "--steps_per_loop", 5, "--checkpoint_every", 10)
    job = Job(shop, model_dir, 2, 1, *common, kill=("ps:0", signal.SIGKILL, at))
    assert job.run() != 0, job.text[-6000:]
    assert job.killed_at is not None
    assert not os.path.exists(model_dir / "metrics.json")
    resumed_from = _step_of(_latest(model_dir))
    assert 10 <= resumed_from < 60

    again = Job(shop, model_dir, 2, 1, *common)
    assert again.run() == 0, again.text[-6000:]
    assert f"from step {resumed_from};" in again.text
    metrics = _metrics(model_dir)
    assert metrics["start_step"] == resumed_from and metrics["step"] == 60


# --- multi-worker mirrored ----------------------------------------------------------------
# Long enough (a few seconds) that a signal sent on a progress line lands mid-training.
MWMS = ("--steps", 120, "--steps_per_loop", 5, "--seed", 3, "--jit_compile=false")


@pytest.fixture(scope="module")
def uninterrupted(shop, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("mwms") / "run"
    job = Job(shop, model_dir, 2, 0, *MWMS, "--checkpoint_every", 25)
    assert job.run() == 0, job.text[-6000:]
    assert _step_of(_latest(model_dir)) == 120
    return _latest(model_dir)


def test_sigterm_checkpoints_every_worker_and_the_relaunch_matches_an_uninterrupted_run(
        shop, tmp_path, uninterrupted):
    from trainers.core import loop

    at = RNG.randrange(10, 60)
    print(f"SIGTERM to worker:1 at step {at}")
    model_dir = tmp_path / "run"
    # No periodic checkpoint before the end: the only one is the preemption's.
    job = Job(shop, model_dir, 2, 0, *MWMS, "--checkpoint_every", 1000,
              kill=("worker:1", signal.SIGTERM, at))
    code = job.run()
    assert code == loop.PREEMPTED_EXIT_CODE, job.text[-6000:]
    saved = _step_of(_latest(model_dir))
    assert at <= saved < 120, (at, saved)
    assert "worker:0" in job.text and "preempted: checkpoint saved" in job.text

    again = Job(shop, model_dir, 2, 0, *MWMS, "--checkpoint_every", 1000)
    assert again.run() == 0, again.text[-6000:]
    assert _metrics(model_dir)["start_step"] == saved
    assert _step_of(_latest(model_dir)) == 120
    _assert_same_weights(_latest(model_dir), uninterrupted)


def test_sigkill_stops_the_job_and_the_relaunch_matches_an_uninterrupted_run(
        shop, tmp_path, uninterrupted):
    at = RNG.randrange(30, 90)
    victim = RNG.choice(["worker:0", "worker:1"])
    print(f"SIGKILL to {victim} at step {at}")
    model_dir = tmp_path / "run"
    job = Job(shop, model_dir, 2, 0, *MWMS, "--checkpoint_every", 25,
              kill=(victim, signal.SIGKILL, at))
    assert job.run() != 0, job.text[-6000:]
    assert re.search(rf"{victim} .*SIGKILL", job.text), job.text[-3000:]
    resumed_from = _step_of(_latest(model_dir))
    assert 25 <= resumed_from < 120

    again = Job(shop, model_dir, 2, 0, *MWMS, "--checkpoint_every", 25)
    assert again.run() == 0, again.text[-6000:]
    assert _metrics(model_dir)["start_step"] == resumed_from
    _assert_same_weights(_latest(model_dir), uninterrupted)


# --- checkpoints are never half-written ---------------------------------------------------
def test_a_kill_during_checkpointing_leaves_the_previous_checkpoint_usable(shop, tmp_path):
    from tests.helpers import trainer_cmd

    model_dir = tmp_path / "run"
    # A checkpoint every step: a kill at a random moment very likely lands inside a save.
    cmd = trainer_cmd(shop, str(model_dir), "--steps", 200, "--steps_per_loop", 1,
                      "--checkpoint_every", 1)
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        state = model_dir / "checkpoints" / "checkpoint"
        deadline = time.time() + 300
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert state.exists(), "no checkpoint was written"
        time.sleep(RNG.uniform(0.5, 3.0))
        assert proc.poll() is None, "the run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = _latest(model_dir)
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)  # every tensor of it reads back
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    print(f"killed after step {_step_of(latest)}")

    # It resumes from there and finishes (fewer steps, same run otherwise; without a save
    # per step, which only the kill needed).
    resume = cmd[:cmd.index("--checkpoint_every")] + ["--checkpoint_every", "1000"]
    done = subprocess.run(resume, env=subprocess_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _metrics(model_dir)["start_step"] == _step_of(latest)
