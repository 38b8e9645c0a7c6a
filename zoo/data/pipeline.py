"""The tf.data input function every trainer uses: TFRecord shards → parsed, padded batches.

It reads the TFDS builder's shards directly (interleaved), batches serialized records
first and parses whole batches with one `tf.io.parse_example` (much cheaper than parsing
one example at a time), pads history lists to a fixed length, and prefetches. The same
parse function backs the `tf.Example` serving signature, so both read examples alike.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from zoo.data import contract, examples as examples_lib

def feature_spec(with_labels: bool = True, with_pretext: bool = False) -> dict:
    """`tf.io.parse_example` spec of one example (scalars fixed, history lists ragged);
    `with_pretext` adds pre-training's next-event targets."""
    spec = {}
    for name, dtype in examples_lib.SCALAR_FEATURES.items():
        default = ("" if dtype is np.bytes_ else -1 if name == "position"
                   else examples_lib.MISSING if name in examples_lib.CONTEXT_FEATURES else 0)
        spec[name] = tf.io.FixedLenFeature([], examples_lib.tf_dtype(dtype), default_value=default)
    for name, dtype in examples_lib.SEQUENCE_FEATURES.items():
        spec[name] = tf.io.RaggedFeature(examples_lib.tf_dtype(dtype), row_splits_dtype=tf.int64)
    if with_labels:
        for name, dtype in examples_lib.LABEL_FEATURES.items():
            spec[name] = tf.io.FixedLenFeature([], examples_lib.tf_dtype(dtype))
    if with_pretext:
        for name, dtype in examples_lib.PRETEXT_FEATURES.items():
            spec[name] = tf.io.FixedLenFeature([], examples_lib.tf_dtype(dtype),
                                               default_value="")
    return spec


def parse_batch(serialized: tf.Tensor, history_length: int = contract.DEFAULT_HISTORY_LENGTH,
                with_labels: bool = True, with_pretext: bool = False) -> dict:
    """Serialized tf.Examples [B] → dict of dense tensors; history padded/truncated to L."""
    parsed = tf.io.parse_example(serialized, feature_spec(with_labels, with_pretext))
    out = {}
    for name, value in parsed.items():
        if isinstance(value, tf.RaggedTensor):
            pad = "" if value.dtype == tf.string else 0
            # Most recent first: truncating keeps the latest L events.
            value = value[:, :history_length].to_tensor(
                default_value=pad, shape=[None, history_length])
        out[name] = value
    return out


HASH_BUCKETS = 10_000


def in_fraction(event_ids, fraction: float):
    """True for the examples of a `fraction` of event ids (a stable hash: same in every run)."""
    return tf.strings.to_hash_bucket_fast(event_ids, HASH_BUCKETS) < int(round(
        fraction * HASH_BUCKETS))


def _kept(record, fraction: float):
    event_id = tf.io.parse_single_example(
        record, {"event_id": tf.io.FixedLenFeature([], tf.string)})["event_id"]
    return in_fraction(event_id, fraction)


def _in_time_range(record, time_range):
    ts = tf.io.parse_single_example(
        record, {"timestamp": tf.io.FixedLenFeature([], tf.int64)})["timestamp"]
    lo, hi = time_range
    keep = tf.constant(True)
    if lo is not None:
        keep = keep & (ts >= int(lo))
    if hi is not None:
        keep = keep & (ts < int(hi))
    return keep


def timestamps(files) -> "np.ndarray":
    """The impression times of every example in `files` (int64 seconds, file order)."""
    ds = tf.data.TFRecordDataset(list(files)).batch(8192).map(
        lambda s: tf.io.parse_example(
            s, {"timestamp": tf.io.FixedLenFeature([], tf.int64)})["timestamp"])
    parts = [b.numpy() for b in ds]
    return np.concatenate(parts) if parts else np.zeros([0], np.int64)


def split_files(builder, split: str) -> list[str]:
    return [os.path.join(builder.data_path, f) for f in builder.info.splits[split].filenames]


def make_dataset(files, *, batch_size: int, history_length: int = contract.DEFAULT_HISTORY_LENGTH,
                 shuffle: bool = False, repeat: bool = False, seed: int | None = None,
                 cache: bool = False, drop_remainder: bool = False, with_labels: bool = True,
                 shuffle_buffer: int = 50_000, skip_batches: int = 0,
                 input_context: tf.distribute.InputContext | None = None,
                 keep_fraction: float = 1.0, with_pretext: bool = False,
                 time_range: tuple | None = None) -> tf.data.Dataset:
    """Parsed batches of examples from TFRecord files.

    `input_context` (from `strategy.distribute_datasets_from_function`) splits the input
    between workers: by file when there are at least as many files as input pipelines
    (scales to any log), otherwise by batch: every pipeline reads the same seeded stream
    and keeps every n-th batch, so the global batch of each step is exactly the one a
    single device would see (strategy-invariant training, used by the equivalence tests).
    `skip_batches` drops this pipeline's first batches (before parsing) so a resumed run
    sees the data a run without interruption would have seen next.
    `cache` keeps the serialized records in memory after the first pass: use it when the
    split fits in RAM.
    `keep_fraction` < 1 keeps that fraction of the examples, chosen by a hash of their
    event_id (the same ones in every run and every epoch): training on a fraction of the
    labels.
    `time_range` (lo, hi) keeps the examples with lo <= timestamp < hi (None: unbounded):
    the held-out calibration slice and the rest of the training split.
    """
    files = list(files)
    if not files:
        raise ValueError("make_dataset: no input files")
    pipelines = input_context.num_input_pipelines if input_context else 1
    shard_files = pipelines > 1 and len(files) >= pipelines
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shard_files:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if keep_fraction < 1.0:
        ds = ds.filter(lambda record: _kept(record, keep_fraction))
    if time_range is not None:
        ds = ds.filter(lambda record: _in_time_range(record, time_range))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if pipelines > 1 and not shard_files:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    if skip_batches:  # resuming: continue the seeded stream where the checkpoint left it
        ds = ds.skip(skip_batches)
    ds = ds.map(lambda s: parse_batch(s, history_length, with_labels, with_pretext),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
