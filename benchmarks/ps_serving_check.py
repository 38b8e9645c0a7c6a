"""Does a run's export serve what a one-device model with the run's weights computes?

    python benchmarks/ps_serving_check.py --model_dir runs/ps_small --export runs/exports/ps_small

For a `--strategy=parameter_server` run (whose tables were sharded across parameter
servers): builds the model on this one device, gives it the weights of the run's latest
checkpoint (a sharded table restores as one variable), starts `python -m export.serve` on
the export, sends the run's serving examples over gRPC (both signatures) and prints the
largest difference per output. Exits 1 if any exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import client as client_lib, saved_model, serve  # noqa: E402
from trainers.core import rundir  # noqa: E402

OUTPUTS = ("click", "purchase", "price_range", "demand")


def one_device_outputs(model_dir: str, raw: dict) -> dict:
    model, _ = rundir.load_trained(model_dir)
    for w in model.weights:  # nothing of model.keras survives: only the checkpoint counts
        w.assign(tf.zeros_like(w))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise SystemExit(f"{model_dir}: no checkpoint")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial() \
        .assert_existing_objects_matched()
    print(f"one-device model restored from {latest}")
    out = model(model.preprocessor(raw), training=False)
    return {k: np.asarray(out[k]) for k in OUTPUTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--export", required=True, help="EXPORT_BASE/NAME (versions inside)")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--history_length", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        os.path.join(args.model_dir, saved_model.SERVING_EXAMPLES_FILE))][:args.examples]
    history = args.history_length
    if history is None:
        import json
        with open(os.path.join(args.model_dir, "train_config.json")) as f:
            history = json.load(f)["label_config"]["history_length"]
    raw = saved_model.raw_features(serialized, history)
    want = one_device_outputs(args.model_dir, raw)

    name = os.path.basename(os.path.normpath(args.export))
    log = os.path.join(tempfile.mkdtemp(prefix="ps_serving_check_"), "serve.log")
    proc, target = serve.launch(["--model_name", name, "--model_base_path", args.export], log)
    try:
        with client_lib.PredictionClient(target) as client:
            got = {"serving_default": client.predict(name, raw),
                   "predict_examples": client.predict(name, {"examples": serialized},
                                                      signature="predict_examples")}
    finally:
        serve.terminate(proc)
    worst = 0.0
    for signature, outputs in got.items():
        for k in OUTPUTS:
            diff = float(np.max(np.abs(outputs[k] - want[k])))
            worst = max(worst, diff)
            print(f"{signature:16s} {k:12s} max |gRPC - one_device| = {diff:.2e}")
    print(f"{len(serialized)} examples; largest difference {worst:.2e} "
          f"({'OK' if worst <= args.tolerance else 'FAIL'} at {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
