"""`python -m export.saved_model`: a trained model_dir -> a versioned SavedModel for TF Serving.

    B/NAME/<version>/saved_model.pb, variables/        tag "serve"
      signatures  serving_default   raw features (strings and numbers, see RAW_FEATURES)
                  predict_examples  a batch of serialized tf.Examples ("examples")
                  both -> click [B], purchase [B], price_range [B, K], demand [B]
      assets.extra/tf_serving_warmup_requests   PredictionLogs of real eval examples
      assets.extra/ecom_zoo_manifest.json       what `export.registry` lists
      assets.extra/sample_request.json          a request `export.client --input` sends
    with --retrieval_dir (a trained two_tower), also:
      signature   recommend         a user's context -> the top K of the whole catalogue
                                    (`export.recommend_signature`)
      assets.extra/sample_recommend_request.json

Preprocessing (WordPiece, id lookups, bucketing) is inside the graph, so the graph holds
only core TF and TF Text ops, which stock TF Serving links. A version is written to a
hidden sibling folder, reloaded and checked against the Keras model, and only then renamed
to its integer name: a server polling B/NAME never sees a half-written version (it
ignores names that are not integers), and a failed or killed export leaves none.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging as pylogging
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

from absl import app, flags, logging  # noqa: E402

from export import graph_checks, layout  # noqa: E402
from trainers.core import rundir  # noqa: E402

SIGNATURE_RAW = "serving_default"
SIGNATURE_EXAMPLES = "predict_examples"
EXAMPLES_INPUT = "examples"
ASSETS_EXTRA = layout.ASSETS_EXTRA
WARMUP_FILE = "tf_serving_warmup_requests"
MANIFEST_FILE = layout.MANIFEST_FILE
SAMPLE_REQUEST_FILE = "sample_request.json"
SAMPLE_RECOMMEND_FILE = "sample_recommend_request.json"
# Behaviour events per user a `recommend` request carries (all feed the counts).
RECOMMEND_HISTORY_LIMIT = 200
SERVING_EXAMPLES_FILE = rundir.SERVING_EXAMPLES  # written by the trainer
TMP_PREFIX = ".tmp-"
NUM_WARMUP_EXAMPLES = 8
TOLERANCE = 1e-5


class ExportError(RuntimeError):
    pass


# --- the serving graph ---------------------------------------------------------------------
def raw_input_signature() -> dict:
    """TensorSpecs of the raw features: [batch] scalars, [batch, any length] histories."""
    import tensorflow as tf
    from zoo.models.features import RAW_FEATURES

    return {name: tf.TensorSpec([None] if rank == 1 else [None, None], tf.as_dtype(dtype),
                                name=name)
            for name, (dtype, rank) in RAW_FEATURES.items()}


def serving_functions(model, history_length: int):
    """(raw_fn, examples_fn): tf.functions from raw features / serialized examples to outputs."""
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import RAW_FEATURES, TASKS

    def forward(raw):
        raw = graph_checks.finite(raw)
        outputs = model(model.preprocessor(raw), training=False)
        return {k: tf.cast(outputs[k], tf.float32) for k in TASKS}

    @tf.function(input_signature=[raw_input_signature()])
    def raw_fn(raw):
        # The preprocessor pads each history column on its own: ragged columns would pass
        # silently, so a request whose columns disagree is refused (InvalidArgument).
        length = tf.shape(raw["hist_item_id"])[1]
        checks = [tf.debugging.assert_equal(
            tf.shape(raw[k])[1], length,
            message=f"{k} must have as many columns as hist_item_id")
            for k, (_, rank) in RAW_FEATURES.items() if rank == 2 and k != "hist_item_id"]
        with tf.control_dependencies(checks):
            return forward({k: tf.identity(v) for k, v in raw.items()})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def examples_fn(examples):
        parsed = pipeline.parse_batch(examples, history_length, with_labels=False)
        return forward({k: parsed[k] for k in RAW_FEATURES})

    return raw_fn, examples_fn


def write_saved_model(model, path: str, history_length: int, recommender=None) -> None:
    """Keras `ExportArchive` with the two signatures (the model's variables and tables
    tracked), and `recommend` when a `Recommender` is given."""
    import keras

    raw_fn, examples_fn = serving_functions(model, history_length)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_RAW, raw_fn)
    archive.add_endpoint(SIGNATURE_EXAMPLES, examples_fn)
    if recommender is not None:
        archive.track(recommender.retriever)
        archive.track(recommender.catalogue)
        archive.add_endpoint(recommender.SIGNATURE, recommender.function)
    tf_logger = pylogging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(pylogging.WARNING)  # one INFO line per saved function otherwise
    try:
        archive.write_out(path, verbose=False)
    finally:
        tf_logger.setLevel(level)


# --- examples for warmup, the check and the sample request ---------------------------------
def serving_examples(model_dir: str, train_config: dict, n: int = NUM_WARMUP_EXAMPLES) -> list:
    """Up to n serialized eval tf.Examples of the model's data (the trainer leaves a few in
    model_dir; otherwise they come from the prepared data set, re-prepared if needed)."""
    import tensorflow as tf

    path = os.path.join(model_dir, SERVING_EXAMPLES_FILE)
    if not os.path.exists(path):
        path = rundir.write_serving_examples(model_dir, train_config)
    return [r.numpy() for r in tf.data.TFRecordDataset(path).take(n)]


def raw_features(serialized: list, history_length: int) -> dict:
    """Serialized tf.Examples -> numpy raw feature dict (the serving_default inputs)."""
    import tensorflow as tf
    from zoo.data import pipeline
    from zoo.models.features import RAW_FEATURES

    parsed = pipeline.parse_batch(tf.constant(serialized), history_length, with_labels=False)
    return {k: parsed[k].numpy() for k in RAW_FEATURES}


def predict_requests(name: str, raw: dict, serialized: list) -> list:
    """PredictRequests of both signatures, at batch 1 and at the full batch."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    requests = []
    n = len(serialized)
    for size in sorted({1, n}):
        for signature, inputs in ((SIGNATURE_RAW, {k: v[:size] for k, v in raw.items()}),
                                  (SIGNATURE_EXAMPLES,
                                   {EXAMPLES_INPUT: serialized[:size]})):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = signature
            for k, v in inputs.items():
                request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
            requests.append(request)
    return requests


def write_warmup(path: str, requests: list) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup(path: str) -> list:
    """The PredictRequests of a warmup file (TF Serving's format)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests


def sample_request(raw: dict) -> dict:
    """The TF Serving REST "inputs" (columnar) form of raw features, as JSON values."""
    return {"signature_name": SIGNATURE_RAW,
            "inputs": {k: _json_value(v.tolist()) for k, v in raw.items()}}


def _json_value(v):
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:  # TF Serving's JSON form of binary strings
            return {"b64": base64.b64encode(v).decode("ascii")}
    return v


# --- the export ------------------------------------------------------------------------------
def versions(model_base: str) -> list[int]:
    """Version folders of B/NAME, complete or not (the next version comes after them all)."""
    return layout.versions(model_base, complete=False)


def _remove_stale_temps(model_base: str) -> None:
    """Temp folders of exports whose process is gone (killed midway)."""
    for d in os.listdir(model_base):
        m = re.fullmatch(re.escape(TMP_PREFIX) + r"v\d+-(\d+)-.*", d)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(model_base, d), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signature_summary(loaded) -> dict:
    summary = {}
    for name, fn in loaded.signatures.items():
        inputs = fn.structured_input_signature[1]
        summary[name] = {
            "inputs": {k: {"dtype": s.dtype.name, "shape": [-1 if d is None else d
                                                             for d in s.shape.as_list()]}
                       for k, s in sorted(inputs.items())},
            "outputs": {k: {"dtype": s.dtype.name, "shape": [-1 if d is None else d
                                                             for d in s.shape.as_list()]}
                        for k, s in sorted(fn.structured_outputs.items())},
        }
    return summary


def check_export(path: str, requests: list, expected: dict) -> dict:
    """Reloads the SavedModel, replays the requests, compares with the in-process outputs
    (`expected`: signature name -> output name -> the full batch's values)."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    missing = set(expected) - set(loaded.signatures)
    if missing:
        raise ExportError(f"{path}: signatures {sorted(missing)} missing after reload")
    for request in requests:
        name = request.model_spec.signature_name
        fn = loaded.signatures[name]
        out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        for k, want in expected[name].items():
            got = out[k].numpy()
            want = want[: got.shape[0]]
            same = (np.array_equal(got, want) if got.dtype == object
                    else np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE))
            if not same:
                diff = ("in its values" if got.dtype == object
                        else f"by {np.abs(got - want).max():.3g}")
                raise ExportError(
                    f"{path}: signature {name} output {k} differs from the in-process "
                    f"model {diff}")
    return _signature_summary(loaded)


def export(model_dir: str, export_base: str, name: str, version: int | None = None,
           num_examples: int = NUM_WARMUP_EXAMPLES, retrieval_dir: str | None = None,
           recommend_options=None, data_dir: str | None = None) -> str:
    """Exports model_dir's model as B/NAME/<version>; returns the version folder. With a
    `retrieval_dir` (a trained two_tower) the version also answers `recommend` over the
    catalogue of `data_dir` (default: the ranker's training data)."""
    import tensorflow as tf
    from zoo.models.features import TASKS

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise ValueError(f"--name must be letters, digits, '_', '.' or '-', got {name!r}")
    if version is not None and version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    if recommend_options is not None:
        recommend_options.check()
    model, _ = rundir.load_trained(model_dir)
    if not hasattr(model, "preprocessor") or hasattr(model, "query_embeddings"):
        raise ExportError(f"{model_dir}: not a multi-task model (retrievers are exported "
                          "inside a ranker's version: --retrieval_dir)")
    with open(os.path.join(model_dir, "train_config.json"), encoding="utf-8") as f:
        train_config = json.load(f)
    history_length = int(train_config["label_config"]["history_length"])
    serialized = serving_examples(model_dir, train_config, num_examples)
    if not serialized:
        raise ExportError(f"{model_dir}: no eval examples to build warmup requests from")
    raw = raw_features(serialized, history_length)
    keras_out = model(model.preprocessor(raw), training=False)
    outputs = {k: tf.convert_to_tensor(keras_out[k]).numpy() for k in TASKS}
    expected = {SIGNATURE_RAW: outputs, SIGNATURE_EXAMPLES: outputs}
    recommender, recommend_inputs = None, None
    if retrieval_dir:
        recommender, recommend_inputs = _recommender(
            model, retrieval_dir, data_dir or train_config.get("data_dir"), history_length,
            recommend_options, num_examples)
        expected[recommender.SIGNATURE] = recommender(recommend_inputs)

    model_base = os.path.join(export_base, name)
    os.makedirs(model_base, exist_ok=True)
    _remove_stale_temps(model_base)
    target = version or (max(versions(model_base), default=0) + 1)
    if version is not None and os.path.exists(os.path.join(model_base, str(version))):
        raise ExportError(f"{model_base}/{version} already exists; versions are immutable "
                          "(omit --version to take the next one)")
    tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}v{target}-{os.getpid()}-", dir=model_base)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the version from a server's user
        write_saved_model(model, tmp, history_length, recommender)
        extra = os.path.join(tmp, ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        requests = predict_requests(name, raw, serialized)
        if recommender is not None:
            requests += recommend_requests(name, recommend_inputs)
            with open(os.path.join(extra, SAMPLE_RECOMMEND_FILE), "w", encoding="utf-8") as f:
                json.dump({"signature_name": recommender.SIGNATURE, "inputs": {
                    k: _json_value(np.asarray(v)[:1].tolist())
                    for k, v in recommend_inputs.items()}}, f, indent=1)
        write_warmup(os.path.join(extra, WARMUP_FILE), requests)
        with open(os.path.join(extra, SAMPLE_REQUEST_FILE), "w", encoding="utf-8") as f:
            json.dump(sample_request({k: v[:4] for k, v in raw.items()}), f, indent=1)
        signatures = check_export(tmp, read_warmup(os.path.join(extra, WARMUP_FILE)), expected)
        metrics = rundir.read_json(os.path.join(model_dir, "metrics.json")) or {}
        manifest = {
            "name": name, "model_dir": os.path.abspath(model_dir),
            "model": train_config.get("model"), "preset": train_config.get("preset"),
            "step": metrics.get("step"), "metrics": metrics.get("metrics", {}),
            "signatures": signatures, "tensorflow_version": tf.__version__,
            "history_length": history_length, "label_config": train_config["label_config"],
        }
        if metrics.get("oracle"):
            manifest["oracle"] = metrics["oracle"]
        if recommender is not None:
            manifest["recommend"] = {**recommender.manifest(),
                                     "retrieval_dir": os.path.abspath(retrieval_dir)}
        # Publish: take the next free version unless one was asked for.
        while True:
            final = os.path.join(model_base, str(target))
            manifest.update(version=target, export_time=datetime.datetime.now(
                datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            with open(os.path.join(extra, MANIFEST_FILE), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
            try:
                os.rename(tmp, final)  # atomic; fails if another export took the number
                break
            except OSError:
                if version is not None or not os.path.exists(final):
                    raise
                target = max(versions(model_base)) + 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("exported %s version %d to %s", name, target, final)
    return final


def _recommender(model, retrieval_dir, data_dir, history_length, options, num_examples):
    """The `recommend` signature's Recommender and sample inputs of real users of the log."""
    from export import recommend_signature
    from trainers.core import recommend_lib
    from zoo.data import contract, prepare as prepare_lib, serving_features

    retriever, retriever_labels = rundir.load_trained(retrieval_dir)
    if not hasattr(retriever, "query_embeddings"):
        raise ExportError(f"--retrieval_dir {retrieval_dir}: not a retriever (train one with "
                          "python -m trainers.multitask --model two_tower)")
    tables = contract.read_contract(prepare_lib.resolve_contract_dir(data_dir))
    recommender = recommend_signature.Recommender(
        model, retriever, tables, history_length, retriever_labels.history_length,
        options or recommend_lib.Options())
    reqs = recommend_signature.sample_requests(tables, recommender.snapshot, num_examples)
    inputs = serving_features.request_inputs(tables, reqs, RECOMMEND_HISTORY_LIMIT)
    inputs["exclude_item_id"] = np.zeros((len(reqs), 0), object)
    return recommender, inputs


def recommend_requests(name: str, inputs: dict) -> list:
    """PredictRequests of `recommend`, at batch 1 and at the full batch."""
    import tensorflow as tf
    from export import recommend_signature
    from tensorflow_serving.apis import predict_pb2

    tensors = recommend_signature.to_tensors(inputs)
    n = int(tensors["user_id"].shape[0])
    requests = []
    for size in sorted({1, n}):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = recommend_signature.SIGNATURE
        for k, v in tensors.items():
            request.inputs[k].CopyFrom(tf.make_tensor_proto(v[:size]))
        requests.append(request)
    return requests


# --- CLI ---------------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    from trainers.core.recommend_lib import OBJECTIVES, Options

    flags.DEFINE_string("model_dir", None, "A finished trainers.multitask model_dir.")
    flags.DEFINE_string("export_base", None, "Export base B: versions go to B/NAME/<version>.")
    flags.DEFINE_string("name", None, "Model name under the export base (default: the "
                        "model_dir's folder name).")
    flags.DEFINE_integer("version", None, "Version number (default: the last one + 1).")
    flags.DEFINE_string("retrieval_dir", None, "A trained two_tower model_dir: the version "
                        "also answers the `recommend` signature (the whole catalogue -> top K).")
    flags.DEFINE_string("data_dir", None, "With --retrieval_dir: the data whose catalogue and "
                        "statistics the version carries (default: the ranker's training data).")
    flags.DEFINE_integer("recommend_k", Options.k, "With --retrieval_dir: items per answer.")
    flags.DEFINE_integer("recommend_candidates", Options.candidates, "With --retrieval_dir: "
                         "items retrieved and re-ranked per request.")
    flags.DEFINE_enum("recommend_objective", Options.objective, list(OBJECTIVES),
                      "With --retrieval_dir: what orders the answer.")
    flags.DEFINE_float("retrieval_weight", Options.retrieval_weight, "With --retrieval_dir: "
                       "the blend "
                       "log(objective) + weight x retrieval logit (0: the ranker alone).")
    flags.DEFINE_integer("recommend_ranker_history", Options.ranker_history, "With "
                         "--retrieval_dir: history events the ranker reads per candidate "
                         "(0: as many as its preprocessor reads, max_history).")
    flags.DEFINE_integer("recommend_explain_steps", Options.explain_steps, "With "
                         "--retrieval_dir and a bert_mtl ranker: each answered item carries "
                         "its two reasons (because_* outputs), integrated gradients with this "
                         "many steps in the graph (0: none; an answer costs more with it).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model_dir or not FLAGS.export_base:
        print("error: --model_dir and --export_base are required", file=sys.stderr)
        return 2
    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.model_dir))
    options = None
    if FLAGS.retrieval_dir:
        from trainers.core.recommend_lib import Options
        options = Options(k=FLAGS.recommend_k, candidates=FLAGS.recommend_candidates,
                          objective=FLAGS.recommend_objective,
                          retrieval_weight=FLAGS.retrieval_weight,
                          ranker_history=FLAGS.recommend_ranker_history,
                          explain_steps=FLAGS.recommend_explain_steps)
    try:
        path = export(FLAGS.model_dir, FLAGS.export_base, name, FLAGS.version,
                      retrieval_dir=FLAGS.retrieval_dir, recommend_options=options,
                      data_dir=FLAGS.data_dir)
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
