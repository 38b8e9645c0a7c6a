"""`python -m export.demo`: the last leg of the main job — serve an export and query it.

Starts `python -m export.serve` on the export base (127.0.0.1, a free port), sends one gRPC
Predict (serving_default, raw features) and one with serialized tf.Examples
(predict_examples) for a few eval impressions, prints them beside the trained Keras model's
in-process predictions, and stops the server.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402


def run(model_dir: str, export_base: str, name: str, num_examples: int = 5) -> float:
    """Prints gRPC and in-process predictions side by side; returns the largest difference."""
    import numpy as np
    import tensorflow as tf
    from export import client as client_lib, saved_model, serve
    from trainers.core import rundir

    model, label_config = rundir.load_trained(model_dir)
    examples_file = os.path.join(model_dir, saved_model.SERVING_EXAMPLES_FILE)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(examples_file).take(num_examples)]
    raw = saved_model.raw_features(serialized, label_config.history_length)
    event_ids = tf.io.parse_example(serialized, {"event_id": tf.io.FixedLenFeature(
        [], tf.string)})["event_id"].numpy()
    local = model(model.preprocessor(raw), training=False)
    local = {k: np.asarray(v) for k, v in local.items()}

    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "server.log")
        proc, target = serve.launch(["--model_name", name, "--model_base_path",
                                     os.path.join(export_base, name)], log_path)
        try:
            with client_lib.PredictionClient(target) as client:
                response = client.predict_response(client.predict_request(name, raw))
                version = response.model_spec.version.value
                served = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
                from_examples = client.predict(name, {"examples": serialized},
                                               signature="predict_examples")
        finally:
            serve.terminate(proc)
            with open(log_path) as f:
                loads = [line.split("] ", 1)[-1].strip() for line in f
                         if "servable" in line]

    print(f"\nmodel server at {target}: " + "; ".join(loads))
    print(f"gRPC Predict of {name} version {version} (serving_default, raw features) beside "
          f"the in-process Keras model, {len(serialized)} eval impressions:\n")
    print(f"{'event_id':<14} {'click':>15} {'purchase':>15} {'demand':>17} "
          f"{'price range':>13}")
    print(f"{'':<14} {'gRPC / keras':>15} {'gRPC / keras':>15} {'gRPC / keras':>17} "
          f"{'gRPC / keras':>13}")
    for i, e in enumerate(event_ids):
        cells = [f"{served[k][i]:.4f}/{local[k][i]:.4f}" for k in ("click", "purchase",
                                                                 "demand")]
        top = f"{int(np.argmax(served['price_range'][i]))} / " \
              f"{int(np.argmax(local['price_range'][i]))}"
        print(f"{e.decode():<14} {cells[0]:>15} {cells[1]:>15} {cells[2]:>17} {top:>13}")
    diff = max(float(np.abs(o[k] - local[k]).max()) for o in (served, from_examples)
               for k in served)
    print(f"\nlargest |gRPC - in-process| over all outputs and both signatures: {diff:.2e}")
    return diff


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "runs/bert_mtl_small", "The trained model_dir.")
    flags.DEFINE_string("export_base", "runs/exports", "The export base it was exported to.")
    flags.DEFINE_string("name", None, "Model name (default: the model_dir's folder name).")
    flags.DEFINE_integer("num_examples", 5, "Eval impressions to send.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.model_dir))
    try:
        diff = run(FLAGS.model_dir, FLAGS.export_base, name, FLAGS.num_examples)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    define_flags()
    app.run(main)
