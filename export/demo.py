"""`python -m export.demo`: the last leg of the main job — serve an export and query it.

Starts `python -m export.serve` on the export base (127.0.0.1, a free port), sends one gRPC
Predict (serving_default, raw features) and one with serialized tf.Examples
(predict_examples) for a few eval impressions, prints them beside the trained Keras model's
in-process predictions, and stops the server. When the latest version answers `recommend`
(exported with --retrieval_dir), it then runs the recommender service (`export.recommender`)
against a fresh server, posts one user's events and prints their top 10 beside their last
events.
"""

from __future__ import annotations

import os
import sys
import tempfile

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

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


def recommend_demo(export_base: str, name: str, data_dir: str, k: int = 10,
                   num_events: int = 8) -> dict:
    """Serves the export, runs the recommender service (SQLite store, HTTP on 127.0.0.1),
    posts the busiest user's events, asks for their top k and prints it beside their last
    events. Returns the answer."""
    import json
    import urllib.request

    from export import client as client_lib, event_store, recommender, serve
    from zoo.data import contract, prepare as prepare_lib

    tables = contract.read_contract(prepare_lib.resolve_contract_dir(data_dir))
    user = event_store.busiest_user(tables)
    events = event_store.log_rows(tables, [user])
    at = int(tables.events["timestamp"].max()) + 1
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = serve.launch(["--model_name", name, "--model_base_path",
                                     os.path.join(export_base, name)],
                                    os.path.join(tmp, "server.log"))
        store = event_store.SQLiteEventStore(os.path.join(tmp, "events.sqlite"))
        client = client_lib.PredictionClient(target)
        service = recommender.RecommenderService(store, client, name, tables.items)
        server = recommender.serve(service, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            for start in range(0, len(events), event_store.MAX_ROWS_PER_APPEND):
                body = json.dumps(events[start:start + event_store.MAX_ROWS_PER_APPEND])
                urllib.request.urlopen(urllib.request.Request(
                    url + "/events", data=body.encode(), method="POST",
                    headers={"Content-Type": "application/json"}), timeout=60).read()
            with urllib.request.urlopen(f"{url}/recommend?user_id={user}&k={k}&at={at}",
                                        timeout=60) as r:
                answer = json.loads(r.read())
        finally:
            server.shutdown()
            client.close()
            store.close()
            serve.terminate(proc)

    items = tables.items
    title = dict(zip(items["item_id"].to_numpy(zero_copy_only=False),
                     items["title"].to_numpy(zero_copy_only=False)))
    behaviour = [e for e in events if e["event"] in contract.HISTORY_EVENTS][-num_events:]
    print(f"\nrecommender service at {url}: {len(events)} events of user {user} posted "
          f"to the SQLite store; GET /recommend?user_id={user}&k={k}\n")
    print(f"{'their last events':<52} | {'recommended (score, p(purchase))':<60}")
    left = [f"{e['event']:<8} {e['item_id']:<10} {title.get(e['item_id'], '')[:30]}"
            for e in reversed(behaviour)]
    right = [f"{i + 1:>2}. {it['item_id']:<10} {it['title'][:28]:<28} {it['score']:7.2f} "
             f"{it['purchase']:.3f}" for i, it in enumerate(answer["items"])]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"{a:<52} | {b}")
    print(f"\nfeatures {answer['timing_ms']['features']:.0f} ms, model "
          f"{answer['timing_ms']['model']:.0f} ms (gRPC recommend signature: retrieval over "
          f"the catalogue, ranking, in one graph)")
    return answer


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
        manifest = _latest_manifest(FLAGS.export_base, name)
        if "recommend" in manifest:
            from trainers.core import rundir
            recommend_demo(FLAGS.export_base, name,
                           rundir.train_config_of(FLAGS.model_dir).get("data_dir"))
    except (RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if diff < 1e-4 else 1


def _latest_manifest(export_base: str, name: str) -> dict:
    import json

    from export import layout

    base = os.path.join(export_base, name)
    versions = layout.versions(base)
    if not versions:
        return {}
    path = os.path.join(base, str(max(versions)), layout.ASSETS_EXTRA, layout.MANIFEST_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    define_flags()
    app.run(main)
