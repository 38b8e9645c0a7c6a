"""`python -m trainers.multitask`: train a zoo model on click, purchase, price range, demand.

With no flags it trains `bert_mtl/small` on the simulator's default data set and prints
the metrics table beside the oracle's; `--export_base` also exports the result for TF
Serving. Every field of `trainers.core.config.TrainConfig` is a flag (`--helpfull` lists
them with their defaults); the run writes its flags to `model_dir/flags.txt`, which
`--flagfile` reads back. The work is `trainers.core.train_lib.run_experiment` with
`MultitaskTask`.
"""

from __future__ import annotations

import os

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app  # noqa: E402

from trainers.core import config as config_lib  # noqa: E402
from zoo.data import contract  # noqa: E402


def run(config: config_lib.TrainConfig) -> dict:
    """Trains, evaluates and saves; with `config.export_base` exports the model too."""
    from trainers.core import train_lib

    def export(model_dir: str, result: dict) -> None:
        from export import saved_model

        name = config.export_name or os.path.basename(os.path.normpath(model_dir))
        result["export"] = saved_model.export(model_dir, config.export_base, name)
        if config.verbose:
            print(f"exported {result['export']}")

    return train_lib.train(config, after_save=export if config.export_base else None)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from export.saved_model import ExportError
    from trainers.core import distribute

    try:
        config = config_lib.from_flags()
        config_lib.validate(config)
        distribute.configure_cpu_devices(config.cpu_devices)
        run(config)
    except (contract.ContractError, ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    config_lib.define_flags()
    app.run(main)
