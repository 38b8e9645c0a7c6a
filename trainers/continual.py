"""`python -m trainers.continual`: replay a log day by day as production would train on it.

    python -m trainers.continual --data_dir D --start_day 2026-02-02 --days 14 \\
        --window_days 14 --export_base B --name NAME --output_dir R \\
        [--mode warm|scratch] [--baselines scratch,frozen] [--warm_epochs 0.25] \\
        [--gate click/auc=0.005,...] [--label stable] [every trainers.multitask flag]

For each day: train on the last W days (warm-started from the version being served), export
a new version to B/NAME, evaluate it and the served version on the day's impressions, and
promote it (the label the server follows in B/models.config) only if no main metric is worse
than the served version's by more than the gate's tolerance. R/days.csv and R/days.png hold
every day's figures (and the baselines' beside them), R/drift/DAY.json the day's drift
against its window. The work is `trainers.continual_lib.run`.
"""

from __future__ import annotations

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers.core import config as config_lib  # noqa: E402
from zoo.data import contract  # noqa: E402

# Set by the loop for each day; naming them is a mistake the loop reports.
SET_BY_THE_LOOP = ("model_dir", "warm_start_from", "init_checkpoint", "export_name",
                   "eval_fraction", "steps", "train_start")


def define_flags():
    from trainers import continual_lib

    config_lib.define_flags()
    flags.DEFINE_string("start_day", None, "First day to train for and evaluate on "
                        "(YYYY-MM-DD, UTC).")
    flags.DEFINE_integer("days", 7, "Days to replay.")
    flags.DEFINE_integer("window_days", 14, "W: each day trains on the W days before it.")
    flags.DEFINE_string("name", None, "Model name of the exports (B/NAME/<version>).")
    flags.DEFINE_string("output_dir", None, "Where days.csv, days.png, drift/ and the runs go.")
    flags.DEFINE_string("label", "stable", "The version label the gate moves.")
    flags.DEFINE_enum("mode", "warm", ["warm", "scratch"], "How the loop's model is trained "
                      "each day: warm-started from the served version, or from scratch.")
    flags.DEFINE_list("baselines", [], "Arms measured beside the loop on the same days "
                      "(not exported): scratch, frozen (trained on the first window only), "
                      "warm.")
    flags.DEFINE_integer("warm_days", 2, "A warm-started day trains on the window's newest "
                         "days only (the parent has seen the rest).")
    flags.DEFINE_float("warm_epochs", 1.0, "Passes over them.")
    flags.DEFINE_float("warm_learning_rate", 5e-4, "Peak learning rate of a warm-started day "
                       "(--learning_rate is the from-scratch days').")
    flags.DEFINE_string("gate", ",".join(f"{k}={v}" for k, v in
                                         continual_lib.DEFAULT_GATE.items()),
                        "metric=tolerance: the most a candidate may lose against the served "
                        "version on the day's holdout before it is not promoted.")
    flags.DEFINE_integer("lookback_days", 7, "Days before each window whose events give the "
                         "window's first days their histories and features (not trained on).")
    flags.DEFINE_bool("keep_windows", False, "Keep each day's window folder.")
    flags.DEFINE_bool("resume", False, "Go on after the days OUTPUT_DIR/days.csv holds (an "
                      "interrupted run, the same flags): from the version the label serves, "
                      "the baselines from their models.")


def options_from_flags():
    from trainers import continual_lib

    F = flags.FLAGS
    named = [n for n in SET_BY_THE_LOOP if F[n].present]
    if named:
        raise ValueError(f"--{', --'.join(named)}: set by the loop for each day; leave "
                         "them out")
    for name in ("start_day", "name", "output_dir", "export_base", "data_dir"):
        if not getattr(F, name):
            raise ValueError(f"--{name} is required")
    return continual_lib.Options(
        start_day=F.start_day, days=F.days, window_days=F.window_days,
        export_base=F.export_base, name=F.name, output_dir=F.output_dir, label=F.label,
        mode=F.mode, baselines=tuple(F.baselines), warm_days=F.warm_days,
        warm_epochs=F.warm_epochs, warm_learning_rate=F.warm_learning_rate,
        gate=continual_lib.parse_gate(F.gate), keep_windows=F.keep_windows,
        lookback_days=F.lookback_days, resume=F.resume)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from export.registry import RegistryError
    from export.saved_model import ExportError
    from trainers import continual_lib
    from trainers.core import distribute

    if not flags.FLAGS["verbosity"].present:  # one line per day; the runs' own logs off
        from absl import logging as absl_logging
        import tensorflow as tf

        absl_logging.set_verbosity(absl_logging.WARNING)
        tf.get_logger().setLevel("ERROR")
    try:
        options = options_from_flags()
        config = config_lib.from_flags()
        continual_lib.check(options, config)
        distribute.configure_cpu_devices(config.cpu_devices)
        rows = continual_lib.run(options, config)
    except (contract.ContractError, ValueError, ExportError, RegistryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    promoted = sum(1 for r in rows if r.get("promoted"))
    judged = sum(1 for r in rows if "blessed" in r)
    print(f"{judged} versions exported, {promoted} promoted; figures in "
          f"{options.output_dir}/days.csv and days.png")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
