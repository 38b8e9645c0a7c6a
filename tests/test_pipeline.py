"""TFDS builder + tf.data pipeline: CSV and Parquet agree, round trips, re-preparation."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

import fixtures
from zoo.data import contract, ecom_events, examples, labels, pipeline

CFG = labels.LabelConfig(num_price_ranges=2, history_length=8)


def read_split(builder, split, batch_size=3):
    ds = pipeline.make_dataset(pipeline.split_files(builder, split), batch_size=batch_size,
                               history_length=CFG.history_length, with_pretext=True)
    rows = {}
    for batch in ds:
        batch = {k: v.numpy() for k, v in batch.items()}
        for i, e in enumerate(batch["event_id"]):
            rows[e.decode()] = {k: v[i] for k, v in batch.items()}
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("p")
    csv_dir = fixtures.write_csv(str(root / "csv"), iso_rows=("e9",))
    pq_dir = fixtures.write_parquet(str(root / "parquet"))
    return (ecom_events.prepare(csv_dir, str(root / "tfds"), CFG),
            ecom_events.prepare(pq_dir, str(root / "tfds"), CFG), root)


def test_csv_and_parquet_give_identical_examples(built):
    from_csv, from_parquet, _ = built
    assert from_csv.data_path != from_parquet.data_path
    for split in ("train", "eval"):
        a, b = read_split(from_csv, split), read_split(from_parquet, split)
        assert sorted(a) == sorted(b) and a
        for e in a:
            for k in a[e]:
                np.testing.assert_array_equal(a[e][k], b[e][k], err_msg=f"{e}/{k}")


def test_parsed_batches_equal_the_source_columns(built):
    builder, _, _ = built
    source = examples.ExampleSource(contract.read_contract(builder.info.metadata["contract_dir"]),
                                    CFG)
    parsed = read_split(builder, "train")
    assert builder.info.splits["train"].num_examples == len(parsed) == 7
    names = (list(examples.SCALAR_FEATURES) + list(examples.SEQUENCE_FEATURES)
             + list(examples.LABEL_FEATURES) + list(examples.PRETEXT_FEATURES))
    for cols in source.chunks("train"):
        for i, e in enumerate(cols["event_id"]):
            for name in names:
                want = cols[name][i]
                if cols[name].dtype == object:
                    want = np.array([w.encode() for w in np.atleast_1d(want)]).reshape(
                        np.shape(want))
                np.testing.assert_array_equal(parsed[e][name], want, err_msg=f"{e}/{name}")
    # Training order is time order (the builder does not shuffle).
    ts = [parsed[e]["timestamp"] for e in parsed]
    assert ts == sorted(ts)


def test_metadata_records_split_and_edges(built):
    meta = built[0].info.metadata
    assert meta["price_edges"] == [25.0]
    assert meta["eval_start_timestamp"] == fixtures.T0 + 8 * fixtures.DAY
    assert meta["label_config"]["history_length"] == 8


def test_reused_when_unchanged_reprepared_when_changed(tmp_path):
    csv_dir = fixtures.write_csv(str(tmp_path / "csv"))
    tfds_dir = str(tmp_path / "tfds")
    builder = ecom_events.prepare(csv_dir, tfds_dir, CFG)
    again = ecom_events.prepare(csv_dir, tfds_dir, CFG)
    assert again.data_path == builder.data_path
    other_cfg = ecom_events.prepare(csv_dir, tfds_dir,
                                    labels.LabelConfig(num_price_ranges=3, history_length=8))
    assert other_cfg.data_path != builder.data_path
    assert len(other_cfg.info.metadata["price_edges"]) == 2
    # Change the log: drop the eval impression; a new preparation sees it.
    time.sleep(0.01)
    fixtures.write_csv(csv_dir, events=[r for r in fixtures.EVENTS if r[0] != "e13"])
    changed = ecom_events.prepare(csv_dir, tfds_dir, CFG)
    assert changed.data_path != builder.data_path
    assert "eval" not in changed.info.splits  # no impression left in the eval days


def test_waiting_worker_gets_the_prepared_builder(built):
    builder = built[0]
    meta = builder.info.metadata
    waited = ecom_events.prepare(meta["contract_dir"], os.path.dirname(os.path.dirname(
        os.path.dirname(builder.data_path))), CFG, wait=True, timeout_s=5)
    assert waited.data_path == builder.data_path
    with pytest.raises(TimeoutError):
        ecom_events.prepare(meta["contract_dir"], str(built[2] / "nothing"), CFG, wait=True,
                            timeout_s=1)


def test_parse_pads_and_truncates_history():
    ex = tf.train.Example()
    ex.features.feature["hist_item_id"].bytes_list.value.extend([b"a", b"b", b"c"])
    ex.features.feature["hist_gap"].float_list.value.extend([1.0, 2.0, 3.0])
    out = pipeline.parse_batch(tf.constant([ex.SerializeToString()]), history_length=2,
                               with_labels=False)
    assert out["hist_item_id"].numpy().tolist() == [[b"a", b"b"]]
    out = pipeline.parse_batch(tf.constant([ex.SerializeToString()]), history_length=5,
                               with_labels=False)
    assert out["hist_gap"].numpy().tolist() == [[1.0, 2.0, 3.0, 0.0, 0.0]]
    assert out["hist_category"].numpy().tolist() == [[b""] * 5]
    assert out["position"].numpy().tolist() == [-1]


def test_input_context_shards_batches_of_one_stream(built):
    """Fewer files than pipelines: pipeline i keeps batches i, i+n, ... of the same stream."""
    builder, _, _ = built
    files = pipeline.split_files(builder, "train")
    whole = [list(b["event_id"].numpy()) for b in pipeline.make_dataset(
        files, batch_size=2, shuffle=True, seed=3, history_length=CFG.history_length)]
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ds = pipeline.make_dataset(files, batch_size=2, input_context=ctx, shuffle=True,
                                   seed=3, history_length=CFG.history_length)
        assert [list(b["event_id"].numpy()) for b in ds] == whole[pid::2]
