"""Strategies by name, and who writes what in a cluster.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy and ParameterServerStrategy
(keras-team/keras#20329, #20585), so the trainers drive one custom loop under every
strategy; this module picks the strategy, the chief, and (parameter_server) runs the
worker and ps tasks, which only serve the coordinator's functions and variables.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "parameter_server")
# A variable of at least this many bytes is split across the parameter servers (one shard
# per ps at most). 1 MiB keeps the id embedding tables of a real shop sharded and the
# encoder's dense weights, which every step reads whole anyway, in one piece.
DEFAULT_MIN_SHARD_BYTES = 1 << 20


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` logical devices (must run before TF touches a device)."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


class TablePartitioner(tf.distribute.experimental.partitioners.MinSizePartitioner):
    """MinSizePartitioner for the id embedding tables only.

    Dense weights are read whole by every step, so sharding them saves nothing, and Keras
    variables cannot checkpoint a ShardedVariable; `zoo.models.layers.IdEmbedding` is the
    layer that can. Other variables go whole to one parameter server, round robin."""

    def __call__(self, shape, dtype, axis=0):
        from zoo.models import layers

        if not layers.creating_table():
            return [1] * len(shape)
        return super().__call__(shape, dtype, axis)


def make_strategy(name: str, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES
                  ) -> tf.distribute.Strategy:
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker_mirrored needs the cluster in TF_CONFIG "
                             "(see README: training on a cluster)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        resolver = _cluster_resolver(name)
        num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
        if not num_ps or resolver.task_type not in (None, "chief"):
            raise ValueError("--strategy=parameter_server needs a TF_CONFIG cluster with "
                             "'chief', 'worker' and 'ps' jobs, the coordinator being the "
                             f"chief (got {os.environ.get('TF_CONFIG')})")
        partitioner = TablePartitioner(min_shard_bytes=min_shard_bytes, max_shards=num_ps)
        return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}")


def _cluster_resolver(strategy: str):
    if "TF_CONFIG" not in os.environ:
        raise ValueError(f"--strategy={strategy} needs the cluster in TF_CONFIG (see README: "
                         "training on a cluster, or python -m trainers.launch)")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def serves_only(strategy: str) -> bool:
    """True for a parameter_server cluster's worker and ps tasks: they run no Python of
    the trainer, only a server for the coordinator's functions and variables."""
    return strategy == "parameter_server" and task_info()[0] in ("worker", "ps")


def serve_forever(strategy: str) -> None:
    """Runs this worker or ps task's server until the process is stopped."""
    from absl import logging
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the input pipeline runs

    resolver = _cluster_resolver(strategy)
    jobs = resolver.cluster_spec().as_dict()
    if not (jobs.get("chief") and jobs.get("ps")):
        # Without a coordinator or a ps nobody would ever call this server: refuse, not hang.
        raise ValueError("--strategy=parameter_server needs a TF_CONFIG cluster with 'chief', "
                         f"'worker' and 'ps' jobs (got jobs {sorted(jobs)})")
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    logging.info("%s:%d serving for the coordinator", resolver.task_type, resolver.task_id)
    print(f"{resolver.task_type}:{resolver.task_id} serving at "
          f"{resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)}",
          flush=True)
    server.join()


def is_parameter_server(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def task_info() -> tuple[str | None, int]:
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    return task.get("type"), int(task.get("index", 0))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief writes checkpoints, summaries and exports; others write to temp dirs."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = task_info()
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        return task_type == "chief"
    return task_type in (None, "worker") and task_id == 0


def write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """model_dir on the chief; a private temp dir elsewhere (collective saves still run)."""
    if is_chief(strategy):
        return model_dir
    task_type, task_id = task_info()
    return tempfile.mkdtemp(prefix=f"ecom_zoo_{task_type}_{task_id}_")


def sharded_tables(model) -> dict:
    """{variable path: [(rows, device) per shard]} of the model's sharded variables."""
    out = {}
    for v in model.weights:
        inner = getattr(v, "value", v)
        if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
            out[v.path] = [(int(s.shape[0]), s.device) for s in inner.variables]
    return out
