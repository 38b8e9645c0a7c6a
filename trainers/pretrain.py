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
from trainers.core.pretrain_task import PretrainTask, make_task  # noqa: E402
from zoo.data import contract  # noqa: E402


def run(config: config_lib.TrainConfig, pretext: str = "masked", negatives: int = 15) -> dict:
    from trainers.core import train_lib

    return train_lib.run_experiment(make_task(pretext, negatives), config)


def define_flags():
    config_lib.define_flags(defaults=PretrainTask.flag_defaults)
    flags.FLAGS["task_weights"].help = PretrainTask.task_weights_help
    flags.DEFINE_string(
        "pretext", "masked", "What the encoder learns: 'masked' (masked events and query "
        "tokens, the next event at the hidden candidate; --task_weights weighs them) or "
        "'next_session' (which of a session's candidates it clicked, among catalogue items "
        "it did not, every context feature of each candidate visible) or 'joint' (both "
        "at every step; --task_weights weighs the masked tasks and next_session, by "
        "default 0.2 each and 1).")
    flags.DEFINE_integer("pretext_negatives", 15, "--pretext next_session or joint: catalogue items "
                         "per session beside the clicked one (--batch_size must be a "
                         "multiple of this + 1).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from trainers.core import distribute, train_lib

    try:
        config = config_lib.from_flags()
        config_lib.validate(config)
        task = make_task(flags.FLAGS.pretext, flags.FLAGS.pretext_negatives)
        distribute.configure_cpu_devices(config.cpu_devices)
        train_lib.run_experiment(task, config)
    except (contract.ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
