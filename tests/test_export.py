"""Export for TF Serving, the local gRPC server, the client and the registry, end to end.

One tiny model (the session's `trained` fixture) is exported as version 1; a copy with a
shifted click bias becomes version 2 while a client is sending requests. One server process
(started here, on 127.0.0.1) serves the export base through a models.config file, as
`tensorflow_model_server --model_config_file` would.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_metadata_pb2,
                                     predict_pb2)
from tensorflow_serving.config import model_server_config_pb2

from export import client as client_lib, registry, saved_model, serve
from helpers import REPO, subprocess_env
from trainers.core import rundir

NAME = "shop"
TOL = 1e-5
MAX_BATCH = 32


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0].model_dir


@pytest.fixture(scope="module")
def examples(model_dir):
    """64 serialized eval examples and their raw features (histories of length 16)."""
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        os.path.join(model_dir, saved_model.SERVING_EXAMPLES_FILE))]
    assert len(serialized) == 64
    return serialized, saved_model.raw_features(serialized, 16)


def keras_outputs(model_dir, raw):
    model, _ = rundir.load_trained(model_dir)
    out = model(model.preprocessor(raw), training=False)
    return {k: np.asarray(out[k]) for k in ("click", "purchase", "price_range", "demand")}


@pytest.fixture(scope="module")
def expected_v1(model_dir, examples):
    return keras_outputs(model_dir, examples[1])


@pytest.fixture(scope="module")
def v1(model_dir, base):
    path = saved_model.export(model_dir, base, NAME)
    assert path == os.path.join(base, NAME, "1")
    return path


@pytest.fixture(scope="module")
def model_dir_v2(model_dir, tmp_path_factory):
    """The trained model with its click logit shifted by +1: a visibly different version."""
    import zoo
    dst = str(tmp_path_factory.mktemp("v2") / "tiny")
    shutil.copytree(model_dir, dst, ignore=shutil.ignore_patterns("checkpoints", "train"))
    model = zoo.load_model(os.path.join(dst, "model.keras"))
    bias = model.get_layer("click_logits").bias
    bias.assign(bias + 1.0)
    model.save(os.path.join(dst, "model.keras"))
    return dst


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(v1, base, tmp_path_factory):
    """`python -m export.serve` on B/models.config (polled), max batch 32, with REST (1.5 s
    to send a request) and Prometheus metrics; a failed load is retried twice, 1 s apart."""
    config = model_server_config_pb2.ModelServerConfig()
    c = config.model_config_list.config.add()
    c.name, c.base_path, c.model_platform = NAME, os.path.join(base, NAME), "tensorflow"
    config_path = os.path.join(base, "models.config")
    with open(config_path, "w") as f:
        f.write(text_format.MessageToString(config))
    folder = tmp_path_factory.mktemp("server")
    log_path = str(folder / "server.log")
    monitoring = folder / "monitoring.config"
    monitoring.write_text('prometheus_config {\n  enable: true,\n'
                          '  path: "/monitoring/prometheus/metrics"\n}\n')
    rest_port = _free_port()
    proc, target = serve.launch(
        ["--rest_api_port", str(rest_port), "--model_config_file", config_path,
         "--model_config_file_poll_wait_seconds", "0.5",
         "--file_system_poll_wait_seconds", "0.5", "--max_batch_size", str(MAX_BATCH),
         "--max_num_load_retries", "2", "--load_retry_interval_micros", "1000000",
         "--rest_api_timeout_in_ms", "1500", "--monitoring_config_file", str(monitoring),
         # promote (below) labels a version before it is loaded, as README's docker command
         "--allow_version_labels_for_unavailable_models"],
        log_path, env=subprocess_env())
    try:
        yield {"target": target, "rest": f"http://127.0.0.1:{rest_port}", "log": log_path,
               "proc": proc}
    finally:
        assert serve.terminate(proc) == 0  # a clean stop on SIGTERM


def _read(path):
    with open(path) as f:
        return f.read()


def _wait_for(predicate, proc=None, log_path=None, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{_read(log_path)[-4000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out" + (f":\n{_read(log_path)[-4000:]}" if log_path else ""))


@pytest.fixture(scope="module")
def client(server):
    with client_lib.PredictionClient(server["target"]) as c:
        yield c


def _batch(raw, n):
    return {k: v[:n] for k, v in raw.items()}


def _assert_close(got, want, n=None):
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w[:n] if n else w, rtol=TOL, atol=TOL, err_msg=k)


# --- the export ----------------------------------------------------------------------------------
def test_export_layout_manifest_and_warmup(v1, base, model_dir):
    assert sorted(os.listdir(os.path.join(base, NAME))) == ["1"]  # no temp folder left
    extra = os.path.join(v1, "assets.extra")
    assert {saved_model.WARMUP_FILE, saved_model.MANIFEST_FILE,
            saved_model.SAMPLE_REQUEST_FILE} <= set(os.listdir(extra))
    manifest = registry.read_manifest(base, NAME)
    assert manifest["version"] == 1 and manifest["model_dir"] == os.path.abspath(model_dir)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert manifest["metrics"] == json.load(f)["metrics"]
    sigs = manifest["signatures"]
    assert set(sigs) == {"serving_default", "predict_examples"}
    assert set(sigs["predict_examples"]["inputs"]) == {"examples"}
    for s in sigs.values():
        assert s["outputs"]["price_range"]["shape"] == [-1, 5]
        assert set(s["outputs"]) == {"click", "purchase", "price_range", "demand"}
    # Warmup: both signatures, batch 1 and the full batch, parsed as TF Serving does.
    requests = saved_model.read_warmup(os.path.join(extra, saved_model.WARMUP_FILE))
    assert sorted((r.model_spec.signature_name, tf.make_ndarray(next(iter(
        r.inputs.values()))).shape[0]) for r in requests) == [
        ("predict_examples", 1), ("predict_examples", 8),
        ("serving_default", 1), ("serving_default", 8)]
    # Versions are immutable.
    with pytest.raises(saved_model.ExportError, match="already exists"):
        saved_model.export(model_dir, base, NAME, version=1)


def test_warmup_requests_replay_to_the_keras_outputs(v1, model_dir, examples, expected_v1):
    loaded = tf.saved_model.load(v1)
    requests = saved_model.read_warmup(os.path.join(v1, "assets.extra", saved_model.WARMUP_FILE))
    for r in requests:
        out = loaded.signatures[r.model_spec.signature_name](
            **{k: tf.constant(tf.make_ndarray(v)) for k, v in r.inputs.items()})
        n = out["click"].shape[0]
        _assert_close({k: v.numpy() for k, v in out.items()}, expected_v1, n)


FRESH_PROCESS = r"""
import json, sys
import numpy as np, tensorflow as tf, tensorflow_text  # TF Serving links TF Text's ops
from export import saved_model
path, examples_file, out_file = sys.argv[1:]
serialized = [r.numpy() for r in tf.data.TFRecordDataset(examples_file)]
raw = saved_model.raw_features(serialized, 16)
longer = {k: np.pad(v, [(0, 0), (0, 24)], constant_values=b"" if v.dtype == object else 0)
          if v.ndim == 2 else v for k, v in raw.items()}   # any history length is accepted
sigs = tf.saved_model.load(path).signatures
res = {"raw": sigs["serving_default"](**{k: tf.constant(v) for k, v in raw.items()}),
       "raw_longer": sigs["serving_default"](**{k: tf.constant(v) for k, v in longer.items()}),
       "examples": sigs["predict_examples"](examples=tf.constant(serialized))}
json.dump({s: {k: v.numpy().tolist() for k, v in o.items()} for s, o in res.items()},
          open(out_file, "w"))
"""


def test_fresh_process_signatures_equal_the_keras_model(v1, model_dir, expected_v1, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, v1,
         os.path.join(model_dir, saved_model.SERVING_EXAMPLES_FILE), str(out)],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for signature, outputs in results.items():
        _assert_close({k: np.array(v) for k, v in outputs.items()}, expected_v1)


OPS_PROCESS = r"""
import json, sys
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
sm = saved_model_pb2.SavedModel.FromString(open(sys.argv[1] + "/saved_model.pb", "rb").read())
ops = set()
for mg in sm.meta_graphs:
    ops |= {n.op for n in mg.graph_def.node}
    for f in mg.graph_def.library.function:
        ops |= {n.op for n in f.node_def}
core = {o for o in ops if op_def_registry.get(o) is not None}
import tensorflow_text
text = {o for o in ops - core if op_def_registry.get(o) is not None}
print(json.dumps({"ops": sorted(ops), "core": sorted(core), "text": sorted(text)}))
"""


def test_export_holds_only_tf_and_tf_text_ops(v1):
    proc = subprocess.run([sys.executable, "-c", OPS_PROCESS, v1], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    unknown = set(ops["ops"]) - set(ops["core"]) - set(ops["text"])
    assert not unknown, f"ops outside TF and TF Text: {unknown}"
    assert not {"PyFunc", "PyFuncStateless", "EagerPyFunc"} & set(ops["ops"])
    # The tokenizer really is TF Text (what TF Serving links as tensorflow_text:ops_lib).
    assert "FastWordpieceTokenizeWithOffsets" in ops["text"]
    assert "ParseExampleV2" in ops["core"]


def test_killed_or_failed_export_leaves_no_version(model_dir, tmp_path, monkeypatch):
    base = str(tmp_path / "b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "export.saved_model", "--model_dir", model_dir,
         "--export_base", base, "--name", NAME],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    folder = os.path.join(base, NAME)
    # Kill it once the version is being written (its temp folder holds saved_model.pb).
    _wait_for(lambda: os.path.isdir(folder) and any(
        os.path.exists(os.path.join(folder, d, "saved_model.pb")) for d in os.listdir(folder)),
        timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = os.listdir(folder)
    assert left and all(d.startswith(saved_model.TMP_PREFIX) for d in left), left
    assert saved_model.versions(folder) == [] and registry.versions(base, NAME) == []

    # An export that fails (here: its reload check) removes its temp folder, and the
    # killed export's stale one.
    def broken_check(*a, **k):
        raise saved_model.ExportError("reload check failed on purpose")
    monkeypatch.setattr(saved_model, "check_export", broken_check)
    with pytest.raises(saved_model.ExportError, match="on purpose"):
        saved_model.export(model_dir, base, NAME)
    assert os.listdir(folder) == []


# --- the server ----------------------------------------------------------------------------------
def test_grpc_predict_equals_in_process(client, examples, expected_v1):
    serialized, raw = examples
    got = client.predict(NAME, _batch(raw, MAX_BATCH))
    _assert_close(got, expected_v1, MAX_BATCH)
    got = client.predict(NAME, {"examples": serialized[:MAX_BATCH]},
                         signature="predict_examples", version=1)
    _assert_close(got, expected_v1, MAX_BATCH)
    got = client.predict(NAME, _batch(raw, 3), output_filter=["click"])
    assert set(got) == {"click"}
    # Metadata and status through the public API.
    meta = client.metadata(NAME)
    assert meta["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert meta["predict_examples"]["inputs"] == {"examples": ("string", [-1])}
    assert client.status(NAME) == [{"version": 1, "state": "AVAILABLE", "error_code": 0,
                                    "error_message": ""}]


def test_rest_predict_and_client_cli(server, v1, expected_v1):
    import urllib.request
    sample = os.path.join(v1, "assets.extra", saved_model.SAMPLE_REQUEST_FILE)
    with open(sample, "rb") as f:
        body = f.read()
    with urllib.request.urlopen(urllib.request.Request(
            f"{server['rest']}/v1/models/{NAME}/versions/1:predict", data=body)) as r:
        outputs = json.loads(r.read())["outputs"]
    _assert_close({k: np.array(v) for k, v in outputs.items()}, expected_v1, 4)
    proc = subprocess.run([sys.executable, "-m", "export.client", "--server", server["target"],
                           "--model", NAME, "--input", sample], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = proc.stdout.strip().splitlines()[1:]
    assert len(rows) == 4
    assert float(rows[0].split()[1]) == pytest.approx(expected_v1["click"][0], abs=1e-4)


def _with_nan_price(serialized: bytes) -> bytes:
    example = tf.train.Example.FromString(serialized)
    example.features.feature["item_price"].float_list.value[:] = [float("nan")]
    return example.SerializeToString()


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def test_bad_requests_get_tf_serving_codes_and_the_server_keeps_answering(
        client, examples, expected_v1):
    serialized, raw = examples
    one = _batch(raw, 1)

    def request(inputs, **spec):
        r = predict_pb2.PredictRequest()
        r.model_spec.name = spec.pop("name", NAME)
        r.model_spec.signature_name = spec.pop("signature", "serving_default")
        if "version" in spec:
            r.model_spec.version.value = spec.pop("version")
        for k, v in inputs.items():
            r.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        r.output_filter.extend(spec.pop("output_filter", []))
        return lambda: client.predict_response(r)

    def inflated(inputs, rows):
        """Every input declares `rows` rows and carries no value (a few hundred bytes that
        TensorFlow would fill in with defaults and run as a full batch)."""
        r = predict_pb2.PredictRequest()
        r.model_spec.name = NAME
        for k, v in inputs.items():
            proto = tf.make_tensor_proto(v)
            proto.tensor_shape.dim[0].size = rows
            for field in ("tensor_content", "string_val", "float_val", "int64_val"):
                proto.ClearField(field)
            r.inputs[k].CopyFrom(proto)
        return lambda: client.predict_response(r)

    C = grpc.StatusCode
    cases = {
        "unknown model": (request(one, name="nope"), C.NOT_FOUND),
        "unknown version": (request(one, version=99), C.NOT_FOUND),
        "unknown label": (lambda: client.predict(NAME, one, label="nope"),
                          C.INVALID_ARGUMENT),
        "missing input": (request({k: v for k, v in one.items() if k != "query"}),
                          C.INVALID_ARGUMENT),
        "extra input": (request({**one, "colour": np.array([b"red"])}), C.INVALID_ARGUMENT),
        "wrong dtype": (request({**one, "item_price": np.array([b"cheap"])}),
                        C.INVALID_ARGUMENT),
        "wrong rank": (request({**one, "query": np.array([[b"a", b"b"]])}),
                       C.INVALID_ARGUMENT),
        "batch sizes differ": (request({**one, "query": np.array([b"a", b"b"])}),
                               C.INVALID_ARGUMENT),
        "ragged history": (request({**one, "hist_price": one["hist_price"][:, :3]}),
                           C.INVALID_ARGUMENT),
        "undecodable example": (request({"examples": np.array([b"\x08not a tf.Example"])},
                                        signature="predict_examples"), C.INVALID_ARGUMENT),
        "NaN price": (request({**one, "item_price": np.array([np.nan], np.float32)}),
                      C.INVALID_ARGUMENT),
        "infinite history price": (request({**one, "hist_price": np.where(
            np.arange(one["hist_price"].shape[1]) == 0, np.inf, one["hist_price"]).astype(
                np.float32)}), C.INVALID_ARGUMENT),
        # TensorFlow 2.21 loses this status' code (its text is not UTF-8): still refused.
        "NaN in a tf.Example": (request({"examples": np.array([_with_nan_price(serialized[0])])},
                                        signature="predict_examples"), C.INVALID_ARGUMENT),
        "batch too large": (request(_batch(raw, MAX_BATCH + 1)), C.INVALID_ARGUMENT),
        "declares more rows than it carries": (inflated(one, 20), C.INVALID_ARGUMENT),
        "negative dimension": (inflated(one, -1), C.INVALID_ARGUMENT),
        "unknown signature": (request(one, signature="classify"), C.FAILED_PRECONDITION),
        "unknown output": (request(one, output_filter=["ctr"]), C.INVALID_ARGUMENT),
        "undecodable request": (lambda: client.channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict")(b"\xff\xff\xff\x00garbage",
                                                           timeout=30), C.INVALID_ARGUMENT),
        "metadata of unknown model": (lambda: client.metadata("nope"), C.NOT_FOUND),
        "status of unknown model": (lambda: client.status("nope"), C.NOT_FOUND),
        "status of unknown version": (lambda: client.status(NAME, 42), C.NOT_FOUND),
    }
    for name, (call, code) in cases.items():
        assert _code(call) == code, name
        _assert_close(client.predict(NAME, one), expected_v1, 1)  # still answering
    # An unsupported metadata field, with the raw stub.
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    req.model_spec.name = NAME
    assert _code(lambda: client.prediction.GetModelMetadata(req)) == C.INVALID_ARGUMENT


def test_new_version_swaps_in_with_zero_failed_requests(
        server, client, base, model_dir_v2, examples, expected_v1):
    serialized, raw = examples
    expected_v2 = keras_outputs(model_dir_v2, raw)
    assert abs(expected_v2["click"][0] - expected_v1["click"][0]) > 1e-3
    request = client.predict_request(NAME, _batch(raw, 1))
    seen, errors, stop = [], [], threading.Event()

    def send():
        while not stop.is_set():
            try:
                r = client.predict_response(request)
                seen.append((r.model_spec.version.value,
                             float(tf.make_ndarray(r.outputs["click"])[0])))
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
            time.sleep(0.005)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert saved_model.export(model_dir_v2, base, NAME) == os.path.join(base, NAME, "2")
        n = len(seen)
        _wait_for(lambda: seen and seen[-1][0] == 2 and len(seen) > n + 20, timeout=180)
    finally:
        stop.set()
        sender.join()
    assert not errors, errors[:5]
    versions = [v for v, _ in seen]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    for v, click in seen:
        want = (expected_v1 if v == 1 else expected_v2)["click"][0]
        assert click == pytest.approx(want, abs=TOL)
    # The old version is unloaded once its requests are done; the new one is available.
    _wait_for(lambda: {s["version"]: s["state"] for s in client.status(NAME)}
              == {2: "AVAILABLE", 1: "END"}, timeout=30)
    log = _read(server["log"])
    assert "Successfully loaded servable {name: shop version: 2}" in log
    assert "Unloaded servable {name: shop version: 1}" in log


def test_a_version_that_fails_to_load_is_reported_and_never_served(client, base, examples):
    folder = os.path.join(base, NAME)
    tmp = os.path.join(folder, ".tmp-broken")
    os.makedirs(os.path.join(tmp, "variables"))
    with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    os.rename(tmp, os.path.join(folder, "3"))
    try:
        status = _wait_for(lambda: next((s for s in client.status(NAME)
                                         if s["version"] == 3 and s["state"] == "END"), None),
                           timeout=60)
        assert status["error_code"] != 0 and status["error_message"]
        # Version 2 keeps serving the latest-version requests.
        r = client.predict_response(client.predict_request(NAME, _batch(examples[1], 1)))
        assert r.model_spec.version.value == 2
        assert _code(lambda: client.predict(NAME, _batch(examples[1], 1), version=3)) == \
            grpc.StatusCode.NOT_FOUND
    finally:
        shutil.rmtree(os.path.join(folder, "3"))


def test_promote_writes_a_models_config_the_server_honours(client, base, examples,
                                                            expected_v1):
    one = _batch(examples[1], 1)
    registry.promote(base, NAME, 1, "stable")
    registry.promote(base, NAME, 2, "canary")
    config = registry.read_config(base)
    entry = config.model_config_list.config[0]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert registry.lookup(base, NAME, "stable") == 1

    def version_of(label):
        try:
            return client.predict_response(
                client.predict_request(NAME, one, label=label)).model_spec.version.value
        except grpc.RpcError:
            return None

    # The server re-reads the config, loads version 1 again and routes the labels (each label
    # once its version is available: under load "stable" can route a moment before "canary").
    _wait_for(lambda: version_of("stable") == 1 and version_of("canary") == 2, timeout=120)
    _assert_close(client.predict(NAME, one, label="stable"), expected_v1, 1)
    # Moving the label is honoured too.
    registry.promote(base, NAME, 2, "stable")
    _wait_for(lambda: version_of("stable") == 2, timeout=60)
    states = {s["version"]: s["state"] for s in client.status(NAME)}
    assert states[2] == "AVAILABLE"


def test_reload_config_rpc_is_off_unless_enabled(client, base, examples):
    """Any client could unload every model with HandleReloadConfigRequest: the server
    refuses it by default, and honours it with --enable_model_config_rpc."""
    from tensorflow_serving.apis import model_management_pb2

    unload_all = model_management_pb2.ReloadConfigRequest()
    unload_all.config.model_config_list.SetInParent()
    assert (_code(lambda: client.models.HandleReloadConfigRequest(unload_all))
            == grpc.StatusCode.FAILED_PRECONDITION)
    # Still serving (whichever version earlier tests left it on).
    assert client.predict(NAME, _batch(examples[1], 1))["click"].shape == (1,)

    server = serve.Server(serve.single_model_config(NAME, os.path.join(base, NAME)), port=0,
                          file_system_poll_wait_seconds=0, enable_model_config_rpc=True)
    server.start()
    try:
        with client_lib.PredictionClient(f"127.0.0.1:{server.port}") as c:
            assert c.status(NAME)[0]["state"] == "AVAILABLE"
            # TF Serving's default: a label may not point at a version that is not serving;
            # the config is refused and the old one kept.
            labelled = model_management_pb2.ReloadConfigRequest()
            labelled.config.CopyFrom(serve.single_model_config(NAME, os.path.join(base, NAME)))
            labelled.config.model_config_list.config[0].version_labels["stable"] = 99
            status = c.models.HandleReloadConfigRequest(labelled).status
            assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert "not currently available" in status.error_message
            assert c.predict(NAME, _batch(examples[1], 1))["click"].shape == (1,)
            assert c.models.HandleReloadConfigRequest(unload_all).status.error_code == 0
            assert _code(lambda: c.predict(NAME, _batch(examples[1], 1))) in (
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
    finally:
        server.stop()


def _http(port: int, head: bytes, body: bytes = b"", wait: float = 15.0) -> tuple[int, str]:
    """Sends raw bytes to the REST port; (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                n = [int(line.split(b":")[1]) for line in header.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")]
                if n and len(rest) >= n[0]:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")


def _post(path: str, length: str | None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def test_rest_bounds_what_a_request_may_cost_and_keeps_answering(server, v1):
    """Size, length and time limits before any work; TF Serving's codes for bodies that
    do not parse; the server answers a valid request after each."""
    import urllib.request
    port = int(server["rest"].rsplit(":", 1)[1])
    path = f"/v1/models/{NAME}:predict"
    with open(os.path.join(v1, "assets.extra", saved_model.SAMPLE_REQUEST_FILE), "rb") as f:
        good = f.read()

    def answer():
        with urllib.request.urlopen(urllib.request.Request(
                server["rest"] + path, data=good), timeout=30) as r:
            return {k: np.array(v) for k, v in json.loads(r.read())["outputs"].items()}

    reference = answer()  # whichever version the earlier tests left as the latest
    assert reference["click"].shape == (4,)

    def still_answering():
        _assert_close(answer(), reference)

    body = json.dumps({"inputs": {"query": [{"b64": "!!!"}]}}).encode()
    cases = {
        # A body larger than --max_message_bytes: refused on its header, nothing read.
        "huge body": (_post(path, str(10 ** 9)), b"", 413, "larger than the limit"),
        "negative length": (_post(path, "-1"), b"", 400, "non-negative integer"),
        "no length": (_post(path, None), b"", 411, "Content-Length"),
        "deep JSON": (_post(path, str(200_000)), b"[" * 200_000, 400, "JSON parse error"),
        "bad base64": (_post(path, str(len(body))), body, 400, "base64"),
        "not JSON": (_post(path, "5"), b"{nope", 400, "JSON parse error"),
    }
    for name, (head, data, status, words) in cases.items():
        got, text = _http(port, head, data)
        assert got == status and words in text, (name, got, text)
        still_answering()
    # A client that promises a body and stalls is cut off after --rest_api_timeout_in_ms.
    t0 = time.time()
    got, text = _http(port, _post(path, "100"), b'{"inp')
    assert got == 408 and "not received within 1.5 s" in text, (got, text)
    assert time.time() - t0 < 10
    still_answering()
    # ... and so is one that trickles a byte every 0.5 s (each read within the timeout).
    t0 = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(_post(path, "100"))
        reply = b""
        for _ in range(20):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.5)
            try:
                reply += sock.recv(65536)
                if reply:
                    break
            except socket.timeout:
                pass
    assert reply.startswith(b"HTTP/1.1 408") or reply.startswith(b"HTTP/1.0 408"), reply
    assert time.time() - t0 < 5
    still_answering()


def test_rest_metadata_and_prometheus_metrics(server, client, examples):
    import urllib.error
    import urllib.request

    def get(path):
        try:
            with urllib.request.urlopen(server["rest"] + path, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, text = get(f"/v1/models/{NAME}/metadata")  # the latest version
    assert status == 200, text
    meta = json.loads(text)
    version = meta["model_spec"]["version"]
    assert meta["model_spec"] == {"name": NAME, "signature_name": "", "version": version}
    assert json.loads(get(f"/v1/models/{NAME}/versions/{version}/metadata")[1]) == meta
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_examples"} <= set(defs)
    assert defs["serving_default"]["inputs"]["query"]["dtype"] == "DT_STRING"
    assert "click" in defs["serving_default"]["outputs"]
    assert get("/v1/models/nope/metadata")[0] == 404

    # One good gRPC request and one bad REST request, then the counters.
    client.predict(NAME, _batch(examples[1], 1))
    port = int(server["rest"].rsplit(":", 1)[1])
    assert _http(port, _post(f"/v1/models/{NAME}:predict", "5"), b"{nope")[0] == 400

    # Metrics: the requests of this module by entry point and status, with latencies.
    status, text = get("/monitoring/prometheus/metrics")
    assert status == 200
    counts = {}
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:request_count_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels] = float(value)
    ok_grpc = f'{{entrypoint="GRPC",model_name="{NAME}",status="OK"}}'
    assert counts[":tensorflow:serving:request_count_total" + ok_grpc] >= 1, counts
    assert any('entrypoint="REST"' in k and "INVALID_ARGUMENT" in k for k in counts), counts
    assert f':tensorflow:serving:request_latency_bucket{{API="Predict",entrypoint="GRPC",' \
           f'le="+Inf",model_name="{NAME}"}}' in text
    assert ':tensorflow:cc:saved_model:load_attempt_count_total{model_name="shop",' \
           'status="OK"}' in text


def test_a_version_still_being_copied_is_retried_until_it_loads(v1, tmp_path, examples,
                                                                 expected_v1):
    """`cp -r` writes saved_model.pb before variables/: the first load fails; TF Serving
    retries (--max_num_load_retries) and so does this server, LOADING meanwhile."""
    folder = tmp_path / NAME / "1"
    shutil.copytree(v1, folder, ignore=shutil.ignore_patterns("variables"))
    server = serve.Server(serve.single_model_config(NAME, str(tmp_path / NAME)), port=0,
                          file_system_poll_wait_seconds=0.2, max_num_load_retries=5,
                          load_retry_interval=1.0)
    server.start()
    try:
        with client_lib.PredictionClient(f"127.0.0.1:{server.port}") as c:
            status = c.status(NAME)[0]
            assert status["state"] == "LOADING" and "attempt 1 of 6 failed" in status[
                "error_message"], status
            shutil.copytree(os.path.join(v1, "variables"), folder / "variables")
            _wait_for(lambda: c.status(NAME)[0]["state"] == "AVAILABLE", timeout=60)
            _assert_close(c.predict(NAME, _batch(examples[1], 1)), expected_v1, 1)
    finally:
        server.stop()


def test_batching_merges_concurrent_requests_and_isolates_a_bad_one(v1, examples,
                                                                    expected_v1, tmp_path):
    """--enable_batching: concurrent requests run as fewer, larger calls with the same
    answers; a request the graph refuses fails alone; the queue and the batch are bounded."""
    from export import batching
    params_file = tmp_path / "batching.config"
    params_file.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 50000 }"
                           "\nnum_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n")
    params = batching.Parameters.from_file(str(params_file))
    assert params == batching.Parameters(8, 50000, 100, 2)
    bad_file = tmp_path / "bad.config"
    bad_file.write_text("max_batch_size { value: 8 }\npad_variable_length_inputs: true\n")
    with pytest.raises(ValueError, match="pad_variable_length_inputs is not supported"):
        batching.Parameters.from_file(str(bad_file))
    bad_file.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(ValueError, match="max_batch_size must be > 0"):
        batching.Parameters.from_file(str(bad_file))

    raw = examples[1]
    base = str(tmp_path / "base")
    shutil.copytree(v1, os.path.join(base, NAME, "1"))
    server = serve.Server(serve.single_model_config(NAME, os.path.join(base, NAME)), port=0,
                          file_system_poll_wait_seconds=0, threads=32,
                          batching_parameters=params).start()
    try:
        with client_lib.PredictionClient(f"127.0.0.1:{server.port}") as c:
            warm = server.batcher.batches
            answers, failures = {}, {}
            bad = {**_batch(raw, 1), "item_price": np.array([np.nan], np.float32)}

            def send(i):  # request i: `rows` rows starting at row i % 4, its own answer
                rows, first = 1 + i % 3, i % 4
                part = {k: v[first:first + rows] for k, v in raw.items()}
                try:
                    answers[i] = (first, rows, c.predict(NAME, bad if i == 5 else part))
                except grpc.RpcError as e:
                    failures[i] = e.code()

            threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert failures == {5: grpc.StatusCode.INVALID_ARGUMENT}
            assert len(answers) == 23
            for first, rows, got in answers.values():
                _assert_close(got, {k: v[first:first + rows] for k, v in expected_v1.items()})
            # Fewer calls than requests (the bad request's batch was re-run one by one).
            assert server.batcher.batches - warm < 23
            assert _code(lambda: c.predict(NAME, _batch(raw, 9))) == \
                grpc.StatusCode.INVALID_ARGUMENT  # more rows than a batch holds
    finally:
        server.stop()

    # A full queue refuses (UNAVAILABLE) instead of growing without bound.
    small = batching.Parameters(max_batch_size=8, batch_timeout_micros=2_000_000,
                                max_enqueued_batches=1, num_batch_threads=1)
    server = serve.Server(serve.single_model_config(NAME, os.path.join(base, NAME)), port=0,
                          file_system_poll_wait_seconds=0, threads=8,
                          batching_parameters=small).start()
    try:
        with client_lib.PredictionClient(f"127.0.0.1:{server.port}") as c:
            c.predict(NAME, _batch(raw, 1))  # the dtypes fetched: the next call queues at once
            first = threading.Thread(target=lambda: c.predict(NAME, _batch(raw, 6)))
            first.start()
            _wait_for(lambda: server.batcher.queued_rows == 6, timeout=30)
            assert _code(lambda: c.predict(NAME, _batch(raw, 3))) == \
                grpc.StatusCode.UNAVAILABLE
            first.join()
    finally:
        server.stop()


def _serving_example_args() -> dict:
    import yaml
    folder = os.path.join(REPO, "examples", "serving")
    with open(os.path.join(folder, "docker-compose.yaml")) as f:
        compose = yaml.safe_load(f)["services"]["tfserving"]
    with open(os.path.join(folder, "kubernetes.yaml")) as f:
        deployment = next(d for d in yaml.safe_load_all(f) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {"compose": (compose["image"], compose["command"]),
            "kubernetes": (container["image"], container["args"])}


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_tf_serving_examples_run_as_written_on_the_local_server(where, v1, tmp_path):
    """examples/serving: the image is the pinned TF Serving release; every argument is one
    `export.serve` accepts, and the server starts with them (and the mounted config files)
    and serves the promoted model, REST status and Prometheus metrics included."""
    import urllib.request
    image, args = _serving_example_args()[where]
    with open(os.path.join(REPO, "setup.cfg")) as f:
        pinned = re.search(r"tensorflow-serving-api==(\S+)", f.read()).group(1)
    assert image == f"tensorflow/serving:{pinned}"
    base = str(tmp_path / "exports")
    shutil.copytree(v1, os.path.join(base, NAME, "1"))
    registry.promote(base, NAME, 1, "stable", serving_base_path="/models")
    config = os.path.join(base, "models.config")
    with open(config) as f:
        text = f.read()
    assert 'base_path: "/models/shop"' in text
    with open(config, "w") as f:  # the container's /models is this test's folder
        f.write(text.replace("/models/", base + "/"))
    rest = _free_port()
    local = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in ("--port", "--rest_api_port"):
            continue
        local.append(arg.replace("/models/", base + "/").replace(
            "/config/", os.path.join(REPO, "examples", "serving") + "/"))
    proc, _ = serve.launch(local + ["--rest_api_port", str(rest)],
                           str(tmp_path / "server.log"), env=subprocess_env())
    try:
        url = f"http://127.0.0.1:{rest}"
        _wait_for(lambda: json.loads(urllib.request.urlopen(f"{url}/v1/models/{NAME}").read())[
            "model_version_status"][0]["state"] == "AVAILABLE", proc, str(tmp_path / "server.log"),
            timeout=120)
        with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics") as r:
            assert b":tensorflow:cc:saved_model:load_attempt_count" in r.read()
    finally:
        assert serve.terminate(proc) == 0


def test_an_unknown_server_flag_is_a_clear_error():
    """A TF Serving flag this server does not implement is refused by name, not ignored."""
    proc = subprocess.run([sys.executable, "-m", "export.serve", "--model_base_path", "/x",
                           "--tensorflow_session_parallelism=2"], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "Unknown command line flag 'tensorflow_session_parallelism'" in proc.stderr


def test_batching_merge_concatenates_every_encoding_exactly():
    """`batching.merge` joins fixed-width tensor_content, repeated-field values, mixed
    encodings and single-value broadcasts into the rows a decode-and-concatenate gives."""
    from tensorflow.core.framework import tensor_pb2
    from export import batching, tensor_protos

    def as_values(arr):
        p = tf.make_tensor_proto(arr)
        if not p.tensor_content:
            return p
        q = tensor_pb2.TensorProto(dtype=p.dtype)
        q.tensor_shape.CopyFrom(p.tensor_shape)
        field = tensor_protos.value_field(p)
        values = arr.ravel().view(np.uint16) if field == "half_val" else arr.ravel()
        getattr(q, field).extend(values.tolist())
        return q

    def broadcast(arr):
        p = as_values(arr)
        field = tensor_protos.value_field(p)
        del getattr(p, field)[1:]
        return p

    for arr in (np.array([[1.5, 2.0]], np.float32), np.array([[3, 4]], np.int32),
                np.array([[True, False]]), np.array([[1.0, 2.0]], np.float16),
                np.array([[5, 6]], np.int64), np.array([[b"a", b"bc"]], object)):
        content, values, single = tf.make_tensor_proto(arr), as_values(arr), broadcast(arr)
        for combo in ([content, content], [values, values], [content, values],
                      [values, single], [single, single]):
            merged = batching.merge([[p] for p in combo], 2)[0]
            want = np.concatenate([tf.make_ndarray(p) for p in combo])
            got = tf.make_ndarray(merged)
            assert got.shape == want.shape and (got == want).all(), (arr.dtype, got, want)


def test_version_labels_follow_tf_servings_rule(model_dir):
    """A label may point only at a serving version; the flag lets a NEW label point at a
    version not loaded yet (a config at start-up), never an existing label move to one."""
    def config(**labels):
        c = serve.single_model_config(NAME, "/nowhere")
        c.model_config_list.config[0].version_labels.update(labels)
        return c

    strict = serve.ModelManager()
    with pytest.raises(serve.ServingError, match="not currently available"):
        strict.set_config(config(stable=1))
    lenient = serve.ModelManager(allow_version_labels_for_unavailable_models=True)
    lenient.set_config(config(stable=1))           # new label, nothing loaded: allowed
    lenient.set_config(config(stable=1, canary=2))  # another new one
    with pytest.raises(serve.ServingError, match="not currently available"):
        lenient.set_config(config(stable=2, canary=2))  # moving stable: refused
    lenient.models[NAME].available[2] = object()    # version 2 serving: the move is fine
    lenient.set_config(config(stable=2, canary=2))
    assert dict(lenient.models[NAME].config.version_labels) == {"stable": 2, "canary": 2}
