"""Training throughput of bert_mtl presets against this machine's matmul speed.

    python benchmarks/train_throughput.py [--presets tiny,small] [--batch_size 256]

Prints, per preset: examples/s of the trainer's own step (trainers.core.loop.Trainer, one device;
XLA on and off with LazyAdamW, trainers.core.optimizers, which updates the looked-up rows of the
tables only, and XLA on with Keras' AdamW, which updates every row: the trainers' default
below 100k rows a table), the model's training FLOPs per example (counted ANALYTICALLY from
the config: every dense/attention matmul, x2 FLOPs per multiply-add, x3 for forward +
backward; embedding gathers, layer norms and softmax are not counted), the achieved
FLOP/s, TensorFlow's float32 matmul FLOP/s measured in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import zoo  # noqa: E402
from trainers.core import loop, optimizers  # noqa: E402
from zoo.models import testing  # noqa: E402
from zoo.models.bert_mtl.backbone import sequence_length  # noqa: E402
from zoo.models.features import LABELS, RAW_FEATURES, TASKS as LABELS_TASKS  # noqa: E402


def training_flops_per_example(cfg: dict) -> float:
    h, i, layers = cfg["hidden_dim"], cfg["intermediate_dim"], cfg["num_layers"]
    s = sequence_length(cfg["max_query_tokens"], cfg["max_history"])
    per_layer = s * (4 * h * h + 2 * h * i) + 2 * s * s * h
    heads = 4 * (2 * h * cfg["head_hidden_dim"]) + cfg["head_hidden_dim"] * (
        3 + cfg["num_price_ranges"])
    return 3 * 2 * (layers * per_layer + heads)


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        c = mm(a, b)
    c.numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def examples_per_second(preset: str, batch_size: int, jit: bool, steps: int,
                        lazy_tables: bool = True) -> float:
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = zoo.get("bert_mtl", preset)
    raw = testing.random_raw_batch(batch_size=batch_size, history_length=50, seed=0)
    features = model.preprocessor({k: tf.constant(raw[k]) for k in RAW_FEATURES})
    labels = {k: tf.constant(raw[k]) for k in LABELS}
    with strategy.scope():
        optimizer = optimizers.adamw(1e-4, weight_decay=0.01, lazy_tables=lazy_tables)
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((features, labels)).repeat())
    trainer = loop.Trainer(strategy, model, optimizer, loop.LoopConfig(
        total_steps=10**9, global_batch_size=batch_size, task_weights={}, jit_compile=jit),
        checkpoint_dir=tempfile.mkdtemp(), summary_dir=None, tasks=tuple(LABELS_TASKS))
    it = iter(ds)
    trainer.run_steps(it, 3)  # trace + compile (returns when done)
    start = time.perf_counter()
    trainer.run_steps(it, steps)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    peak = matmul_flops()
    print(f"TensorFlow float32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s")
    print("| preset | xla | table updates | examples/s | train GFLOP/example | "
          "achieved GFLOP/s | matmul GFLOP/s | utilisation |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        flops = training_flops_per_example(zoo.get_config("bert_mtl", preset))
        for jit, lazy in ((True, True), (False, True), (True, False)):
            eps = examples_per_second(preset, args.batch_size, jit, args.steps, lazy)
            achieved = eps * flops
            print(f"| {preset} | {'on' if jit else 'off'} | "
                  f"{'looked-up rows' if lazy else 'dense (Keras AdamW)'} | {eps:,.0f} | "
                  f"{flops / 1e9:.4f} | {achieved / 1e9:.1f} | {peak / 1e9:.1f} | "
                  f"{achieved / peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
