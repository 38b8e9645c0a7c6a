"""`python -m zoo.data.prepare`: contract folder → TFDS train/eval examples, with a summary.

With no `--data_dir` it simulates the default shop once (cached) and prepares that, so the
command runs on a fresh machine with no data to bring.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from zoo.data import contract, ecom_events, labels as labels_lib
from zoo.data import streaming as streaming_lib


def cache_root() -> str:
    return os.environ.get("ECOM_ZOO_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "ecom_zoo"))


def default_tfds_dir() -> str:
    return os.path.join(cache_root(), "tfds")


def resolve_contract_dir(data_dir: str | None) -> str:
    """The user's contract folder, or the simulator's default data set (built on first use)."""
    if data_dir:
        return contract.local_path(data_dir)
    from zoo.data import simulate  # imported lazily: only the default needs the simulator
    return simulate.ensure_default_dataset()


def prepare(data_dir: str | None = None, tfds_dir: str | None = None,
            label_config: labels_lib.LabelConfig | None = None,
            wait_for_chief: bool = False, streaming: str = "auto",
            bucket_events: int = streaming_lib.DEFAULT_BUCKET_EVENTS,
            ) -> ecom_events.EcomEvents:
    """Validated, labelled examples of `data_dir` (or the default) as a prepared TFDS builder.

    wait_for_chief: in a cluster, non-chief workers wait for the chief's preparation.
    streaming / bucket_events: see `ecom_events.EcomEventsConfig`.
    """
    if wait_for_chief and not data_dir:
        from zoo.data import simulate
        contract_dir = simulate.default_data_dir()
        while not os.path.exists(contract_dir):  # the chief simulates it
            time.sleep(1.0)
    else:
        contract_dir = resolve_contract_dir(data_dir)
    return ecom_events.prepare(contract_dir, tfds_dir or default_tfds_dir(), label_config,
                               wait=wait_for_chief, streaming=streaming,
                               bucket_events=bucket_events)


def describe(builder) -> str:
    meta = builder.info.metadata
    lines = [f"contract folder : {meta['contract_dir']}",
             f"examples at     : {builder.data_path}",
             f"events read     : {meta['num_events']:,}",
             f"eval split from : {np.datetime64(meta['eval_start_timestamp'], 's')} UTC",
             f"price edges     : {', '.join(f'{e:.2f}' for e in meta['price_edges'])}"]
    for split, info in builder.info.splits.items():
        lines.append(f"{split:<5} split     : {info.num_examples:,} examples in "
                     f"{info.num_shards} shard(s), {info.num_bytes / 2**20:.1f} MiB")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_data_flags():
    flags.DEFINE_string("data_dir", None, "Contract folder (events + items, CSV or Parquet). "
                        "Absent: the simulator's default data set.")
    flags.DEFINE_string("tfds_dir", None, "Where prepared examples go (default: "
                        "$ECOM_ZOO_CACHE/tfds, ECOM_ZOO_CACHE defaults to ~/.cache/ecom_zoo).")
    flags.DEFINE_float("eval_fraction", contract.DEFAULT_EVAL_FRACTION,
                       "Last fraction of days that form the eval split.")
    flags.DEFINE_integer("num_price_ranges", contract.DEFAULT_NUM_PRICE_RANGES,
                         "K: price ranges of the price_range label (training items' price quantiles).")
    flags.DEFINE_float("price_horizon_days", contract.DEFAULT_PRICE_HORIZON_DAYS,
                       "H: window for the next purchase's price range.")
    flags.DEFINE_float("demand_horizon_days", contract.DEFAULT_DEMAND_HORIZON_DAYS,
                       "D: window for the item demand label.")
    flags.DEFINE_integer("history_length", contract.DEFAULT_HISTORY_LENGTH,
                         "L: behaviour events kept per example.")
    flags.DEFINE_integer("price_labels_per_purchase",
                         contract.DEFAULT_PRICE_LABELS_PER_PURCHASE,
                         "Training impressions, drawn at random, that keep the price-range "
                         "label of one next purchase (0: all).")


def label_config_from_flags() -> labels_lib.LabelConfig:
    return labels_lib.LabelConfig(
        num_price_ranges=FLAGS.num_price_ranges,
        price_horizon_days=FLAGS.price_horizon_days,
        demand_horizon_days=FLAGS.demand_horizon_days,
        eval_fraction=FLAGS.eval_fraction,
        history_length=FLAGS.history_length,
        price_labels_per_purchase=FLAGS.price_labels_per_purchase,
    )


def main(argv):
    del argv
    start = time.time()
    try:
        config = label_config_from_flags()
        if FLAGS.bucket_events < 1:
            raise ValueError(f"--bucket_events must be >= 1, got {FLAGS.bucket_events}")
    except ValueError as e:  # a flag out of range: before anything is read or written
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        builder = prepare(FLAGS.data_dir, FLAGS.tfds_dir, config, streaming=FLAGS.streaming,
                          bucket_events=FLAGS.bucket_events)
    except contract.ContractError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(builder))
    print(f"prepared in {time.time() - start:.1f}s")
    return 0


def define_streaming_flags():
    flags.DEFINE_enum("streaming", "auto", list(ecom_events.STREAMING_MODES),
                      "on: prepare by user buckets, memory bounded by a bucket (a log larger "
                      "than memory); off: in memory; auto: by buckets from "
                      f"{streaming_lib.AUTO_MIN_EVENTS:,} events. Same examples, another "
                      "order (bucket by bucket, time order within one).")
    flags.DEFINE_integer("bucket_events", streaming_lib.DEFAULT_BUCKET_EVENTS,
                         "Events per user bucket when streaming (~0.65 GiB of memory per "
                         "million).")


if __name__ == "__main__":
    define_data_flags()
    define_streaming_flags()
    app.run(main)
