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
from zoo.data import streaming as streaming_lib


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


STREAMING_MODES = ("auto", "on", "off")


class EcomEventsConfig(tfds.core.BuilderConfig):
    """streaming: "on" prepares by user buckets (`zoo.data.streaming`: memory bounded by a
    bucket of `bucket_events` events), "off" in memory, "auto" by buckets from
    `streaming.AUTO_MIN_EVENTS` events. The two give the same examples, in another order,
    so the prepared folders are kept apart."""

    def __init__(self, *, contract_dir: str, label_config: labels_lib.LabelConfig,
                 chunk_size: int = 100_000, streaming: str = "auto",
                 bucket_events: int = streaming_lib.DEFAULT_BUCKET_EVENTS):
        if streaming not in STREAMING_MODES:
            raise ValueError(f"--streaming must be one of {STREAMING_MODES}, got {streaming!r}")
        if bucket_events < 1:
            raise ValueError(f"--bucket_events must be >= 1, got {bucket_events!r}")
        contract_dir = _absolute(contract.local_path(contract_dir))
        if streaming == "auto":
            streaming = ("on" if streaming_lib.estimate_events(contract_dir)
                         >= streaming_lib.AUTO_MIN_EVENTS else "off")
        fingerprint = _fingerprint(contract_dir, label_config)
        super().__init__(
            name=("c" if streaming == "off" else "s") + fingerprint,
            description=f"Impressions of {contract_dir}",
        )
        self.contract_dir = contract_dir
        self.label_config = label_config
        self.chunk_size = chunk_size
        self.streaming = streaming == "on"
        self.bucket_events = bucket_events


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
        if cfg.streaming:
            log = streaming_lib.BucketedLog(
                cfg.contract_dir, cfg.label_config, cfg.bucket_events,
                work_dir=os.path.dirname(os.fspath(self.data_path)),
                log=lambda msg: logging.info("ecom_events: %s", msg))
            try:
                meta = {"eval_start_timestamp": int(log.shared.cut),
                        "price_edges": log.shared.edges, "num_events": log.shared.num_events,
                        "events_path": log.events_path}
                infos = self._write_splits(
                    ((split, chunk) for source in log.sources()
                     for split in ("train", "eval")
                     for chunk in source.chunks(split, cfg.chunk_size, text=False)),
                    serialize.CodedSerializer(log), meta)
            finally:
                log.cleanup()
            return infos
        tables = contract.read_contract(cfg.contract_dir)
        source = examples_lib.ExampleSource(tables, cfg.label_config)
        meta = {"eval_start_timestamp": int(source.prep.cut), "price_edges": source.prep.edges,
                "num_events": tables.num_events, "events_path": tables.events_path}
        chunks = ((split, chunk) for split in ("train", "eval")
                  for chunk in source.chunks(split, cfg.chunk_size, text=False))
        return self._write_splits(chunks, serialize.CodedSerializer(tables), meta)

    def _write_splits(self, chunks, serializer, meta: dict):
        """Writes (split, coded chunk) pairs as they come, a shard per chunk, two shards in
        flight (TF's encoders release the GIL, so both cores work while memory stays at a
        few chunks whatever the log's size); shards are named once their count is known."""
        cfg = self.builder_config
        self.info.metadata.update({
            "contract_dir": cfg.contract_dir,
            "label_config": dataclasses.asdict(cfg.label_config),
            "price_edges": [float(e) for e in meta["price_edges"]],
            "eval_start_timestamp": meta["eval_start_timestamp"],
            "num_events": meta["num_events"],
        })
        shards = {"train": [], "eval": []}  # split -> [(temporary path, future)]
        folder = os.fspath(self.data_path)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            pending = collections.deque()
            for split, coded in chunks:
                if not len(coded["hist_length"]):
                    continue
                path = os.path.join(folder, f".{split}-{len(shards[split]):06d}.tmp")
                future = pool.submit(_write_shard, path, coded, serializer)
                shards[split].append((path, future))
                pending.append(future)
                if len(pending) >= 2:
                    pending.popleft().result()
            for future in pending:
                future.result()
        if not shards["train"]:
            raise contract.ContractError(
                f"{meta['events_path']}: no impression falls in the training period (before "
                f"{np.datetime64(int(meta['eval_start_timestamp']), 's')} UTC); expected "
                "impressions before the last eval_fraction of days")
        infos = []
        # TFDS cannot hold an empty split: a log with no eval days gets no eval split.
        for split, written in shards.items():
            if not written:
                continue
            template = self._get_filename_template(split_name=split)
            paths = template.sharded_filepaths(len(written))
            results = [future.result() for _, future in written]
            for (tmp, _), final in zip(written, paths):
                os.replace(tmp, os.fspath(final))
            infos.append(tfds.core.SplitInfo(
                name=split, shard_lengths=[n for n, _ in results],
                num_bytes=sum(b for _, b in results), filename_template=template))
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
            timeout_s: float = 3600.0, streaming: str = "auto",
            bucket_events: int = streaming_lib.DEFAULT_BUCKET_EVENTS) -> EcomEvents:
    """Builds (or reuses, if inputs and config are unchanged) the examples; returns the builder.

    wait=True only waits for another process (a cluster's chief) to finish preparing: two
    processes preparing one folder at once would race on TFDS's final rename.
    """
    label_config = label_config or labels_lib.LabelConfig()
    data_dir = os.path.abspath(data_dir)
    config = EcomEventsConfig(contract_dir=contract_dir, label_config=label_config,
                              chunk_size=chunk_size, streaming=streaming,
                              bucket_events=bucket_events)
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
