"""Bad contract folders: one clear error naming file, line and column; nothing left behind."""

import os
import subprocess
import sys

import pyarrow as pa
import pytest

import fixtures
from zoo.data import contract

E = fixtures.EVENTS


def replace(rows, event_id, index, value):
    out = []
    for row in rows:
        row = list(row)
        if row[0] == event_id:
            row[index] = value
        out.append(tuple(row))
    return out


BAD_CASES = {
    # name: (events, items, drop_file, error fragments)
    "unknown_event": (replace(E, "e4", 4, "like"), fixtures.ITEMS, None,
                      ["events.csv", "line 5", "'event'", "'like'", "one of"]),
    "bad_timestamp": (replace(E, "e6", 3, "yesterday"), fixtures.ITEMS, None,
                      ["events.csv", "line 7", "'timestamp'", "'yesterday'", "ISO-8601"]),
    "millisecond_timestamp": (replace(E, "e6", 3, fixtures.T0 * 1000), fixtures.ITEMS, None,
                              ["events.csv", "line 7", "'timestamp'", "milliseconds"]),
    "negative_timestamp": (replace(E, "e6", 3, -5), fixtures.ITEMS, None,
                           ["events.csv", "line 7", "'timestamp'"]),
    "bad_iso_timestamp": (replace(E, "e6", 3, "2026-13-45T00:00:00"), fixtures.ITEMS, None,
                          ["events.csv", "line 7", "'timestamp'"]),
    "nonpositive_price": (E, [*fixtures.ITEMS[:2], ("C", "x", "outdoor", "acme", 0.0),
                              *fixtures.ITEMS[3:]], None,
                          ["items.csv", "line 4", "'price'", "got 0.0,", "price > 0"]),
    "nan_price": (E, [*fixtures.ITEMS[:4], ("E", "x", "e", "peak", "nan")], None,
                  ["items.csv", "line 6", "'price'", "price > 0"]),
    "infinite_price": (E, [*fixtures.ITEMS[:4], ("E", "x", "e", "peak", "inf")], None,
                       ["items.csv", "line 6", "'price'", "got inf,", "a finite price > 0"]),
    "text_price": (E, [("A", "x", "shoes", "acme", "ten"), *fixtures.ITEMS[1:]], None,
                   ["items.csv", "line 2", "'price'", "'ten'"]),
    "unknown_item": (replace(E, "e7", 6, "ZZ"), fixtures.ITEMS, None,
                     ["events.csv", "line 8", "'item_id'", "'ZZ'", "items.csv"]),
    "impression_without_item": (replace(E, "e7", 6, ""), fixtures.ITEMS, None,
                                ["events.csv", "line 8", "'item_id'"]),
    "duplicate_event_id": (replace(E, "e5", 0, "e4"), fixtures.ITEMS, None,
                           ["events.csv", "line 6", "'event_id'", "duplicate", "'e4'", "line 5"]),
    "duplicate_item_id": (E, [*fixtures.ITEMS, ("A", "again", "shoes", "acme", 3.0)], None,
                          ["items.csv", "line 7", "'item_id'", "duplicate"]),
    "bad_quantity": (replace(E, "e6", 8, 0), fixtures.ITEMS, None,
                     ["events.csv", "line 7", "'quantity'"]),
    "bad_position": (replace(E, "e2", 7, "first"), fixtures.ITEMS, None,
                     ["events.csv", "line 3", "'position'", "'first'"]),
    "empty_events": ([], fixtures.ITEMS, None, ["events.csv", "empty"]),
    "empty_items": (E, [], None, ["items.csv", "empty"]),
    "missing_items_table": (E, fixtures.ITEMS, "items.csv", ["missing table 'items'"]),
    "missing_events_table": (E, fixtures.ITEMS, "events.csv", ["missing table 'events'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_the_place(tmp_path, case):
    events, items, drop, fragments = BAD_CASES[case]
    folder = fixtures.write_csv(str(tmp_path), events=events, items=items)
    if drop:
        os.remove(os.path.join(folder, drop))
    with pytest.raises(contract.ContractError) as err:
        contract.read_contract(folder)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_missing_column_names_it(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    path = os.path.join(folder, "items.csv")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:  # drop the brand column
        for line in lines:
            f.write(",".join(line.split(",")[:3] + line.split(",")[4:]) + "\n")
    with pytest.raises(contract.ContractError, match=r"items.csv: missing column\(s\) \['brand'\]"):
        contract.read_contract(folder)


def test_ragged_csv_is_a_contract_error(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    with open(os.path.join(folder, "events.csv"), "a") as f:
        f.write("x1,u1,s1\n")
    with pytest.raises(contract.ContractError, match="events.csv: not a readable CSV"):
        contract.read_contract(folder)


def test_byte_order_mark_is_accepted(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    path = os.path.join(folder, "events.csv")
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8-sig") as f:
        f.write(text)
    assert contract.read_contract(folder).num_events == len(E)


def test_parquet_errors_name_rows(tmp_path):
    folder = fixtures.write_parquet(str(tmp_path), events=replace(E, "e4", 4, "like"))
    with pytest.raises(contract.ContractError, match=r"events.parquet: row 3, column 'event'"):
        contract.read_contract(folder)


def test_extra_columns_ignored_and_optional_columns_default(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    path = os.path.join(folder, "events.csv")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:  # drop position and quantity, add a column of noise
        for i, line in enumerate(lines):
            f.write(",".join(line.split(",")[:7] + ["device" if i == 0 else "phone"]) + "\n")
    tables = contract.read_contract(folder)
    assert set(tables.events["position"]) == {-1}
    assert set(tables.events["quantity"]) == {1}


def test_csv_iso_and_integer_timestamps_agree(tmp_path):
    a = contract.read_contract(fixtures.write_csv(str(tmp_path / "a")))
    b = contract.read_contract(fixtures.write_csv(
        str(tmp_path / "b"), iso_rows=[r[0] for r in E]))
    assert list(a.events["timestamp"]) == list(b.events["timestamp"])


def test_prepare_command_fails_cleanly(tmp_path):
    folder = fixtures.write_csv(str(tmp_path / "log"), events=replace(E, "e4", 4, "like"))
    out = tmp_path / "tfds"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.data.prepare", "--data_dir", folder, "--tfds_dir", str(out)],
        capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode != 0
    assert "events.csv: line 5, column 'event'" in proc.stderr
    leftovers = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs] if out.exists() else []
    assert leftovers == []
    assert not out.exists() or not any(out.iterdir())


def test_prepare_command_rejects_a_label_flag_out_of_range(tmp_path):
    folder = fixtures.write_csv(str(tmp_path / "log"))
    out = tmp_path / "tfds"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.data.prepare", "--data_dir", folder, "--tfds_dir", str(out),
         "--price_labels_per_purchase", "-1"],
        capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 2
    assert "--price_labels_per_purchase must be an integer >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def _partitioned(tmp_path):
    """The hand-written log as a folder of Parquet parts per day (hive `dt=`), with the
    files Spark leaves beside them, and the items as a one-part folder."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    single = fixtures.write_parquet(str(tmp_path / "single"))
    table = pq.read_table(os.path.join(single, "events.parquet"))
    folder = tmp_path / "parts"
    day = (np.asarray(table["timestamp"]) - fixtures.T0) // fixtures.DAY
    for d in np.unique(day):
        part = folder / "events" / f"dt=2026-01-{5 + int(d):02d}"
        part.mkdir(parents=True)
        rows = table.filter(pc.equal(pa.array(day), d))
        half = rows.num_rows // 2
        pq.write_table(rows.slice(0, half), part / "part-00000.parquet")
        pq.write_table(rows.slice(half), part / "part-00001.parquet")
        (part / ".part-00000.parquet.crc").write_bytes(b"not data")
    (folder / "events" / "_SUCCESS").write_text("")
    (folder / "items").mkdir()
    pq.write_table(pq.read_table(os.path.join(single, "items.parquet")),
                   folder / "items" / "part-0.parquet")
    return single, folder


def _by_id(tables):
    import numpy as np

    ids = np.asarray(tables.events["event_id"].to_pylist())
    order = np.argsort(ids)
    return {k: np.asarray(v if not isinstance(v, pa.Array) else v.to_pylist())[order]
            for k, v in tables.events.items()}


def test_a_folder_of_partitioned_parts_reads_as_the_single_file(tmp_path):
    import numpy as np

    single, folder = _partitioned(tmp_path)
    want = _by_id(contract.read_contract(single))
    for location in (str(folder), "file://" + str(folder)):
        tables = contract.read_contract(location)
        got = _by_id(tables)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert tables.events_path.endswith("events/")
    assert contract.is_folder("file://" + str(folder)) and not contract.is_folder(
        str(folder / "nothing"))


def test_a_folder_tables_errors_name_the_part_and_its_row(tmp_path):
    import pyarrow.parquet as pq

    _, folder = _partitioned(tmp_path)
    part = folder / "events" / "dt=2026-01-06" / "part-00001.parquet"
    t = pq.read_table(part)
    events = t["event"].to_pylist()
    events[0] = "like"
    pq.write_table(t.set_column(t.column_names.index("event"), "event", pa.array(events)),
                   part)
    with pytest.raises(contract.ContractError,
                       match=r"part .*dt=2026-01-06/part-00001.parquet, row 0, column 'event'"):
        contract.read_contract(str(folder))
    # Parts of two kinds, and a table given twice, are named.
    (folder / "events" / "dt=2026-01-06" / "extra.csv").write_text("event_id\n")
    with pytest.raises(contract.ContractError, match="all of one kind"):
        contract.read_contract(str(folder))
    (folder / "events" / "dt=2026-01-06" / "extra.csv").unlink()
    (folder / "events.csv").write_text("event_id\n")
    with pytest.raises(contract.ContractError, match="keep one"):
        contract.read_contract(str(folder))


def test_a_new_part_changes_the_prepared_examples_key(tmp_path):
    import shutil
    from zoo.data import ecom_events, labels

    _, folder = _partitioned(tmp_path)
    config = labels.LabelConfig()
    before = ecom_events._fingerprint(str(folder), config)
    day = folder / "events" / "dt=2026-01-06"
    shutil.copy(day / "part-00000.parquet", day / "part-00002.parquet")
    assert ecom_events._fingerprint(str(folder), config) != before


def test_a_partitioned_log_prepares_the_examples_of_the_single_file(tmp_path):
    """The same log as one file and as daily hive parts (in another row order): the same
    examples, byte for byte, in each split."""
    import glob

    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from zoo.data import labels, prepare, simulate

    single = str(tmp_path / "single")
    simulate.simulate(single, num_users=150, num_items=300, num_brands=20, days=8, seed=4,
                      oracle_replays=0)
    table = pq.read_table(os.path.join(single, "events.parquet"))
    day = (np.asarray(table["timestamp"]) - fixtures.T0) // fixtures.DAY
    parts = tmp_path / "parts"
    for d in np.unique(day)[::-1]:  # parts written newest first: order comes from the paths
        folder = parts / "events" / f"dt=2026-01-{5 + int(d):02d}"
        folder.mkdir(parents=True)
        pq.write_table(table.filter(pc.equal(pa.array(day), d)), folder / "part-0.parquet")
    pq.write_table(pq.read_table(os.path.join(single, "items.parquet")),
                   parts / "items.parquet")
    config = labels.LabelConfig(history_length=8, demand_horizon_days=1)
    a = prepare.prepare(single, str(tmp_path / "tfds_a"), config)
    b = prepare.prepare("file://" + str(parts), str(tmp_path / "tfds_b"), config)

    def records(builder, split):
        import tensorflow as tf

        files = sorted(glob.glob(os.path.join(builder.data_path, f"*-{split}.tfrecord*")))
        return [r.numpy() for r in tf.data.TFRecordDataset(files)]

    for split in ("train", "eval"):
        want = records(a, split)
        assert len(want) > 100 and records(b, split) == want
