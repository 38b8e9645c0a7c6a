"""Why the trainers use `zoo.models.layers.IdEmbedding` under ParameterServerStrategy.

    python benchmarks/ps_embedding_lookup.py

A self-contained reproduction in one process: an in-process cluster (1 worker and 2 ps
started with `tf.distribute.Server(..., start=True)` on free 127.0.0.1 ports, found by a
`SimpleClusterResolver`), a `ParameterServerStrategy` whose
`MinSizePartitioner(min_shard_bytes=1 MiB, max_shards=2)` splits the 1M x 16 float32 table
(64 MB) in two shards, one per ps, and the model

    Input((4,), int32) -> Embedding(1_000_000, 16) -> mean over the 4 ids -> Dense(1)

trained by a `ClusterCoordinator` loop (`create_per_worker_dataset`, one `schedule` per
step of a batch of 256 random ids, `join`). Each case prints its result:

  1. keras.layers.Embedding, gradients w.r.t. model.trainable_variables: the table's
     Keras variable holds a ShardedVariable, and tape.gradient fails on it (the
     AttributeError is caught and printed).
  2. keras.layers.Embedding, gradients w.r.t. the shards (trainers.core.loop.train_variables):
     trains, but Keras' lookup (ops.take of the variable) reads the whole table first, so
     every step copies every shard to the worker: bytes/step ~ the table.
  3. IdEmbedding (same shapes): tf.nn.embedding_lookup on the sharded variable gathers on
     each ps; only the looked-up rows (and their gradients) travel. Timed with SGD, with
     Keras' AdamW and with the trainers' LazyAdamW (trainers.core.optimizers): AdamW's update
     of a shard is dense (every row's slots and weight, on the ps, every step); SGD's and
     LazyAdamW's are sparse scatters of the looked-up rows.
  4. A tf.train.Checkpoint(model=...) of the PS model of case 3 (sharded table), restored
     into the same model built on one device (no strategy): the tables are equal.

bytes/step is the loopback interface's received bytes (/proc/net/dev, `lo:`) over
20 steps (after 3 warm-up steps) / 20: it counts ALL loopback traffic on the machine, so
run nothing else meanwhile. s/step is the wall time of those 20 steps / 20.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainers.core.loop import train_variables  # noqa: E402
from trainers.core.optimizers import LazyAdamW  # noqa: E402
from zoo.models.layers import IdEmbedding  # noqa: E402

N, DIM, IDS, BATCH = 1_000_000, 16, 4, 256
WARMUP, STEPS = 3, 20
TABLE_BYTES = N * DIM * 4
MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_rx_bytes() -> int:
    with open("/proc/net/dev", encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError("no lo interface in /proc/net/dev")


def start_cluster():
    spec = tf.train.ClusterSpec({
        "worker": [f"127.0.0.1:{free_port()}"],
        "ps": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]})
    servers = [tf.distribute.Server(spec, job_name=job, task_index=i, protocol="grpc",
                                    start=True)
               for job in ("worker", "ps") for i in range(len(spec.as_dict()[job]))]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=1 << 20, max_shards=2)
    strategy = tf.distribute.ParameterServerStrategy(resolver,
                                                     variable_partitioner=partitioner)
    return servers, strategy


def make_model(embedding_cls) -> keras.Model:
    ids = keras.Input((IDS,), dtype="int32")
    x = embedding_cls(N, DIM, name="table")(ids)
    x = keras.ops.mean(x, axis=1)
    return keras.Model(ids, keras.layers.Dense(1, name="out")(x))


def table_of(model):
    return model.get_layer("table")._embeddings


def dataset_fn(ctx):
    del ctx
    return tf.data.Dataset.from_tensors(0).repeat().map(
        lambda _: (tf.random.uniform([BATCH, IDS], 0, N, dtype=tf.int32),
                   tf.ones([BATCH, 1])))


class Case:
    """A model, its optimizer and a scheduled step on the cluster."""

    def __init__(self, strategy, coordinator, embedding_cls, optimizer_cls, shards: bool):
        self.strategy = strategy
        self.coordinator = coordinator
        with strategy.scope():
            self.model = make_model(embedding_cls)
            self.optimizer = optimizer_cls()
            self.variables = (train_variables(self.model) if shards
                              else self.model.trainable_variables)
            # As the trainers do: slots built now, in the scope, each next to its variable
            # (built lazily inside the first step they would not be).
            self.optimizer.build(self.variables)
        dataset = coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(dataset_fn))
        self.iterator = iter(dataset)
        self.step = tf.function(self._step)

    def _replica(self, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self.model(x) - y))
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return loss

    def _step(self, iterator):
        x, y = next(iterator)
        return self.strategy.run(self._replica, args=(x, y))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.coordinator.schedule(self.step, args=(self.iterator,))
        self.coordinator.join()

    def measure(self) -> tuple[float, float]:
        """(bytes/step, s/step) over STEPS steps after WARMUP."""
        self.run(WARMUP)
        rx, t0 = loopback_rx_bytes(), time.perf_counter()
        self.run(STEPS)
        return (loopback_rx_bytes() - rx) / STEPS, (time.perf_counter() - t0) / STEPS


def report(name: str, bytes_per_step: float, seconds: float) -> None:
    print(f"   {name}: {bytes_per_step / MB:8.3f} MB/step "
          f"({bytes_per_step / TABLE_BYTES:6.1%} of the table), {seconds:.3f} s/step",
          flush=True)


def main():
    t_start = time.perf_counter()
    servers, strategy = start_cluster()
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    print(f"table {N:,} x {DIM} float32 = {TABLE_BYTES / MB:.0f} MB; batch {BATCH} x {IDS} "
          f"ids = {BATCH * IDS * DIM * 4 / MB:.3f} MB of looked-up rows per step; "
          f"cluster: 1 worker, 2 ps on 127.0.0.1", flush=True)
    sgd = lambda: keras.optimizers.SGD(0.1)  # noqa: E731
    adamw = lambda: keras.optimizers.AdamW(1e-3)  # noqa: E731
    lazy_adamw = lambda: LazyAdamW(1e-3)  # noqa: E731

    print("\n1. keras.layers.Embedding, tape.gradient(loss, model.trainable_variables)")
    try:
        case = Case(strategy, coordinator, keras.layers.Embedding, sgd, shards=False)
        inner = table_of(case.model).value
        print(f"   table variable: {type(inner).__name__} of "
              f"{[tuple(v.shape) for v in getattr(inner, 'variables', [inner])]}")
        case.run(1)
        print("   unexpectedly trained: no error")
    except Exception as e:  # noqa: BLE001  the failure is the result
        # A traced function's error starts with "in user code:" and its traceback; the
        # message is the last line.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        if not message.startswith(type(e).__name__):
            message = f"{type(e).__name__}: {message}"
        print(f"   fails: {message}", flush=True)

    print("\n2. keras.layers.Embedding, gradients w.r.t. the shards (train_variables), SGD")
    case = Case(strategy, coordinator, keras.layers.Embedding, sgd, shards=True)
    print(f"   trains {[(v.name, tuple(v.shape), v.device) for v in case.variables[:2]]}")
    report("keras Embedding", *case.measure())

    print("\n3. zoo.models.layers.IdEmbedding, gradients w.r.t. the shards")
    case = Case(strategy, coordinator, IdEmbedding, sgd, shards=True)
    report("IdEmbedding + SGD  ", *case.measure())
    trained = case
    case = Case(strategy, coordinator, IdEmbedding, adamw, shards=True)
    slots = [v for v in case.optimizer.variables if tuple(v.shape) == (N // 2, DIM)]
    report("IdEmbedding + AdamW", *case.measure())
    print(f"   AdamW's {len(slots)} slots of the shards live on "
          f"{sorted({v.value.device for v in slots})}: its update of every row runs there")
    case = Case(strategy, coordinator, IdEmbedding, lazy_adamw, shards=True)
    report("IdEmbedding + LazyAdamW", *case.measure())

    print("\n4. tf.train.Checkpoint of the PS model (IdEmbedding + SGD, trained above), "
          "restored on one device")
    folder = tempfile.mkdtemp(prefix="ps_embedding_lookup_")
    try:
        path = tf.train.Checkpoint(model=trained.model).save(os.path.join(folder, "ckpt"))
        keys = [name for name, shape in tf.train.list_variables(path) if shape == [N, DIM]]
        local = make_model(IdEmbedding)  # outside the strategy: one device
        tf.train.Checkpoint(model=local).restore(path).expect_partial()
        sharded = table_of(trained.model).value
        ps_table = tf.concat([v.read_value() for v in sharded.variables], axis=0).numpy()
        local_table = table_of(local).numpy()
        print(f"   saved {path}: the table is one key of shape [{N}, {DIM}]: {keys}")
        print(f"   shards {[tuple(v.shape) for v in sharded.variables]} -> one-device table "
              f"{local_table.shape}: equal = {np.array_equal(ps_table, local_table)}; "
              f"Dense kernel equal = "
              f"{np.array_equal(trained.model.get_layer('out').kernel.numpy(), local.get_layer('out').kernel.numpy())}")  # noqa: E501
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{time.perf_counter() - t_start:.0f} s in all", flush=True)
    del servers  # kept alive until here


if __name__ == "__main__":
    main()
