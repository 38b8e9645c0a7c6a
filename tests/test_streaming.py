"""Preparation by user buckets (`zoo.data.streaming`) against the whole log in memory, and
the numpy serialiser against `tf.io.encode_proto`'s."""

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests import fixtures
from zoo.data import contract, examples, labels, simulate, streaming

CONFIG = labels.LabelConfig(history_length=12)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A simulated log with repeat purchases, split into daily parts (newest first on
    disk, so order comes from the paths) and read through a file:// URI."""
    root = tmp_path_factory.mktemp("streaming")
    single = str(root / "single")
    simulate.simulate(single, num_users=240, num_items=300, num_brands=20, days=9, seed=8,
                      oracle_replays=0, repeat_purchase=True)
    table = pq.read_table(os.path.join(single, "events.parquet"))
    day = (np.asarray(table["timestamp"]) - fixtures.T0) // fixtures.DAY
    parts = root / "parts"
    for d in np.unique(day)[::-1]:
        folder = parts / "events" / f"dt=2026-01-{5 + int(d):02d}"
        folder.mkdir(parents=True)
        pq.write_table(table.filter(pc.equal(pa.array(day), d)), folder / "part-0.parquet")
    pq.write_table(pq.read_table(os.path.join(single, "items.parquet")),
                   parts / "items.parquet")
    return single, "file://" + str(parts)


def _columns(sources, split):
    cols = {}
    for source in sources:
        for chunk in source.chunks(split, 1000, text=False):
            for name, values in chunk.items():
                cols.setdefault(name, []).append(values)
    cols = {name: np.concatenate(v) for name, v in cols.items()}
    order = np.argsort(cols["event_id"])
    return {name: v[order] for name, v in cols.items()}


def test_buckets_give_the_examples_of_the_whole_log(shop):
    """Eight user buckets and batches of 997 rows (so batches end inside sessions and inside
    every label window, and items and (query, category)s are spread over buckets): every
    example column equals the in-memory preparation's; integers and strings exactly,
    floats within the rounding of running sums taken over other rows."""
    single, parts = shop
    whole = examples.ExampleSource(contract.read_contract(single), CONFIG)
    events = whole.tables.num_events
    log = streaming.BucketedLog(parts, CONFIG, bucket_events=events // 8, batch_rows=997)
    try:
        assert log.num_buckets == 8 or log.num_buckets == 9
        assert log.shared.cut == whole.prep.cut and log.shared.num_events == events
        np.testing.assert_array_equal(log.shared.edges, whole.prep.edges)
        buckets = list(log.sources())
        assert len(buckets) == log.num_buckets
        for split in ("train", "eval"):
            want, got = _columns([whole], split), _columns(buckets, split)
            assert len(want["event_id"]) > 500 and set(got) == set(want)
            inexact = 0
            for name, values in want.items():
                if values.dtype.kind == "f":
                    np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-6,
                                               err_msg=name)
                    inexact += int(np.sum(got[name] != values))
                else:
                    np.testing.assert_array_equal(got[name], values, err_msg=name)
            assert inexact <= 1e-3 * len(want["event_id"]) * len(want)
        # The labels crossing users are there: clicks, repeat purchases, demand windows.
        train = _columns(buckets, "train")
        assert train["click"].sum() > 50 and (train["demand"] > 0).sum() > 50
        assert (train["hist_length"] > 0).mean() > 0.5
    finally:
        log.cleanup()
    assert not os.path.exists(log.work)


def test_streaming_preparation_writes_the_same_examples(shop, tmp_path):
    """End to end through TFDS: the same records (bytes) as the in-memory preparation in
    each split, bucket by bucket in time order, but for float rounding in a few values."""
    import tensorflow as tf

    from zoo.data import prepare

    single, parts = shop
    a = prepare.prepare(single, str(tmp_path / "a"), CONFIG, streaming="off")
    b = prepare.prepare(parts, str(tmp_path / "b"), CONFIG, streaming="on", bucket_events=3000)
    assert a.info.splits["train"].num_shards == 1 and b.info.splits["train"].num_shards > 3
    assert b.info.metadata["eval_start_timestamp"] == a.info.metadata["eval_start_timestamp"]

    def records(builder, split):
        files = sorted(glob.glob(os.path.join(builder.data_path, f"*-{split}.tfrecord*")))
        return [r.numpy() for r in tf.data.TFRecordDataset(files)]

    for split in ("train", "eval"):
        want, got = records(a, split), records(b, split)
        assert len(got) == len(want) > 100
        assert len(set(want) ^ set(got)) <= 0.02 * len(want)
        stamps = [tf.train.Example.FromString(r).features.feature["timestamp"].int64_list
                  .value[0] for r in got]
        assert stamps != sorted(stamps)  # bucket order, not one time order
    # The bucket files are gone; only TFDS's folders remain.
    assert not glob.glob(str(tmp_path / "b" / "**" / "ecom_zoo_buckets_*"), recursive=True)


def test_a_bad_row_is_named_by_part_and_row_when_streaming(tmp_path):
    """Errors of a batch name the part and the row in that part, past the first batch; a
    duplicate event id in another part and batch is found too."""
    parts = tmp_path / "log"
    (parts / "events" / "dt=2026-01-05").mkdir(parents=True)
    (parts / "events" / "dt=2026-01-06").mkdir(parents=True)
    fixtures.write_parquet(str(parts))
    events = pq.read_table(str(parts / "events.parquet"))
    os.remove(parts / "events.parquet")
    pq.write_table(events, parts / "events" / "dt=2026-01-05" / "part-0.parquet")
    kinds = events.column("event").to_pylist()
    bad = events.set_column(events.column_names.index("event"), "event",
                            pa.array(kinds[:7] + ["like"] + kinds[8:]))
    bad = bad.set_column(0, "event_id", pa.array([f"x{i}" for i in range(18)]))
    pq.write_table(bad, parts / "events" / "dt=2026-01-06" / "part-0.parquet")
    with pytest.raises(contract.ContractError,
                       match=r"dt=2026-01-06/part-0.parquet, row 7, column 'event': got 'like'"):
        streaming.BucketedLog(str(parts), CONFIG, bucket_events=5, batch_rows=4)
    dup = bad.set_column(events.column_names.index("event"), "event", events.column("event"))
    dup = dup.set_column(0, "event_id", pa.array([f"x{i}" for i in range(17)] + ["e3"]))
    pq.write_table(dup, parts / "events" / "dt=2026-01-06" / "part-0.parquet")
    with pytest.raises(contract.ContractError,
                       match=r"dt=2026-01-06/part-0.parquet, row 17, column 'event_id': "
                             r"duplicate value 'e3' \(first at part .*dt=2026-01-05/"
                             r"part-0.parquet, row 2\)"):
        streaming.BucketedLog(str(parts), CONFIG, bucket_events=5, batch_rows=4)
    assert not glob.glob(os.path.join(os.path.dirname(str(tmp_path)), "ecom_zoo_buckets_*"))


def test_numpy_serialiser_writes_encode_protos_bytes(shop):
    """Byte for byte the reference's examples, on rows with empty and full histories,
    empty queries, missing next events (-1 codes), negative labels and non-ASCII text."""
    from zoo.data import serialize

    single, _ = shop
    tables = contract.read_contract(single)
    tables.items["title"] = pa.array(["Café ✓ " + t for t in tables.items["title"].to_pylist()])
    source = examples.ExampleSource(tables, CONFIG)
    coded = next(source.chunks("eval", 3000, text=False))
    assert (coded["hist_length"] == 0).any() and (coded["hist_length"] == 12).any()
    assert (coded["price_range"] < 0).any() and (coded["next_item"] < 0).any()
    assert (coded["query"] == "").any()
    fast = serialize.CodedSerializer(tables)(coded)
    assert fast == list(serialize.ProtoSerializer(tables)(coded))
    assert len(fast) == len(coded["hist_length"])


def test_hash64_is_fnv1a_of_the_utf8_bytes():
    def fnv(b):
        h = 0xCBF29CE484222325
        for c in b:
            h = ((h ^ c) * 0x100000001B3) % 2**64
        return h

    words = ["", "u1", "ünïcode", "a" * 70]
    assert streaming.hash64(pa.array(words)).tolist() == [fnv(w.encode()) for w in words]


def test_one_user_a_bucket_on_the_hand_written_log(tmp_path):
    """The hand-written log (labels checked by hand in test_labels.py) plus a user with no
    impression, a bucket per user: the same examples, exactly."""
    events = fixtures.EVENTS + [("e99", "u3", "s9", fixtures.T0 + 60, "search", "tent", "",
                                 "", "")]
    fixtures.write_csv(str(tmp_path / "log"), events=events)
    whole = examples.ExampleSource(contract.read_contract(str(tmp_path / "log")), CONFIG)
    log = streaming.BucketedLog(str(tmp_path / "log"), CONFIG, bucket_events=1, batch_rows=5)
    try:
        bucket = streaming.hash64(pa.array(["u1", "u2", "u3"])) % np.uint64(log.num_buckets)
        assert len(set(bucket.tolist())) == 3  # u3's bucket holds no impression
        for split in ("train", "eval"):
            want, got = _columns([whole], split), _columns(log.sources(), split)
            assert set(got) == set(want) and len(want["event_id"]) > 0
            for name, values in want.items():
                np.testing.assert_array_equal(got[name], values, err_msg=name)
    finally:
        log.cleanup()
