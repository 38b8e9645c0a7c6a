"""`export.client`: a Python client and CLI for TF Serving's gRPC PredictionService.

    client = PredictionClient("127.0.0.1:8500")
    outputs = client.predict("shop", {"query": ["red shoes"], ...})        # numpy arrays
    client.predict("shop", {"examples": [serialized]}, signature="predict_examples",
                   label="stable")
    client.metadata("shop"); client.status("shop")

Only the public `tensorflow-serving-api` protos are used, so it works unchanged against
the real `tensorflow_model_server` and against `export.serve`. Inputs are cast to the
dtypes the signature declares (read once per model from GetModelMetadata), so plain Python
lists and JSON values can be sent.

    python -m export.client --server 127.0.0.1:8500 --model shop --input request.json

`request.json` is TF Serving's REST body: {"signature_name": ..., "inputs": {name: column}}
or {"instances": [{name: value}, ...]}; binary strings as {"b64": "..."}.
"""

from __future__ import annotations

import base64
import json
import os
import sys

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

STATES = dict(get_model_status_pb2.ModelVersionStatus.State.items())


def decode_json_value(v):
    """JSON value -> numpy-friendly value; {"b64": s} -> bytes (TF Serving's REST form)."""
    if isinstance(v, dict):
        if set(v) != {"b64"}:
            raise ValueError(f'an object value must be {{"b64": ...}}, got keys {sorted(v)}')
        try:
            return base64.b64decode(v["b64"], validate=True)
        except (TypeError, ValueError) as e:  # binascii.Error is a ValueError
            raise ValueError(f'{{"b64": ...}} must hold standard base64 text: {e}') from None
    if isinstance(v, list):
        return [decode_json_value(x) for x in v]
    return v


def request_inputs(body: dict) -> tuple[dict, str]:
    """(columns, signature_name) of a TF Serving REST-style JSON body."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ValueError('the request must hold exactly one of "instances" or "inputs"')
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise ValueError('"instances" must be a non-empty list of objects')
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    else:
        columns = body["inputs"]
        if not isinstance(columns, dict):
            raise ValueError('"inputs" must be an object of name -> column')
    return ({k: decode_json_value(v) for k, v in columns.items()},
            body.get("signature_name", "serving_default"))


class PredictionClient:
    """Predict, GetModelMetadata and GetModelStatus over one gRPC channel."""

    def __init__(self, target: str, timeout: float = 30.0, max_message_bytes: int = 64 << 20):
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout
        self._dtypes: dict = {}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _spec(spec, model, version=None, label=None, signature=None):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label
        if signature is not None:
            spec.signature_name = signature

    def predict_request(self, model, inputs: dict, signature="serving_default", version=None,
                        label=None, output_filter=None) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        dtypes = self.input_dtypes(model, signature, version, label)
        for k, v in inputs.items():
            dtype = dtypes.get(k)
            value = np.asarray(v, dtype=None if dtype in (None, tf.string) else
                               dtype.as_numpy_dtype)
            request.inputs[k].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter or [])
        return request

    def predict_response(self, request, timeout=None) -> predict_pb2.PredictResponse:
        return self.prediction.Predict(request, timeout=timeout or self.timeout)

    def predict(self, model, inputs: dict, signature="serving_default", version=None,
                label=None, output_filter=None, timeout=None) -> dict:
        """Output name -> numpy array. Raises grpc.RpcError with the server's status code."""
        response = self.predict_response(self.predict_request(
            model, inputs, signature, version, label, output_filter), timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self, model, version=None, label=None) -> dict:
        """Signature name -> {"inputs"|"outputs": {name: (dtype, shape)}} of the version."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self.prediction.GetModelMetadata(request, timeout=self.timeout)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)

        def tensors(m):
            return {k: (tf.dtypes.as_dtype(t.dtype).name,
                        [-1 if t.tensor_shape.unknown_rank else d.size
                         for d in t.tensor_shape.dim]) for k, t in m.items()}

        return {name: {"inputs": tensors(s.inputs), "outputs": tensors(s.outputs),
                       "method_name": s.method_name}
                for name, s in defs.signature_def.items()}

    def input_dtypes(self, model, signature, version=None, label=None) -> dict:
        key = (model, signature, version, label)
        if key not in self._dtypes:
            try:
                sig = self.metadata(model, version, label).get(signature, {"inputs": {}})
                self._dtypes[key] = {k: tf.dtypes.as_dtype(d) for k, (d, _)
                                     in sig["inputs"].items()}
            except grpc.RpcError:  # let Predict report the error in its own words
                return {}
        return self._dtypes[key]

    def status(self, model, version=None) -> list[dict]:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version)
        response = self.models.GetModelStatus(request, timeout=self.timeout)
        names = {v: k for k, v in STATES.items()}
        return [{"version": s.version, "state": names.get(s.state, str(s.state)),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]


def format_predictions(outputs: dict) -> str:
    """A table row per example: click, purchase, price range probabilities, demand."""
    n = len(outputs[next(iter(outputs))])
    lines = [f"{'#':>3} {'click':>8} {'purchase':>9} {'demand':>8}  price_range"]
    for i in range(n):
        pr = outputs.get("price_range")
        probs = "" if pr is None else " ".join(f"{p:.3f}" for p in pr[i])
        top = "" if pr is None else f"  (most likely {int(np.argmax(pr[i]))})"
        cell = {k: f"{float(outputs[k][i]):.4f}" if k in outputs else "-"
                for k in ("click", "purchase", "demand")}
        lines.append(f"{i:>3} {cell['click']:>8} {cell['purchase']:>9} {cell['demand']:>8}  "
                     f"[{probs}]{top}")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("server", "127.0.0.1:8500", "host:port of the gRPC model server.")
    flags.DEFINE_string("model", None, "Model name.")
    flags.DEFINE_string("input", None, "Request JSON (TF Serving REST body form).")
    flags.DEFINE_string("signature", None, "Signature (default: the request's, else "
                        "serving_default).")
    flags.DEFINE_integer("version", None, "Version to ask for (default: latest).")
    flags.DEFINE_string("label", None, "Version label to ask for (e.g. stable).")
    flags.DEFINE_enum("show", "predict", ["predict", "metadata", "status"], "What to print.")
    flags.DEFINE_float("timeout", 30.0, "Seconds per call.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model:
        print("error: --model is required", file=sys.stderr)
        return 2
    try:
        with PredictionClient(FLAGS.server, FLAGS.timeout) as client:
            if FLAGS.show == "status":
                print(json.dumps(client.status(FLAGS.model, FLAGS.version), indent=1))
            elif FLAGS.show == "metadata":
                print(json.dumps(client.metadata(FLAGS.model, FLAGS.version, FLAGS.label),
                                 indent=1))
            else:
                if not FLAGS.input:
                    print("error: --input is required to predict", file=sys.stderr)
                    return 2
                with open(FLAGS.input, encoding="utf-8") as f:
                    try:
                        columns, signature = request_inputs(json.load(f))
                    except (ValueError, json.JSONDecodeError) as e:
                        print(f"error: {FLAGS.input}: {e}", file=sys.stderr)
                        return 2
                outputs = client.predict(FLAGS.model, columns, FLAGS.signature or signature,
                                         FLAGS.version, FLAGS.label)
                print(format_predictions(outputs))
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
