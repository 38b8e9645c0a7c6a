"""Strategies by name, and who writes what in a cluster.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy and ParameterServerStrategy
(keras-team/keras#20329, #20585), so the trainers drive one custom loop under every
strategy; this module only picks the strategy and the chief.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored")


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` logical devices (must run before TF touches a device)."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def make_strategy(name: str) -> tf.distribute.Strategy:
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
    raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}")


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
