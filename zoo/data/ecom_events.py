"""`ecom_events`: a TFDS builder from a contract folder to train/eval tf.Examples.

The contract folder is the builder's manual dir. The config name is a fingerprint of the
input files (path, size, mtime) and the label config, so changing either prepares anew
beside the old version instead of silently reusing stale examples.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from absl import logging

from zoo.data import contract, examples as examples_lib, labels as labels_lib, serialize


# Bump when the example-building code changes what it writes: cached examples are re-made.
# 2: item_clicks_7d, item_purchases_7d; 3: next_item_id, next_category; 4: the context
# features (`examples.CONTEXT_FEATURES`), demand_mask, training labels stop at the cut;
# 5: price_range_mask thinned to `price_labels_per_purchase` training rows per purchase;
# 6: the user's category-relative prices (`log_features.CONTEXT`).
EXAMPLES_VERSION = "6"


def _absolute(location: str) -> str:
    return location if "://" in location else os.path.abspath(location)


def _fingerprint(contract_dir: str, config: labels_lib.LabelConfig) -> str:
    h = hashlib.sha256(EXAMPLES_VERSION.encode())
    # Every file of both tables (a folder table's parts too: a new day's part is new data).
    for name in ("events", "items"):
        for f in contract.table_files(contract_dir, name):
            mtime = f.mtime_ns if f.mtime_ns is not None else 0
            h.update(f"{f.path}:{f.size}:{mtime};".encode())
    h.update(_absolute(contract_dir).encode())
    h.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    return h.hexdigest()[:16]


class EcomEventsConfig(tfds.core.BuilderConfig):
    def __init__(self, *, contract_dir: str, label_config: labels_lib.LabelConfig,
                 chunk_size: int = 100_000):
        contract_dir = _absolute(contract.local_path(contract_dir))
        super().__init__(
            name="c" + _fingerprint(contract_dir, label_config),
            description=f"Impressions of {contract_dir}",
        )
        self.contract_dir = contract_dir
        self.label_config = label_config
        self.chunk_size = chunk_size


class EcomEvents(tfds.core.GeneratorBasedBuilder):
    """Impression examples of an e-commerce event log (see README: the event-log contract)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the contract folder as the config's contract_dir."

    def _info(self) -> tfds.core.DatasetInfo:
        feats = {}
        for name, dtype in {**examples_lib.SCALAR_FEATURES, **examples_lib.LABEL_FEATURES,
                            **examples_lib.PRETEXT_FEATURES}.items():
            feats[name] = tfds.features.Tensor(shape=(), dtype=examples_lib.tf_dtype(dtype))
        for name, dtype in examples_lib.SEQUENCE_FEATURES.items():
            feats[name] = tfds.features.Tensor(shape=(None,), dtype=examples_lib.tf_dtype(dtype))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
            # Examples stay in time order; training shuffles in tf.data.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):  # pragma: no cover - replaced below
        raise NotImplementedError("splits are written by _generate_splits")

    def _generate_examples(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError("splits are written by _generate_splits")

    def _generate_splits(self, dl_manager, download_config):
        """Writes each split's shards directly, a chunk of examples per shard.

        TFDS's per-example Python encoding manages a few thousand examples/s; here labels
        and histories are whole-column numpy and serialisation is batched in C++
        (`zoo.data.serialize`), so millions of impressions take minutes. Files, names and
        the example format are TFDS's own: `as_dataset` and `builder_from_directory` read
        them unchanged.
        """
        cfg = self.builder_config
        tables = contract.read_contract(cfg.contract_dir)
        source = examples_lib.ExampleSource(tables, cfg.label_config)
        self.info.metadata.update({
            "contract_dir": cfg.contract_dir,
            "label_config": dataclasses.asdict(cfg.label_config),
            "price_edges": [float(e) for e in source.prep.edges],
            "eval_start_timestamp": int(source.prep.cut),
            "num_events": tables.num_events,
        })
        if source.num_examples("train") == 0:
            raise contract.ContractError(
                f"{tables.events_path}: no impression falls in the training period (before "
                f"{np.datetime64(int(source.prep.cut), 's')} UTC); expected impressions "
                "before the last eval_fraction of days")
        serializer = serialize.CodedSerializer(tables)
        infos = []
        # TFDS cannot hold an empty split: a log with no eval days gets no eval split.
        for split in ("train", "eval"):
            total = source.num_examples(split)
            if total == 0:
                continue
            template = self._get_filename_template(split_name=split)
            paths = template.sharded_filepaths(-(-total // cfg.chunk_size))
            chunks = source.chunks(split, cfg.chunk_size, text=False)
            # Two shards in flight: TF's encoders release the GIL, so both cores work
            # while memory stays at a few chunks whatever the log's size.
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                pending, results = collections.deque(), []
                for path, coded in zip(paths, chunks):
                    pending.append(pool.submit(_write_shard, os.fspath(path), coded, serializer))
                    if len(pending) >= 2:
                        results.append(pending.popleft().result())
                results.extend(f.result() for f in pending)
            lengths = [n for n, _ in results]
            num_bytes = sum(b for _, b in results)
            infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                             num_bytes=num_bytes, filename_template=template))
        return infos


def _write_shard(path: str, coded: dict, serializer) -> tuple[int, int]:
    records = serializer(coded)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    logging.info("ecom_events: wrote %s (%d examples)", path, len(records))
    return len(records), os.path.getsize(path)


def prepare(contract_dir: str, data_dir: str,
            label_config: labels_lib.LabelConfig | None = None,
            chunk_size: int = 100_000, wait: bool = False,
            timeout_s: float = 3600.0) -> EcomEvents:
    """Builds (or reuses, if inputs and config are unchanged) the examples; returns the builder.

    wait=True only waits for another process (a cluster's chief) to finish preparing: two
    processes preparing one folder at once would race on TFDS's final rename.
    """
    label_config = label_config or labels_lib.LabelConfig()
    data_dir = os.path.abspath(data_dir)
    config = EcomEventsConfig(contract_dir=contract_dir, label_config=label_config,
                              chunk_size=chunk_size)
    if wait:
        deadline = time.time() + timeout_s
        while True:
            builder = EcomEvents(config=config, data_dir=data_dir)
            if builder.is_prepared():
                return builder
            if time.time() > deadline:
                raise TimeoutError(f"{builder.data_path}: not prepared after {timeout_s:.0f}s")
            time.sleep(1.0)
    existed = _existing_dirs(data_dir)
    try:
        builder = EcomEvents(config=config, data_dir=data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=contract_dir, try_download_gcs=False))
    except BaseException:
        # TFDS removes its incomplete.* folder; drop the empty folders it made around it.
        for root, _, _ in sorted(os.walk(data_dir), key=lambda w: -len(w[0])):
            if root not in existed and not os.listdir(root):
                os.rmdir(root)
        raise
    return builder


def _existing_dirs(data_dir: str) -> set:
    return {root for root, _, _ in os.walk(data_dir)} if os.path.isdir(data_dir) else set()
