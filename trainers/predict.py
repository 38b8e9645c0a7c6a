"""`python -m trainers.predict`: one row of predictions per impression of any contract folder.

(`trainers.core.prediction` does the work.)

Loads `model_dir/model.keras` (preprocessor and vocabulary inside, safe mode), prepares the
folder's examples with the label config the model was trained with, and writes
`event_id, click, purchase, price_range_0..K-1, demand` (probabilities and the expected
count). Ids the model never saw fall into the preprocessor's OOV buckets.
"""

from __future__ import annotations

import os
import sys

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

from absl import app, flags  # noqa: E402

from trainers.core import prediction  # noqa: E402
from zoo.data import contract  # noqa: E402


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A finished trainers.multitask model_dir.")
    flags.DEFINE_string("data_dir", None, "Contract folder (absent: the default simulated shop).")
    flags.DEFINE_string("tfds_dir", None, "Where prepared examples go (default: the cache).")
    flags.DEFINE_enum("split", "eval", ["train", "eval", "all"], "Which impressions to predict.")
    flags.DEFINE_string("output", None, "CSV file to write.")
    flags.DEFINE_integer("batch_size", 1024, "Prediction batch size.")


def main(argv):
    del argv
    if not FLAGS.model_dir or not FLAGS.output:
        print("error: --model_dir and --output are required", file=sys.stderr)
        return 2
    try:
        preds = prediction.predict_folder(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.tfds_dir,
                               FLAGS.batch_size)
        rows = prediction.write_csv(preds, FLAGS.output)
    except (contract.ContractError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {rows:,} predictions to {FLAGS.output}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
