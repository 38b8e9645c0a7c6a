"""`python -m trainers.pretrain`: self-supervised pre-training of the encoder on the logs.

The tasks and what the run leaves in its model_dir are described in
`trainers.core.pretrain_task`; `python -m trainers.multitask --init_checkpoint MODEL_DIR`
fine-tunes from it. Same flags (every `TrainConfig` field; here the pre-training task
weights and learning rate 1e-3 by default), strategies, custom loop, checkpoints/resume,
TensorBoard, progress bar and flagfile as `trainers.multitask`.
"""

from __future__ import annotations

import os

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers.core import config as config_lib  # noqa: E402
from trainers.core.pretrain_task import PretrainTask  # noqa: E402
from zoo.data import contract  # noqa: E402


def run(config: config_lib.TrainConfig) -> dict:
    from trainers.core import train_lib

    return train_lib.run_experiment(PretrainTask(), config)


def define_flags():
    config_lib.define_flags(defaults=PretrainTask.flag_defaults)
    flags.FLAGS["task_weights"].help = PretrainTask.task_weights_help


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from trainers.core import distribute

    try:
        config = config_lib.from_flags()
        config_lib.validate(config)
        distribute.configure_cpu_devices(config.cpu_devices)
        run(config)
    except (contract.ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
