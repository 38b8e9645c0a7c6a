"""`python -m trainers.analyze`: what a trained multi-task model knows, as a report a person
reads in a browser.

    python -m trainers.analyze --model_dir M [--data_dir D] --output_dir R \
        [--user_id U ...] [--compare_dirs runs/gbdt_default,runs/popularity_default] \
        [--horizon_days 7] [--max_users 2000] [--num_segments 6]

Writes into R:
  index.html         self-contained (images inline): the eval metrics beside the oracle,
                     the trailing-demand baseline and the runs of --compare_dirs;
                     reliability diagrams, ROC / precision-recall curves, the price-range
                     confusion, the calibration the run fitted (if any), the item outlook
  metrics.json       the same numbers (`trainers.core.metrics`), with the confusion matrix
  item_outlook.csv   per item: forecast units over the horizon with a 90 % interval, what
                     sold, the trailing forecast, hot / slow (`trainers.core.outlook`)
  profiles.parquet   per user: activity, categories, brands and price paid from the log;
                     category affinities, price range and purchase propensity from the
                     model; the segment (`trainers.core.profiles`)
  user_<id>.html     per --user_id: recent behaviour, the profile, the top recommendations

The eval split is the model's own (its label config), so on the data it was trained on
the numbers equal the training run's. Any contract folder works: its examples are
prepared with that label config, ids the model never saw fall into OOV buckets.
"""

from __future__ import annotations

import os

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from zoo.data import contract  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A finished trainers.multitask model_dir.")
    flags.DEFINE_string("data_dir", None, "Contract folder (absent: the default simulated shop).")
    flags.DEFINE_string("tfds_dir", None, "Where prepared examples go (default: the cache).")
    flags.DEFINE_string("output_dir", None, "Folder of the report (created).")
    flags.DEFINE_list("compare_dirs", [], "model_dirs of other runs on the same data (e.g. "
                      "gbdt, popularity) whose metrics.json the tables show beside this one.")
    flags.DEFINE_float("horizon_days", 7.0, "Days of the item outlook (cut to the eval days "
                       "the log has).")
    flags.DEFINE_float("recent_days", 1.0, "The outlook averages the demand head over each "
                       "item's impressions in these last days before the eval split.")
    flags.DEFINE_enum("outlook_forecaster", "item_level", ["item_level", "demand_head"],
                      "What ranks the item outlook: the item-level forecaster of the items' "
                      "own series (measured better on the default shop) or the demand head.")
    flags.DEFINE_integer("batch_size", 1024, "Prediction batch size.")
    flags.DEFINE_multi_string("user_id", [], "A user to give a page (repeatable).")
    flags.DEFINE_integer("max_users", 2000, "Profiles and segments of at most this many "
                         "users (a seeded sample of a larger log, stated in the report; 0: "
                         "all).")
    flags.DEFINE_integer("num_segments", 6, "k of the k-means segments.")
    flags.DEFINE_integer("seed", 0, "Seed of the user sample and of k-means.")
    flags.DEFINE_boolean("verbose", True, "Progress and a summary.")


def _read_metrics(model_dir: str) -> dict:
    from trainers.core import rundir

    try:
        record = rundir.read_json(os.path.join(model_dir, "metrics.json"))
    except ValueError as e:  # json.JSONDecodeError
        raise ValueError(f"--compare_dirs {model_dir}: metrics.json is not JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"--compare_dirs {model_dir}: no metrics.json; expected a finished "
                         "trainers.multitask model_dir")
    return record


def check_flags() -> None:
    if not FLAGS.model_dir or not FLAGS.output_dir:
        raise ValueError("--model_dir and --output_dir are required")
    if not os.path.isdir(FLAGS.model_dir):
        raise ValueError(f"--model_dir {FLAGS.model_dir}: not a directory")
    if FLAGS.data_dir is not None and not contract.is_folder(FLAGS.data_dir):
        raise ValueError(f"--data_dir {FLAGS.data_dir}: not a directory; expected a contract "
                         "folder")
    if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):
        raise ValueError(f"--output_dir {FLAGS.output_dir}: exists and is not a folder")
    if not FLAGS.horizon_days > 0 or not FLAGS.recent_days > 0:
        raise ValueError("--horizon_days and --recent_days must be > 0")
    if FLAGS.batch_size <= 0:
        raise ValueError(f"--batch_size must be > 0, got {FLAGS.batch_size}")
    if FLAGS.max_users < 0 or FLAGS.num_segments < 1:
        raise ValueError("--max_users must be >= 0 and --num_segments >= 1")
    for d in FLAGS.compare_dirs:
        _read_metrics(d)


def run(model_dir: str, output_dir: str, data_dir: str | None = None,
        tfds_dir: str | None = None, compare_dirs=(), horizon_days: float = 7.0,
        recent_days: float = 1.0, batch_size: int = 1024, user_ids=(), max_users: int = 2000,
        num_segments: int = 6, seed: int = 0, verbose: bool = True,
        outlook_forecaster: str = "item_level") -> dict:
    from trainers.core import analysis, profiles

    return analysis.analyze(
        model_dir, output_dir, data_dir=data_dir, tfds_dir=tfds_dir,
        compare={os.path.basename(os.path.normpath(d)): _read_metrics(d) for d in compare_dirs},
        horizon_days=horizon_days, recent_days=recent_days, batch_size=batch_size,
        user_ids=tuple(user_ids), verbose=verbose, outlook_forecaster=outlook_forecaster,
        profile_options=profiles.ProfileOptions(max_users=max_users,
                                                num_segments=num_segments, seed=seed))


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {argv[1:]}", file=sys.stderr)
        return 2
    try:
        check_flags()
        summary = run(FLAGS.model_dir, FLAGS.output_dir, FLAGS.data_dir, FLAGS.tfds_dir,
                      FLAGS.compare_dirs, FLAGS.horizon_days, FLAGS.recent_days,
                      FLAGS.batch_size, FLAGS.user_id, FLAGS.max_users, FLAGS.num_segments,
                      FLAGS.seed, FLAGS.verbose, FLAGS.outlook_forecaster)
    except (contract.ContractError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {summary['index']}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
