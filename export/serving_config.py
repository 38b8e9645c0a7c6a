"""TF Serving's `MonitoringConfig` and `BatchingParameters` text protos, parsed exactly.

`tensorflow_model_server --monitoring_config_file` and `--batching_parameters_file` read
these messages in protobuf text format. The `tensorflow-serving-api` wheel ships neither
`monitoring_config.proto` nor `session_bundle_config.proto`, so their two messages are
declared here from TF Serving's .proto files (same package, names, numbers and types) and
parsed with protobuf's own text-format parser: a file that the real server accepts is
accepted here, and a typo is an error naming the line, as there.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)

_F = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, message type name or None)], as in TF Serving 2.x:
# tensorflow_serving/config/monitoring_config.proto and
# tensorflow_serving/servables/tensorflow/session_bundle_config.proto (BatchingParameters).
_MESSAGES = {
    "PrometheusConfig": [("enable", 1, _F.TYPE_BOOL, None),
                         ("path", 2, _F.TYPE_STRING, None)],
    "MonitoringConfig": [("prometheus_config", 1, _F.TYPE_MESSAGE,
                          ".tensorflow.serving.PrometheusConfig")],
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, "repeated"),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None),
        ("max_execution_batch_size", 8, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("enable_large_batch_splitting", 9, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
    ],
}
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _classes():
    pool = descriptor_pool.Default()
    name = "ecom_zoo/tensorflow_serving_configs.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto(
            name=name, package="tensorflow.serving", syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"])
        for message, fields in _MESSAGES.items():
            m = proto.message_type.add(name=message)
            for field, number, kind, type_name in fields:
                f = m.field.add(name=field, number=number, type=kind,
                                label=_F.LABEL_REPEATED if type_name == "repeated"
                                else _F.LABEL_OPTIONAL)
                if kind == _F.TYPE_MESSAGE:
                    f.type_name = type_name
        pool.Add(proto)
    return {m: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{m}")) for m in _MESSAGES}


_CLASSES = _classes()
MonitoringConfig = _CLASSES["MonitoringConfig"]
BatchingParameters = _CLASSES["BatchingParameters"]


def read_text_proto(path: str, cls):
    """`path` (text format) -> a `cls` message; ValueError naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        return text_format.Parse(text, cls())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a {cls.DESCRIPTOR.name} text proto: {e}") from None


def prometheus_path(path: str) -> str | None:
    """The metrics path of a --monitoring_config_file (None: Prometheus not enabled)."""
    config = read_text_proto(path, MonitoringConfig)
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
