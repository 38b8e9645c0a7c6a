"""`python -m export.serve`: a local model server speaking TF Serving's gRPC API.

Production runs the real `tensorflow_model_server` on the same export base; it cannot be
installed on every development machine (no package registry ships it), so this server
implements the part of its API and behaviour that clients and deployment scripts depend on,
with the public `tensorflow-serving-api` protos:

  PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus /
  HandleReloadConfigRequest (off unless --enable_model_config_rpc); optional REST `/v1/models/NAME[/versions/V|/labels/L]:predict`.

Version management as TF Serving does it: the base path of each model is polled for integer
version folders; the version policy (latest N by default, `all`, or `specific`) decides
which to serve; a new version is loaded and its `assets.extra/tf_serving_warmup_requests`
replayed before it becomes available, then versions leaving the policy are unloaded once
their in-flight requests have finished (so a client never sees a gap); a version that fails
to load or warm up is reported by GetModelStatus and never served. A `--model_config_file`
(TF Serving's text format, `ModelServerConfig`) is re-read every
`--model_config_file_poll_wait_seconds`, so a `promote` by `export.registry` takes effect.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http import server as http_server

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the TF Text ops the exports use)
from absl import app, flags, logging  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_management_pb2, model_service_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from export import batching, layout, serving_config, tensor_protos  # noqa: E402

Code = grpc.StatusCode
State = get_model_status_pb2.ModelVersionStatus.State
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


class ServingError(Exception):
    """An error returned to the client with a gRPC status code (never kills the server)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- one loaded version ------------------------------------------------------------------------
class Servable:
    """A loaded SavedModel version: its signatures, their defs, and an in-flight count."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.module = tf.saved_model.load(path, tags=["serve"])
        proto = saved_model_pb2.SavedModel.FromString(
            tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb").read())
        meta_graph = next(m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags)
        self.signature_defs = {k: v for k, v in meta_graph.signature_def.items()
                               if not k.startswith("__")}
        self.signatures = dict(self.module.signatures)
        self._runners = {}
        self.inflight = 0
        self.cond = threading.Condition()

    def warmup(self, max_batch_size: int) -> int:
        """Replays the version's warmup requests (TF Serving fails the load if one fails)."""
        path = os.path.join(self.path, WARMUP_PATH)
        if not tf.io.gfile.exists(path):
            return 0
        n = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ServingError(Code.UNIMPLEMENTED,
                                   f"{path}: only predict_log warmup records are supported")
            self.predict(log.predict_log.request, max_batch_size)
            n += 1
        return n

    def _runner(self, signature: str):
        """One tf.function per signature: serialized input TensorProtos -> serialized output
        TensorProtos. Decoding and encoding happen in C++ (ParseTensor/SerializeTensor), in
        the same call as the model, so the server adds little to the signature's own time."""
        if signature not in self._runners:
            fn = self.signatures[signature]
            specs = fn.structured_input_signature[1]
            names, outputs = sorted(specs), sorted(fn.structured_outputs)

            @tf.function(input_signature=[tf.TensorSpec([len(names)], tf.string)])
            def run(protos):
                inputs = {k: tf.ensure_shape(tf.io.parse_tensor(protos[i], specs[k].dtype),
                                             specs[k].shape) for i, k in enumerate(names)}
                result = fn(**inputs)
                return tf.stack([tf.io.serialize_tensor(result[k]) for k in outputs])

            self._runners[signature] = (run, names, outputs)
        return self._runners[signature]

    def _batch_runner(self, signature: str):
        """`_runner` for a batch of requests: the inputs arrive merged (one TensorProto per
        input holding every request's rows, `batching.merge`), and the outputs leave cut
        back into each request's rows: [R, outputs] serialized tensors, one graph call."""
        key = ("batch", signature)
        if key not in self._runners:
            fn = self.signatures[signature]
            specs = fn.structured_input_signature[1]
            names, outputs = sorted(specs), sorted(fn.structured_outputs)

            @tf.function(input_signature=[tf.TensorSpec([len(names)], tf.string),
                                          tf.TensorSpec([None], tf.int32)])
            def run(protos, rows):
                inputs = {k: tf.ensure_shape(tf.io.parse_tensor(protos[i], specs[k].dtype),
                                             specs[k].shape) for i, k in enumerate(names)}
                result = fn(**inputs)
                ends = tf.cumsum(rows)
                starts = ends - rows
                answers = tf.TensorArray(tf.string, size=tf.shape(rows)[0])
                for j in tf.range(tf.shape(rows)[0]):
                    answers = answers.write(j, tf.stack([
                        tf.io.serialize_tensor(result[k][starts[j]:ends[j]])
                        for k in outputs]))
                return answers.stack()

            self._runners[key] = (run, names, outputs)
        return self._runners[key]

    def predict(self, request: predict_pb2.PredictRequest, max_batch_size: int,
                batcher=None) -> predict_pb2.PredictResponse:
        signature = request.model_spec.signature_name or "serving_default"
        fn = self.signatures.get(signature)
        if fn is None:
            raise ServingError(Code.FAILED_PRECONDITION,
                               f'Serving signature key "{signature}" not found. Known: '
                               f"{sorted(self.signatures)}")
        specs = fn.structured_input_signature[1]
        sent, expected = set(request.inputs), set(specs)
        if sent != expected:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"input size does not match signature {signature}: {len(sent)}!={len(expected)}."
                f" Sent extra: {sorted(sent - expected)}. Missing but required: "
                f"{sorted(expected - sent)}.")
        batch = None
        for name, spec in specs.items():  # checked on the protos, before any decoding
            proto = request.inputs[name]
            if proto.dtype != spec.dtype.as_datatype_enum:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "DT_INVALID"
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"input {name}: expects {spec.dtype.name} but {got} is "
                                   "provided")
            shape = [d.size for d in proto.tensor_shape.dim]
            if any(d < 0 for d in shape):
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"input {name}: shape {shape} has a negative dimension")
            if proto.tensor_shape.unknown_rank or not spec.shape.is_compatible_with(shape):
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"input {name}: shape {shape} is not compatible with the "
                                   f"signature's {spec.shape.as_list()}")
            if shape:
                if batch is not None and shape[0] != batch:
                    raise ServingError(Code.INVALID_ARGUMENT,
                                       f"input {name}: batch size {shape[0]} differs from the "
                                       f"other inputs' {batch}")
                batch = shape[0]
        if max_batch_size and batch is not None and batch > max_batch_size:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Task size {batch} is larger than maximum input batch size "
                               f"{max_batch_size}")
        for name in specs:  # what a tensor declares must be what it carries
            _check_carried(name, request.inputs[name])
        run, names, output_names = self._runner(signature)
        wanted = list(request.output_filter) or output_names
        for k in wanted:
            if k not in output_names:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {k} Outputs "
                                   f"expected to be in the set {output_names}.")
        try:
            if batcher is not None and batch is not None:
                tensors = [request.inputs[k] for k in names]
                shapes = tuple(tuple(d.size for d in t.tensor_shape.dim[1:]) for t in tensors)
                serialized = batcher.submit(self, signature, tensors, batch, shapes)
            else:
                serialized = run(tf.constant([request.inputs[k].SerializeToString()
                                              for k in names])).numpy()
        except batching.Rejected as e:
            raise ServingError(getattr(Code, e.code), e.message) from None
        except tf.errors.OpError as e:  # e.g. an undecodable tf.Example, a malformed tensor
            raise ServingError(_grpc_code(e.error_code), _op_message(e.message)) from None
        except UnicodeDecodeError:
            # TensorFlow 2.21 sometimes raises a status whose message is not UTF-8 (seen for
            # the finite-input Assert inside predict_examples after tf.Example parsing; the
            # "defined at" part holds stray bytes). The status code is lost before Python
            # sees it; the graph refused the input, which is what an Assert is there for.
            raise ServingError(Code.INVALID_ARGUMENT, "the model refused the input (its "
                               "checks failed; TensorFlow's error text could not be "
                               "decoded)") from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature
        for k, data in zip(output_names, serialized):
            if k in wanted:
                response.outputs[k].ParseFromString(data)
        return response

    def begin(self):
        with self.cond:
            self.inflight += 1

    def end(self):
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def wait_idle(self):
        with self.cond:
            self.cond.wait_for(lambda: self.inflight == 0)


def _op_message(message: str) -> str:
    """A graph check's own words ("input item_price must hold finite numbers ...") rather
    than TensorFlow's "Graph execution error" with node names."""
    m = re.search(r"assertion failed: \[(.*?)\]", message)
    return m.group(1) if m else message


def _grpc_code(tf_code: int):
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return Code.INTERNAL


# --- monitoring ----------------------------------------------------------------------------------
# TF Serving's request latency buckets (microseconds): 10 us x 1.8^i, 33 of them.
LATENCY_BUCKETS_US = tuple(10.0 * 1.8 ** i for i in range(33))


class Metrics:
    """Prometheus metrics named as TF Serving's (`prometheus_client`, which adds `_total` to
    counters; TF Serving's own have no suffix and no entry-point label): requests by model,
    entry point and status, their latency, and load attempts. Always recorded (a few
    microseconds per request); exposed on the REST port when --monitoring_config_file
    enables Prometheus."""

    def __init__(self):
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            ":tensorflow:serving:request_count", "Predict requests by model, entry point and "
            "status.", ["model_name", "entrypoint", "status"], registry=self.registry)
        self.latency = prom.Histogram(
            ":tensorflow:serving:request_latency", "Predict latency in microseconds, from "
            "the request's arrival to its answer.", ["model_name", "entrypoint", "API"],
            buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.loads = prom.Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "SavedModel load attempts by "
            "model and outcome.", ["model_name", "status"], registry=self.registry)

    @contextlib.contextmanager
    def request(self, model_name: str, entrypoint: str):
        """`with metrics.request(name, "GRPC") as outcome:` append a status code to
        `outcome` on failure; nothing appended counts as OK."""
        outcome: list = []
        t0 = time.perf_counter()
        try:
            yield outcome
        except BaseException:
            if not outcome:
                outcome.append(Code.INTERNAL)
            raise
        finally:
            status = outcome[0].name if outcome else "OK"
            self.requests.labels(model_name, entrypoint, status).inc()
            self.latency.labels(model_name, entrypoint, "Predict").observe(
                (time.perf_counter() - t0) * 1e6)

    def load_attempt(self, model_name: str, status: str) -> None:
        self.loads.labels(model_name, status).inc()

    def exposition(self) -> tuple[bytes, str]:
        import prometheus_client as prom

        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


# --- the versions of one model -----------------------------------------------------------------
class Model:
    """One model's config, available versions and per-version status."""

    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.config = config
        self.available: dict[int, Servable] = {}
        self.status: dict[int, tuple[int, int, str]] = {}  # version -> (state, code, message)
        # path -> (failed attempts, earliest next attempt): a version folder still being
        # copied fails at first; TF Serving retries it (--max_num_load_retries).
        self.load_failures: dict[str, tuple[int, float]] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def on_disk(self) -> dict[int, str]:
        return layout.version_dirs(self.config.base_path, listdir=tf.io.gfile.listdir,
                                   isdir=tf.io.gfile.isdir, exists=tf.io.gfile.exists)

    def wanted(self, on_disk: dict[int, str]) -> set[int]:
        """The versions the policy serves, of those on disk."""
        policy = self.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(on_disk)
        if kind == "specific":
            return set(policy.specific.versions) & set(on_disk)
        n = policy.latest.num_versions if kind == "latest" else 1
        return set(sorted(on_disk)[-max(n, 1):])


# The default --max_batch_size: a request cannot make the server run more rows than this.
DEFAULT_MAX_BATCH_SIZE = 4096


def _check_carried(name: str, proto) -> None:
    """INVALID_ARGUMENT when a tensor declares more (or other) values than it carries:
    a 400-byte request must not make the server fill in and run a batch of 20,000 rows.
    One value for any shape stays allowed (TensorProto's broadcast of a single value)."""
    declared = tensor_protos.elements(proto)
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if proto.tensor_content:
        if dtype == tf.string or len(proto.tensor_content) != declared * dtype.size:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"input {name}: tensor_content holds "
                               f"{len(proto.tensor_content)} bytes; its shape and dtype need "
                               f"exactly {declared * dtype.size}")
        carried = declared
    else:
        carried = len(getattr(proto, tensor_protos.value_field(proto)))
    if carried != declared and not (carried == 1 and declared > 0):
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"input {name}: its shape {[d.size for d in proto.tensor_shape.dim]} "
                           f"declares {declared} values but it carries {carried}")


class ModelManager:
    """Loads, warms, serves and unloads versions of every configured model."""

    def __init__(self, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_num_load_retries: int = 5, load_retry_interval: float = 60.0,
                 metrics=None, batcher: batching.Batcher | None = None,
                 allow_version_labels_for_unavailable_models: bool = False):
        self.max_batch_size = max_batch_size
        self.max_num_load_retries = max(int(max_num_load_retries), 0)
        self.load_retry_interval = max(float(load_retry_interval), 0.0)
        self.metrics = metrics or Metrics()
        self.batcher = batcher
        self.allow_unavailable_labels = bool(allow_version_labels_for_unavailable_models)
        self.models: dict[str, Model] = {}
        self.lock = threading.RLock()
        self.poll_lock = threading.Lock()

    # ---- configuration ----
    def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        if config.WhichOneof("config") != "model_config_list":
            raise ServingError(Code.INVALID_ARGUMENT, "only model_config_list is supported")
        configs = list(config.model_config_list.config)
        names = [c.name for c in configs]
        if len(set(names)) != len(names) or not all(names):
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"model names must be unique and non-empty: {names}")
        for c in configs:
            if c.model_platform not in ("", "tensorflow"):
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"model {c.name}: unsupported platform {c.model_platform!r}")
        with self.lock:
            self._check_labels(configs)
            for c in configs:
                if c.name in self.models:
                    self.models[c.name].config = c
                else:
                    self.models[c.name] = Model(c)
            removed = [m for n, m in self.models.items() if n not in names]
            for m in removed:
                del self.models[m.name]
        for m in removed:
            for servable in list(m.available.values()):
                self._unload(m, servable)

    def _check_labels(self, configs) -> None:
        """TF Serving's rule (`UpdateModelVersionLabelMap`): a label may point only at a
        version that is serving; --allow_version_labels_for_unavailable_models lets a NEW
        label point at one that is not loaded yet (a config at start-up, before anything
        loads), never an existing label move to one."""
        for c in configs:
            m = self.models.get(c.name)
            available = m.available if m is not None else {}
            before = dict(m.config.version_labels) if m is not None else {}
            for label, version in c.version_labels.items():
                if version in available or before.get(label) == version:
                    continue
                if self.allow_unavailable_labels and label not in before:
                    continue
                raise ServingError(
                    Code.FAILED_PRECONDITION, f"Request to assign label {label} to version "
                    f"{version} of model {c.name}, which is not currently available for "
                    "inference (serve it under another label first, or start the server "
                    "with --allow_version_labels_for_unavailable_models for a new label)")

    # ---- the poll: what TF Serving's file-system source and manager do ----
    def poll(self) -> None:
        with self.poll_lock:
            with self.lock:
                models = list(self.models.values())
            for m in models:
                on_disk = m.on_disk()
                wanted = m.wanted(on_disk)
                for v in sorted(wanted - set(m.available)):
                    attempts, next_at = m.load_failures.get(on_disk[v], (0, 0.0))
                    if attempts <= self.max_num_load_retries and time.time() >= next_at:
                        self._load(m, v, on_disk[v])
                # Availability preserving: unload what the policy dropped only after loads,
                # and keep the newest old version while no wanted one is available (e.g. the
                # new version failed to load).
                for v, (state, _, message) in list(m.status.items()):
                    if state == State.LOADING and v not in wanted and v not in m.available:
                        m.status[v] = (State.END, Code.CANCELLED.value[0],
                                       "left the version policy before it loaded: " + message)
                drop = set(m.available) - wanted
                if drop and not wanted & set(m.available):
                    drop.discard(max(drop))
                for v in sorted(drop):
                    self._unload(m, m.available[v])

    def _load(self, m: Model, version: int, path: str) -> None:
        m.status[version] = (State.LOADING, 0, "")
        logging.info("Loading servable: {name: %s version: %d} from %s", m.name, version, path)
        t0 = time.time()
        try:
            servable = Servable(m.name, version, path)
            n = servable.warmup(self.max_batch_size)  # not through the live batch queue
        except Exception as e:  # a bad version is reported, never served, never fatal
            attempts = m.load_failures.get(path, (0, 0.0))[0] + 1
            m.load_failures[path] = (attempts, time.time() + self.load_retry_interval)
            code = e.code if isinstance(e, ServingError) else Code.UNKNOWN
            message = f"{type(e).__name__}: {e}"
            self.metrics.load_attempt(m.name, "FAILED")
            if attempts <= self.max_num_load_retries:  # still LOADING: it will be retried
                m.status[version] = (State.LOADING, 0, f"attempt {attempts} of "
                                     f"{self.max_num_load_retries + 1} failed, retrying in "
                                     f"{self.load_retry_interval:g} s: {message}")
                logging.warning("Failed to load servable {name: %s version: %d} (attempt %d "
                                "of %d; retrying in %g s): %s", m.name, version, attempts,
                                self.max_num_load_retries + 1, self.load_retry_interval, e)
                return
            m.status[version] = (State.END, code.value[0], message)
            logging.error("Failed to load servable {name: %s version: %d}: %s",
                          m.name, version, e)
            return
        m.load_failures.pop(path, None)
        self.metrics.load_attempt(m.name, "OK")
        with self.lock:
            m.available[version] = servable
            m.status[version] = (State.AVAILABLE, 0, "")
        logging.info("Successfully loaded servable {name: %s version: %d} in %.1f s "
                     "(%d warmup requests replayed)", m.name, version, time.time() - t0, n)

    def _unload(self, m: Model, servable: Servable) -> None:
        with self.lock:  # no new request can pick it after this
            m.available.pop(servable.version, None)
            m.status[servable.version] = (State.UNLOADING, 0, "")

        def finish():
            servable.wait_idle()
            m.status[servable.version] = (State.END, 0, "")
            logging.info("Unloaded servable {name: %s version: %d}", m.name, servable.version)

        threading.Thread(target=finish, daemon=True).start()

    # ---- request routing ----
    @contextlib.contextmanager
    def acquire(self, spec):
        """`with manager.acquire(spec) as servable`: the version a ModelSpec asks for, counted
        in flight so that it cannot be unloaded under the request."""
        with self.lock:
            m = self.models.get(spec.name)
            if m is None:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: "
                                   f"Latest({spec.name}); known models: {sorted(self.models)}")
            choice = spec.WhichOneof("version_choice")
            if choice == "version":
                version = spec.version.value
            elif choice == "version_label":
                labels = dict(m.config.version_labels)
                if spec.version_label not in labels:
                    raise ServingError(Code.INVALID_ARGUMENT, "Unrecognized servable version "
                                       f"label: {spec.version_label}; known: {sorted(labels)}")
                version = labels[spec.version_label]
            else:
                if not m.available:
                    raise ServingError(Code.NOT_FOUND,
                                       f"Servable not found for request: Latest({m.name})")
                version = max(m.available)
            servable = m.available.get(version)
            if servable is None:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: "
                                   f"Specific({m.name}, {version})")
            servable.begin()  # under the lock: no unload can slip in between
        try:
            yield servable
        finally:
            servable.end()

    def metadata(self, spec, fields) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata's answer (signature_def only, as TF Serving's for SavedModels)."""
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported or not fields:
            raise ServingError(Code.INVALID_ARGUMENT, "Metadata field(s) "
                               f"{unsupported or '(none)'} not supported; ask for "
                               "signature_def")
        with self.acquire(spec) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            defs = get_model_metadata_pb2.SignatureDefMap()
            for k, v in servable.signature_defs.items():
                defs.signature_def[k].CopyFrom(v)
            response.metadata["signature_def"].Pack(defs)
            return response

    def model_status(self, spec) -> list:
        with self.lock:
            m = self.models.get(spec.name)
            if m is None:
                raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model "
                                   f"{spec.name}")
            statuses = dict(m.status)
        if spec.HasField("version"):
            if spec.version.value not in statuses:
                raise ServingError(Code.NOT_FOUND, f"Could not find version "
                                   f"{spec.version.value} of model {spec.name}")
            statuses = {spec.version.value: statuses[spec.version.value]}
        out = []
        for v, (state, code, message) in sorted(statuses.items(), reverse=True):
            s = get_model_status_pb2.ModelVersionStatus(version=v, state=state)
            s.status.error_code = code
            s.status.error_message = message
            out.append(s)
        return out


# --- gRPC services -------------------------------------------------------------------------
def _abort(context, e: ServingError):
    context.abort(e.code, e.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        with self.manager.metrics.request(request.model_spec.name, "GRPC") as outcome:
            try:
                with self.manager.acquire(request.model_spec) as servable:
                    return servable.predict(request, self.manager.max_batch_size,
                                            self.manager.batcher)
            except ServingError as e:
                outcome.append(e.code)
                _abort(context, e)
            except Exception as e:  # never let a request kill the server
                logging.exception("Predict failed")
                outcome.append(Code.INTERNAL)
                _abort(context, ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}"))

    def GetModelMetadata(self, request, context):
        try:
            return self.manager.metadata(request.model_spec, request.metadata_field)
        except ServingError as e:
            _abort(context, e)

    def _unimplemented(self, request, context):
        _abort(context, ServingError(Code.UNIMPLEMENTED, "only Predict and GetModelMetadata "
                                     "are served; the exports have predict signatures"))

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, allow_reload: bool = False):
        self.allow_reload = bool(allow_reload)
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            return get_model_status_pb2.GetModelStatusResponse(
                model_version_status=self.manager.model_status(request.model_spec))
        except ServingError as e:
            _abort(context, e)

    def HandleReloadConfigRequest(self, request, context):
        if not self.allow_reload:
            _abort(context, ServingError(
                Code.FAILED_PRECONDITION, "HandleReloadConfigRequest is disabled: any client "
                "could unload every model or load any path; start the server with "
                "--enable_model_config_rpc to allow it (and keep the port private)"))
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.set_config(request.config)
            self.manager.poll()
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
        return response


def add_service(server, servicer, service) -> None:
    """Registers `servicer`'s methods of `service` (a ServiceDescriptor), parsing requests
    itself: bytes that do not decode as the method's request are INVALID_ARGUMENT, as TF
    Serving answers (grpcio's generated registration answers INTERNAL)."""
    from google.protobuf import message, message_factory

    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)

        def handle(raw, context, fn=getattr(servicer, method.name), request_cls=request_cls):
            request = request_cls()
            try:
                request.ParseFromString(raw)
            except message.DecodeError as e:
                context.abort(Code.INVALID_ARGUMENT, f"the request does not decode as a "
                              f"{request_cls.DESCRIPTOR.full_name}: {e}")
            return fn(request, context)

        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            handle, response_serializer=lambda m: m.SerializeToString())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))


# --- REST (TF Serving's /v1/models API: predict, status, metadata; Prometheus metrics) --------
REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
                       r"(?::(\w+)|/(metadata))?$")


class RestLimits:
    """What one REST request may cost before any work: its body size (the gRPC message
    limit, --max_message_bytes), the time to send it (--rest_api_timeout_in_ms: a client
    that promises a body and stalls, or trickles it, is cut off; headers get the same
    limit per read), and the connections served at once (--rest_api_num_threads; one more
    waits a second for a slot, then gets 503)."""

    def __init__(self, max_body_bytes: int = 64 << 20, timeout: float = 30.0,
                 num_threads: int = 16):
        self.max_body_bytes = int(max_body_bytes)
        self.timeout = float(timeout)
        self.num_threads = max(int(num_threads), 1)


class RestServer(http_server.ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `num_threads` connections handled at once."""

    daemon_threads = True

    def __init__(self, address, handler, num_threads: int):
        self._slots = threading.BoundedSemaphore(num_threads)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(timeout=1.0):  # every slot taken: refuse, do not queue
            with contextlib.suppress(OSError):
                body = b'{"error": "too many connections; retry later"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def rest_handler(manager: ModelManager, limits: RestLimits | None = None,
                 prometheus_path: str | None = None):
    limits = limits or RestLimits()

    class Handler(http_server.BaseHTTPRequestHandler):
        timeout = limits.timeout  # per socket operation, headers included

        def _reply(self, code: int, body: dict | bytes, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if code >= 400 and code not in (400, 404):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _spec(self):
            m = REST_PATH.match(self.path)
            if not m:
                raise ServingError(Code.NOT_FOUND, f"Malformed request: {self.path}")
            spec = predict_pb2.PredictRequest().model_spec
            spec.name = m.group(1)
            if m.group(2):
                spec.version.value = int(m.group(2))
            elif m.group(3):
                spec.version_label = m.group(3)
            return spec, m.group(4), bool(m.group(5))

        def _error(self, e: ServingError):
            self._reply(_HTTP.get(e.code, 500), {"error": e.message})

        def _body(self) -> dict:
            """The JSON body, bounded in size and time before it is read."""
            length = self.headers.get("Content-Length")
            if length is None:
                raise _HttpError(411, "a Content-Length header is required")
            if not re.fullmatch(r"[0-9]+", length.strip()):
                raise _HttpError(400, f"Content-Length must be a non-negative integer, "
                                 f"got {length!r}")
            n = int(length)
            if n > limits.max_body_bytes:
                raise _HttpError(413, f"the body ({n:,} bytes) is larger than the limit "
                                 f"({limits.max_body_bytes:,} bytes, --max_message_bytes)")
            deadline = time.monotonic() + limits.timeout
            chunks, left = [], n
            while left:
                # One recv at a time, each allowed only what is left of the deadline: a
                # client trickling a byte at a time cannot stretch it.
                remaining = deadline - time.monotonic()
                chunk = None
                if remaining > 0:
                    self.connection.settimeout(remaining)
                    try:
                        chunk = self.rfile.read1(min(left, 1 << 16))
                    except TimeoutError:  # socket.timeout
                        chunk = None
                if chunk is None or time.monotonic() > deadline:
                    raise _HttpError(408, f"the body was not received within "
                                     f"{limits.timeout:g} s (--rest_api_timeout_in_ms)")
                if not chunk:
                    raise _HttpError(400, f"the body ended after {n - left:,} of {n:,} bytes")
                chunks.append(chunk)
                left -= len(chunk)
            try:
                return json.loads(b"".join(chunks))
            except (ValueError, TypeError) as e:
                raise ServingError(Code.INVALID_ARGUMENT, f"JSON parse error: {e}") from None
            except RecursionError:
                raise ServingError(Code.INVALID_ARGUMENT, "JSON parse error: the body nests "
                                   "too deeply") from None

        def do_GET(self):
            try:
                if prometheus_path and self.path.split("?")[0] == prometheus_path:
                    data, content_type = manager.metrics.exposition()
                    self._reply(200, data, content_type)
                    return
                spec, verb, metadata = self._spec()
                if verb is not None:
                    raise ServingError(Code.NOT_FOUND, f"Malformed request: {self.path}")
                if metadata:
                    self._reply(200, metadata_json(manager.metadata(spec, ["signature_def"])))
                    return
                statuses = manager.model_status(spec)
                self._reply(200, {"model_version_status": [
                    {"version": str(s.version), "state": State.Name(s.state),
                     "status": {"error_code": _grpc_code(s.status.error_code).name,
                                "error_message": s.status.error_message}}
                    for s in statuses]})
            except ServingError as e:
                self._error(e)
            except Exception as e:
                logging.exception("REST GET failed")
                self._error(ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}"))

        def do_POST(self):
            try:
                spec, verb, metadata = self._spec()
            except ServingError as e:
                self.close_connection = True  # the body is not read
                self._error(e)
                return
            with manager.metrics.request(spec.name, "REST") as outcome:
                try:
                    if verb != "predict" or metadata:
                        raise ServingError(Code.UNIMPLEMENTED,
                                           f"only :predict is served, got {verb}")
                    body = self._body()
                    with manager.acquire(spec) as servable:
                        request, row_format = rest_to_request(body, spec, servable)
                        response = servable.predict(request, manager.max_batch_size,
                                                    manager.batcher)
                    outputs = {k: tf.make_ndarray(v).tolist()
                               for k, v in response.outputs.items()}
                    if row_format:
                        n = len(next(iter(outputs.values())))
                        self._reply(200, {"predictions": [{k: v[i] for k, v in outputs.items()}
                                                          for i in range(n)]})
                    else:
                        self._reply(200, {"outputs": outputs})
                except _HttpError as e:
                    outcome.append(Code.INVALID_ARGUMENT)
                    self.close_connection = True  # what is left of the body is not read
                    self._reply(e.status, {"error": e.message})
                except ServingError as e:
                    outcome.append(e.code)
                    self._error(e)
                except Exception as e:
                    outcome.append(Code.INTERNAL)
                    logging.exception("REST predict failed")
                    self._error(ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}"))

        def log_message(self, *args):  # quiet; gRPC and REST log loads only
            pass

    return Handler


def metadata_json(response) -> dict:
    """GetModelMetadataResponse -> TF Serving's REST metadata body."""
    from google.protobuf import json_format

    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(
                defs, preserving_proto_field_name=True)}}


_HTTP = {Code.INVALID_ARGUMENT: 400, Code.NOT_FOUND: 404, Code.FAILED_PRECONDITION: 400,
         Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.RESOURCE_EXHAUSTED: 429,
         Code.UNAVAILABLE: 503, Code.DEADLINE_EXCEEDED: 504}


def rest_to_request(body: dict, spec, servable: Servable) -> tuple:
    """TF Serving's REST JSON ("instances" rows or "inputs" columns) -> PredictRequest."""
    from export.client import request_inputs
    try:
        columns, signature = request_inputs(body)
    except ValueError as e:
        raise ServingError(Code.INVALID_ARGUMENT, str(e)) from None
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(spec)
    request.model_spec.signature_name = signature
    fn = servable.signatures.get(signature)
    specs = fn.structured_input_signature[1] if fn is not None else {}
    for k, value in columns.items():
        try:  # JSON numbers take the signature's dtype, as TF Serving's REST API does
            dtype = specs[k].dtype.as_numpy_dtype if k in specs else None
            if dtype not in (None, object):  # strings stay as decoded
                value = np.asarray(value, dtype=dtype)
            request.inputs[k].CopyFrom(tf.make_tensor_proto(value))
        except (TypeError, ValueError, OverflowError) as e:
            raise ServingError(Code.INVALID_ARGUMENT, f"input {k}: {e}") from None
    return request, "instances" in body


# --- the server ----------------------------------------------------------------------------
def read_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
    try:
        with tf.io.gfile.GFile(path) as f:
            return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {e}") from None


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    c = config.model_config_list.config.add()
    c.name, c.base_path, c.model_platform = name, os.path.abspath(base_path), "tensorflow"
    return config


class Server:
    """The manager, its poll threads, the gRPC server and optionally the REST server."""

    def __init__(self, config, *, host="127.0.0.1", port=8500, rest_api_port=0,
                 config_file=None, file_system_poll_wait_seconds=1.0,
                 model_config_file_poll_wait_seconds=0.0,
                 max_batch_size=DEFAULT_MAX_BATCH_SIZE, threads=8,
                 max_message_bytes=64 << 20, enable_model_config_rpc=False,
                 max_num_load_retries=5, load_retry_interval=60.0, rest_limits=None,
                 prometheus_path=None, batching_parameters: batching.Parameters | None = None,
                 allow_version_labels_for_unavailable_models=False):
        if prometheus_path and not rest_api_port:
            raise ValueError("--monitoring_config_file enables Prometheus, which is served on "
                             "the REST port: give --rest_api_port")
        self.batcher = (batching.Batcher(batching_parameters)
                        if batching_parameters is not None else None)
        self.manager = ModelManager(max_batch_size, max_num_load_retries=max_num_load_retries,
                                    load_retry_interval=load_retry_interval,
                                    batcher=self.batcher,
                                    allow_version_labels_for_unavailable_models=(
                                        allow_version_labels_for_unavailable_models))
        self.config_file = config_file
        self.poll_wait = file_system_poll_wait_seconds
        self.config_wait = model_config_file_poll_wait_seconds
        self.stopping = threading.Event()
        self._config_text = None
        self.manager.set_config(config)
        self.manager.poll()  # initial load before the port opens, as TF Serving does
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                                options=options)
        add_service(self.grpc, PredictionService(self.manager),
                    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"])
        add_service(self.grpc, ModelService(self.manager, enable_model_config_rpc),
                    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"])
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        self.host = host
        self.rest = None
        if rest_api_port:
            limits = rest_limits or RestLimits(max_body_bytes=max_message_bytes)
            self.rest = RestServer((host, rest_api_port),
                                   rest_handler(self.manager, limits, prometheus_path),
                                   limits.num_threads)
        self.threads = []

    def start(self):
        self.grpc.start()
        if self.rest:
            self.threads.append(threading.Thread(target=self.rest.serve_forever, daemon=True))
        if self.poll_wait > 0:
            self.threads.append(threading.Thread(target=self._poll_loop, daemon=True))
        if self.config_file and self.config_wait > 0:
            self.threads.append(threading.Thread(target=self._config_loop, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def _poll_loop(self):
        while not self.stopping.wait(self.poll_wait):
            try:
                self.manager.poll()
            except Exception:
                logging.exception("polling the model base paths failed")

    def _config_loop(self):
        while not self.stopping.wait(self.config_wait):
            try:
                with tf.io.gfile.GFile(self.config_file) as f:
                    text = f.read()
                if text != self._config_text:
                    self.manager.set_config(read_config_file(self.config_file))
                    self._config_text = text
                    logging.info("Reloaded model config file %s", self.config_file)
                    self.manager.poll()
            except Exception as e:  # keep serving the last good config
                logging.error("model config file %s not applied: %s", self.config_file, e)

    def stop(self, grace: float = 5.0):
        self.stopping.set()
        if self.rest:
            self.rest.shutdown()
        self.grpc.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.stop()


# --- a server in a child process (tests, demo, benchmarks) ---------------------------------
def launch(args: list, log_path: str, timeout: float = 300.0, env=None):
    """Starts `python -m export.serve --port 0 ARGS` logging to log_path; waits until it
    listens. Returns (process, "host:port")."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "export.serve", "--port", "0", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path) as f:
            text = f.read()
        m = re.search(r"Running gRPC ModelServer at (\S+:\d+)", text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the model server exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.2)
    terminate(proc)
    raise RuntimeError(f"the model server did not start in {timeout:.0f} s; see {log_path}")


def terminate(proc, grace: float = 30.0) -> int:
    """SIGTERM (the server drains and stops), then SIGKILL after `grace` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# --- CLI ---------------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    # TF Serving's flag names, so commands carry over to tensorflow_model_server.
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 for all interfaces).")
    flags.DEFINE_integer("port", 8500, "gRPC port (0: pick a free one; printed at start).")
    flags.DEFINE_integer("rest_api_port", 0, "REST port (0: no REST server).")
    flags.DEFINE_string("model_name", None, "Model name (with --model_base_path).")
    flags.DEFINE_string("model_base_path", None, "Folder of integer version folders.")
    flags.DEFINE_string("model_config_file", None, "ModelServerConfig text proto (several "
                        "models, version policies, version labels).")
    flags.DEFINE_float("model_config_file_poll_wait_seconds", 0.0,
                       "Re-read --model_config_file this often (0: read once).")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                       "Poll the base paths for new versions this often (0: only at start).")
    flags.DEFINE_integer("max_batch_size", DEFAULT_MAX_BATCH_SIZE, "Reject requests with a "
                         "larger batch before any work (0: no limit; not for a server that "
                         "untrusted clients reach).")
    flags.DEFINE_integer("grpc_max_threads", 8, "Threads serving requests.")
    flags.DEFINE_bool("enable_model_config_rpc", False, "Allow ModelService."
                      "HandleReloadConfigRequest (TF Serving allows it to every client: with "
                      "it on, anyone who reaches the port can unload the models or load any "
                      "path; keep the server on loopback or behind a mesh).")
    flags.DEFINE_integer("max_message_bytes", 64 << 20, "gRPC max send/receive message size, "
                         "and the largest REST body.")
    flags.DEFINE_integer("max_num_load_retries", 5, "Retries of a version that failed to "
                         "load (e.g. still being copied) before it is reported END.")
    flags.DEFINE_integer("load_retry_interval_micros", 60 * 1000 * 1000,
                         "Wait between load retries.")
    flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Time a REST client has to send "
                         "its request (per read, and for the whole body).")
    flags.DEFINE_integer("rest_api_num_threads", 16, "REST connections handled at once.")
    flags.DEFINE_bool("allow_version_labels_for_unavailable_models", False, "Let a config "
                      "point a version label at a version that is not loaded yet (TF "
                      "Serving's default: refused; the config change is not applied).")
    flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests to the same "
                      "version and signature into one call (export/batching.py).")
    flags.DEFINE_string("batching_parameters_file", None, "BatchingParameters text proto "
                        "(max_batch_size, batch_timeout_micros, num_batch_threads, "
                        "max_enqueued_batches); TF Serving's defaults without it.")
    flags.DEFINE_string("monitoring_config_file", None, "MonitoringConfig text proto; with "
                        "prometheus_config { enable: true } the metrics are served on the "
                        "REST port at its path (default /monitoring/prometheus/metrics).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.model_config_file:
            config = read_config_file(FLAGS.model_config_file)
        elif FLAGS.model_base_path:
            name = FLAGS.model_name or os.path.basename(os.path.normpath(FLAGS.model_base_path))
            config = single_model_config(name, FLAGS.model_base_path)
        else:
            print("error: give --model_base_path (and --model_name) or --model_config_file",
                  file=sys.stderr)
            return 2
        for name in ("max_num_load_retries", "load_retry_interval_micros",
                     "rest_api_timeout_in_ms", "rest_api_num_threads", "max_message_bytes"):
            if getattr(FLAGS, name) < (1 if name in ("rest_api_timeout_in_ms",
                                                     "rest_api_num_threads",
                                                     "max_message_bytes") else 0):
                raise ValueError(f"--{name} must be positive, got {getattr(FLAGS, name)}")
        prometheus = (serving_config.prometheus_path(FLAGS.monitoring_config_file)
                      if FLAGS.monitoring_config_file else None)
        if FLAGS.batching_parameters_file and not FLAGS.enable_batching:
            raise ValueError("--batching_parameters_file needs --enable_batching")
        batching_parameters = (batching.Parameters.from_file(FLAGS.batching_parameters_file)
                               if FLAGS.enable_batching else None)
        server = Server(config, host=FLAGS.host, port=FLAGS.port,
                        rest_api_port=FLAGS.rest_api_port, config_file=FLAGS.model_config_file,
                        file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
                        model_config_file_poll_wait_seconds=
                        FLAGS.model_config_file_poll_wait_seconds,
                        max_batch_size=FLAGS.max_batch_size, threads=FLAGS.grpc_max_threads,
                        max_message_bytes=FLAGS.max_message_bytes,
                        enable_model_config_rpc=FLAGS.enable_model_config_rpc,
                        max_num_load_retries=FLAGS.max_num_load_retries,
                        load_retry_interval=FLAGS.load_retry_interval_micros / 1e6,
                        rest_limits=RestLimits(FLAGS.max_message_bytes,
                                               FLAGS.rest_api_timeout_in_ms / 1e3,
                                               FLAGS.rest_api_num_threads),
                        prometheus_path=prometheus,
                        batching_parameters=batching_parameters,
                        allow_version_labels_for_unavailable_models=(
                            FLAGS.allow_version_labels_for_unavailable_models))
    except (ValueError, OSError, ServingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server.start()
    print(f"Running gRPC ModelServer at {server.host}:{server.port} ...", flush=True)
    if server.rest:
        print(f"Exporting HTTP/REST API at:{server.host}:{FLAGS.rest_api_port} ...", flush=True)
    if prometheus:
        print(f"Prometheus metrics at http://{server.host}:{FLAGS.rest_api_port}{prometheus}",
              flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
