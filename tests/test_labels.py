"""Labels and features of the hand-written log in fixtures.py, against hand-computed values."""

import numpy as np
import pytest

import fixtures
from zoo.data import contract, examples, labels

CFG = labels.LabelConfig(num_price_ranges=2)  # edge at the median of A..D = 25


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = fixtures.write_csv(str(tmp_path_factory.mktemp("log")), iso_rows=("e9", "e12"))
    return examples.ExampleSource(contract.read_contract(folder), CFG)


def by_id(source):
    lab = source.labels
    return {e: {k: lab[k][i] for k in lab} for i, e in enumerate(lab["event_id"])}


def test_every_impression_is_one_example(source):
    assert sorted(source.labels["event_id"]) == sorted(
        ["e2", "e3", "e7", "e8", "e11", "e13", "e16", "e18"])


@pytest.mark.parametrize("event_id,click,purchase,price_range,mask,demand,demand_mask", [
    # e2: A clicked (e4) and bought x2 (e6) later in s1; demand of A in (t, t+3d]: e6(2)+e12(1).
    ("e2", 1, 1, 0, 1.0, 3.0, 1.0),
    # e3: B clicked in s1 at the same second as e7 (e17), after e3; the s2 click is another session.
    ("e3", 1, 0, 0, 1.0, 0.0, 1.0),
    # e7: nothing on C; u1's next purchase is D (40 > 25 -> bucket 1) a day later.
    ("e7", 0, 0, 1, 1.0, 0.0, 1.0),
    ("e8", 1, 0, 1, 1.0, 0.0, 1.0),
    # e11: u2 buys A without clicking; demand of A: e6(2)+e12(1); e15 (day 7) is past 3 days.
    ("e11", 0, 1, 0, 1.0, 3.0, 1.0),
    # e16: u2 buys nothing afterwards -> price range missing and masked. Day 7 + 3 days
    # crosses the train/eval cut (day 8): the demand window is censored, masked.
    ("e16", 0, 0, -1, 0.0, 0.0, 0.0),
    # e18: u2 sees A after its last purchase; nobody buys A later (censored as e16).
    ("e18", 0, 0, -1, 0.0, 0.0, 0.0),
    # e13: eval day; E (50) bought one second later; 3 days run past the end of the log.
    ("e13", 0, 1, 1, 1.0, 1.0, 0.0),
])
def test_labels_by_hand(source, event_id, click, purchase, price_range, mask, demand,
                        demand_mask):
    got = by_id(source)[event_id]
    assert got["click"] == click
    assert got["purchase"] == purchase
    assert got["price_range"] == price_range
    assert got["price_range_mask"] == mask
    assert got["demand"] == pytest.approx(demand)
    assert got["demand_mask"] == demand_mask


def test_price_labels_thinned_per_next_purchase(source):
    """Training impressions sharing one next purchase keep at most k price labels (drawn
    at random, the same on every build); eval impressions all keep theirs."""
    def mask(k):
        lab = labels.compute_labels(source.tables, labels.LabelConfig(
            num_price_ranges=2, price_labels_per_purchase=k))
        return dict(zip(lab["event_id"], lab["price_range_mask"])), lab
    one, lab = mask(1)
    # u1: e2, e3 share the purchase e6; e7, e8 share e10 (D). u2's e11 is alone; e13 eval.
    assert one["e2"] + one["e3"] == 1.0 and one["e7"] + one["e8"] == 1.0
    assert one["e11"] == 1.0 and one["e13"] == 1.0
    assert one == mask(1)[0]  # the same draw on every build
    # Thinning moves the mask only: labels stay, and k = 0 or a large k keeps them all.
    everyone, lab0 = mask(0)
    np.testing.assert_array_equal(lab["price_range"], lab0["price_range"])
    assert everyone == mask(100)[0] == by_id_mask(source)
    with pytest.raises(ValueError, match="--price_labels_per_purchase must be"):
        labels.LabelConfig(price_labels_per_purchase=-1)


def by_id_mask(source):
    return {e: v["price_range_mask"] for e, v in by_id(source).items()}


def test_training_labels_stop_at_the_cut(tmp_path):
    """No training label is made of eval events: a purchase after the cut is neither a
    training impression's next price range nor part of its demand."""
    extra = fixtures.EVENTS + [
        # u3 sees D on day 7 and buys it on day 8 (eval), within both horizons.
        ("x1", "u3", "s7", fixtures.T0 + 7 * fixtures.DAY, "impression", "", "D", 0, ""),
        ("x2", "u3", "s8", fixtures.T0 + 8 * fixtures.DAY + 10, "purchase", "", "D", "", 1),
        # u4 sees D early on day 1 and buys it on day 2 (train): whole window, counted.
        ("x3", "u4", "s9", fixtures.T0 + fixtures.DAY + 1, "impression", "", "D", 0, ""),
        ("x4", "u4", "s10", fixtures.T0 + 2 * fixtures.DAY, "purchase", "", "D", "", 1),
    ]
    src = examples.ExampleSource(
        contract.read_contract(fixtures.write_csv(str(tmp_path), events=extra)), CFG)
    assert src.prep.cut == fixtures.T0 + 8 * fixtures.DAY
    got = by_id(src)
    assert got["x1"]["price_range"] == -1 and got["x1"]["price_range_mask"] == 0.0
    assert got["x1"]["demand"] == 0.0 and got["x1"]["demand_mask"] == 0.0
    # D bought by u1 (e10, day 1 + 10 s) and u4 (x4): both inside x3's window.
    assert got["x3"]["price_range"] == 1 and got["x3"]["demand"] == 2.0
    assert got["x3"]["demand_mask"] == 1.0


def test_price_edges_from_training_items_only(source):
    # E (50) appears only in the eval days, so the median is over A..D.
    np.testing.assert_allclose(source.prep.edges, [25.0])


def test_time_split_last_days_are_eval(source):
    # 10 days of log, eval_fraction 0.2 -> the last 2 days (day 8 onwards).
    assert source.prep.cut == fixtures.T0 + 8 * fixtures.DAY
    lab = by_id(source)
    assert [e for e, v in lab.items() if v["is_eval"]] == ["e13"]
    assert source.num_examples("train") == 7 and source.num_examples("eval") == 1


def test_horizon_flag_changes_price_label(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    short = labels.LabelConfig(num_price_ranges=2, price_horizon_days=0.5)
    lab = labels.compute_labels(contract.read_contract(folder), short)
    got = dict(zip(lab["event_id"], lab["price_range"]))
    assert got["e7"] == -1  # the D purchase is a day later: outside 12 hours
    assert got["e2"] == 0


def history(source, split="train"):
    out = {}
    for cols in source.chunks(split):
        for i, e in enumerate(cols["event_id"]):
            n = cols["hist_length"][i]
            out[e] = {k: list(cols[k][i][:n]) for k in examples.SEQUENCE_FEATURES}
            out[e]["padding"] = {k: list(cols[k][i][n:]) for k in examples.SEQUENCE_FEATURES}
    return out


def test_history_most_recent_first_strictly_before(source):
    h = history(source)
    assert h["e2"]["hist_item_id"] == []  # nothing before the first impression
    # e7 shares its second with the e17 click: not in its history (strictly before only).
    assert h["e7"]["hist_item_id"] == ["A", "A", "A"]
    assert h["e7"]["hist_event"] == ["purchase", "cart", "click"]
    assert h["e7"]["hist_gap"] == [10.0, 20.0, 30.0]
    # e8 (next day) sees e17 first.
    assert h["e8"]["hist_item_id"] == ["B", "A", "A", "A"]
    assert h["e8"]["hist_gap"][0] == fixtures.DAY - 50
    assert h["e8"]["hist_price"] == [20.0, 10.0, 10.0, 10.0]
    assert h["e8"]["hist_price_bucket"] == [0, 0, 0, 0]
    assert h["e8"]["hist_category"] == ["shoes"] * 4
    # Padding is empty / zero.
    assert set(h["e8"]["padding"]["hist_item_id"]) == {""}
    assert set(h["e8"]["padding"]["hist_gap"]) == {0.0}
    # Another user's events never leak in.
    assert h["e16"]["hist_item_id"] == ["A", "A"]  # u2's own purchases e15, e12


def test_no_feature_from_the_future(source):
    """Every history event of every example is strictly older than the impression."""
    ev = source.tables.events
    ts_of = dict(zip(ev["event_id"].to_pylist(), ev["timestamp"]))
    for split in ("train", "eval"):
        for cols in source.chunks(split):
            for i, e in enumerate(cols["event_id"]):
                n = cols["hist_length"][i]
                assert np.all(cols["hist_gap"][i][:n] > 0), e
                assert cols["timestamp"][i] == ts_of[e]


def test_history_truncated_to_length(tmp_path):
    folder = fixtures.write_csv(str(tmp_path))
    src = examples.ExampleSource(contract.read_contract(folder),
                                 labels.LabelConfig(num_price_ranges=2, history_length=2))
    h = history(src, "eval")
    assert h["e13"]["hist_item_id"] == ["D", "B"]  # the two latest of u1's six


def test_feature_change_in_the_future_changes_nothing(tmp_path):
    """Appending events after an impression never changes its features."""
    base = examples.ExampleSource(
        contract.read_contract(fixtures.write_csv(str(tmp_path / "a"))), CFG)
    extra = fixtures.EVENTS + [
        ("x1", "u1", "s1", fixtures.T0 + 11, "click", "", "C", "", ""),
        ("x2", "u1", "s1", fixtures.T0 + 10, "cart", "", "C", "", ""),  # same second as e2
    ]
    more = examples.ExampleSource(
        contract.read_contract(fixtures.write_csv(str(tmp_path / "b"), events=extra)), CFG)
    a, b = history(base), history(more)
    assert a["e2"] == b["e2"] and a["e3"] == b["e3"]
    assert b["e7"]["hist_item_id"] == ["A", "A", "A", "C", "C"]


def test_item_trailing_stats_by_hand(source):
    stats = {}
    for cols in list(source.chunks("train")) + list(source.chunks("eval")):
        for i, e in enumerate(cols["event_id"]):
            stats[e] = (cols["item_clicks_7d"][i], cols["item_purchases_7d"][i])
    # e8 (B, day 1): the e17 click of B at t0+50; e9 comes after.
    assert stats["e8"] == (1.0, 0.0)
    # e16 (B, day 7 + 100 s): the window [t0+100, t): e17 (t0+50) is out, e9 (day 1) in.
    assert stats["e16"] == (1.0, 0.0)
    # e18 (A, day 7 + 100 s): purchases e12 (t0+100, on the window's edge: in) and e15;
    # e6 (t0+40, quantity 2) is older than 7 days; A's click e4 as well.
    assert stats["e18"] == (0.0, 2.0)
    # e2 (A at t0+10): nothing happened before it.
    assert stats["e2"] == (0.0, 0.0)


def _next_events(source):
    out = {}
    for split in ("train", "eval"):
        for cols in source.chunks(split):
            for i, e in enumerate(cols["event_id"]):
                out[e] = (cols["next_item_id"][i], cols["next_category"][i])
    return out


def test_next_event_by_hand(source):
    """Pre-training's next-event target: the user's first history event strictly after."""
    got = _next_events(source)
    assert got["e2"] == got["e3"] == ("A", "shoes")  # e4, the click after the page
    assert got["e7"] == ("B", "shoes")  # e17 shares its second: e9 is the next one
    assert got["e8"] == ("B", "shoes")
    assert got["e11"] == ("A", "shoes")  # u2's purchase e12, not u1's events
    assert got["e16"] == got["e18"] == ("", "")  # u2 does nothing afterwards
    assert got["e13"] == ("E", "electronics")  # eval impressions may look into eval days


def test_next_event_of_a_training_impression_stops_at_the_cut(tmp_path):
    """A training impression whose next event is in the eval days has none: pre-training
    on the training split must not see the eval period."""
    extra = fixtures.EVENTS + [
        ("x1", "u1", "s6", fixtures.T0 + 2 * fixtures.DAY, "impression", "", "C", 0, "")]
    src = examples.ExampleSource(
        contract.read_contract(fixtures.write_csv(str(tmp_path), events=extra)), CFG)
    got = _next_events(src)
    assert got["x1"] == ("", "")  # u1's next is e14, on day 9 (eval)
    assert got["e8"] == ("B", "shoes")


def test_next_event_skips_same_second_events_and_other_users(tmp_path):
    """An event in the impression's own second is not "after" it, even when the file lists it
    first; another user's later events never count, even when they sort right after."""
    extra = ([("x2", "u1", "s1", fixtures.T0 + 50, "click", "", "C", "", "")]
             + fixtures.EVENTS
             + [("x3", "u3", "s9", fixtures.T0 + 7 * fixtures.DAY + 200, "click", "", "D",
                 "", "")])
    src = examples.ExampleSource(
        contract.read_contract(fixtures.write_csv(str(tmp_path), events=extra)), CFG)
    got = _next_events(src)
    assert got["e7"] == ("B", "shoes")  # x2 (C) and e17 share e7's second: e9 is next
    assert got["e16"] == got["e18"] == ("", "")  # u3's click sorts right after u2's events

