"""The behaviour simulator: contract output, determinism, and an oracle that is right.

The oracle checks compare the simulator's true probabilities with the labels that
`zoo.data.labels` computes from the written log, within sampling error: a wrong label
definition, a misaligned oracle row or a biased Monte Carlo estimate makes them fail.
"""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from zoo.data import contract, labels, simulate

SMALL = dict(num_users=600, num_items=600, num_brands=30, days=14, seed=3,
             oracle_replays=8, demand_replays=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("sim") / "small")
    summary = simulate.simulate(folder, **SMALL)
    tables = contract.read_contract(folder)
    meta = json.load(open(os.path.join(folder, "oracle_meta.json")))
    config = labels.LabelConfig(num_price_ranges=meta["num_price_ranges"],
                                price_horizon_days=meta["price_horizon_days"],
                                demand_horizon_days=meta["demand_horizon_days"],
                                eval_fraction=meta["eval_fraction"])
    prep = labels.Prepared(tables, config)
    lab = labels.compute_labels(tables, config, prepared=prep)
    oracle = pq.read_table(os.path.join(folder, "oracle.parquet"))
    oracle = {c: oracle.column(c).to_numpy(zero_copy_only=False) for c in oracle.column_names}
    index = {e: i for i, e in enumerate(oracle["event_id"])}
    rows = np.array([index[e] for e in _np(lab["event_id"])])
    aligned = {k: v[rows] for k, v in oracle.items()}
    return dict(folder=folder, summary=summary, tables=tables, meta=meta, prep=prep,
                labels=lab, oracle=oracle, o=aligned)


def _np(column):
    """A contract column (Arrow array or numpy) as a numpy array (text as str)."""
    if hasattr(column, "to_numpy"):
        column = column.to_numpy(zero_copy_only=False)
    column = np.asarray(column)
    return column.astype(str) if column.dtype == object else column


def _auc(score, y):
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    # Average ranks over ties.
    s = score[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        if b - a > 1:
            ranks[order[a:b]] = (a + b + 1) / 2.0
    n1 = y.sum()
    n0 = len(y) - n1
    return (ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _cluster_z(residual, groups):
    """Mean residual / its standard error with residuals correlated within groups."""
    _, inv = np.unique(groups, return_inverse=True)
    per_group = np.bincount(inv, weights=residual)
    se = np.sqrt((per_group ** 2).sum()) / len(residual)
    return residual.mean() / se


def test_output_is_a_valid_contract_folder(small):
    s = small["summary"]
    t = small["tables"]
    assert t.num_events == s["num_events"] > 3000
    assert sorted(os.listdir(small["folder"])) == [
        "events.parquet", "items.parquet", "oracle.parquet", "oracle_meta.json"]
    ev = {k: _np(v) for k, v in t.events.items()}
    kinds = set(np.unique(ev["event"]))
    assert kinds == set(contract.EVENT_TYPES)
    ts = ev["timestamp"]
    assert ts.min() >= simulate.START_TIME and np.all(np.diff(ts) >= 0)
    assert ts.max() < simulate.START_TIME + SMALL["days"] * contract.SECONDS_PER_DAY
    imp = ev["event"] == "impression"
    assert (ev["position"][imp] >= 0).all() and (ev["position"][imp] < simulate.LIST).all()
    assert (ev["position"][~imp] == -1).all()
    assert (ev["item_id"][ev["event"] == "search"] == "").all()
    search = ev["event"] == "search"
    assert (ev["query"][search] != "").all()
    # Some feed impressions have no query, most search ones do.
    assert 0 < (ev["query"][imp] == "").mean() < 0.8
    assert (ev["quantity"][ev["event"] == "purchase"] >= 1).all()
    assert (_np(t.items["price"]) > 0).all() and len(t.items["item_id"]) == SMALL["num_items"]
    # Each item is shown at most once per session (the exactness of p_click relies on it).
    key = np.char.add(np.char.add(ev["session_id"][imp], "/"), ev["item_id"][imp])
    assert len(np.unique(key)) == imp.sum()


def test_oracle_rows_match_impressions_one_to_one(small):
    ev = small["tables"].events
    imp_ids = np.sort(_np(ev["event_id"])[_np(ev["event"]) == "impression"])
    oracle_ids = np.sort(small["oracle"]["event_id"].astype(str))
    assert np.array_equal(imp_ids, oracle_ids)
    o = small["oracle"]
    K = small["meta"]["num_price_ranges"]
    pr = np.stack([o[f"p_price_range_{k}"] for k in range(K)], 1)
    assert np.all(pr >= 0) and np.allclose(pr.sum(1), o["p_price_range_any"])
    assert np.all(o["p_price_range_any"] <= 1 + 1e-9)
    assert np.all((o["p_click"] > 0) & (o["p_click"] < 1))
    assert np.all(o["p_purchase"] <= o["p_click"]) and np.all(o["demand"] >= 0)


def test_meta_matches_the_label_definition(small):
    meta, prep = small["meta"], small["prep"]
    assert meta["split_time"] == prep.cut
    np.testing.assert_allclose(meta["price_edges"], prep.edges)


@pytest.mark.parametrize("label", ["click", "purchase"])
def test_click_and_purchase_oracle_discriminate_and_are_calibrated(small, label):
    p = small["o"][f"p_{label}"]
    y = small["labels"][label].astype(np.float64)
    assert _auc(p, y) > 0.72
    # Given the state, outcomes are independent Bernoulli(p): binomial error is exact.
    se = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(y.mean() - p.mean()) < 4 * se
    bins = np.array_split(np.argsort(p, kind="stable"), 10)
    for b in bins:
        se = np.sqrt((p[b] * (1 - p[b])).sum()) / len(b)
        assert abs(y[b].mean() - p[b].mean()) < 4 * se + 1e-9, (label, p[b].mean(), y[b].mean())


def test_price_range_oracle_is_unbiased(small):
    # A training impression whose H-day window crosses the train/eval cut has a censored
    # label (no training label is made of eval events); the oracle's window is whole.
    cut, H = small["prep"].cut, small["meta"]["price_horizon_days"] * contract.SECONDS_PER_DAY
    t = small["labels"]["timestamp"]
    whole = (t >= cut) | (t + H < cut)
    assert 0.05 < 1 - whole.mean() < 0.8
    o = {k: v[whole] for k, v in small["o"].items()}
    lab = {k: np.asarray(v)[whole] for k, v in small["labels"].items()}
    K = small["meta"]["num_price_ranges"]
    user = small["prep"].user[lab["row"]]
    y = lab["price_range"]
    assert 0.1 < (y >= 0).mean() < 0.95
    z = _cluster_z((y >= 0) - o["p_price_range_any"], user)
    assert abs(z) < 4, z
    for k in range(K):
        z = _cluster_z((y == k) - o[f"p_price_range_{k}"], user)
        assert abs(z) < 4, (k, z)
    # Unbiased in each fifth of the log too (a wrong horizon or log-end handling shows). Bins
    # are cut on time, not on the Monte Carlo estimate itself, whose noise would bias them.
    p = o["p_price_range_any"]
    for b in np.array_split(np.argsort(lab["timestamp"], kind="stable"), 5):
        z = _cluster_z((y[b] >= 0) - p[b], user[b])
        assert abs(z) < 4, z
    # Informative: it ranks who buys within H days.
    assert _auc(o["p_price_range_any"], (y >= 0).astype(int)) > 0.65


def test_demand_oracle_is_unbiased(small):
    o, lab = small["o"], small["labels"]
    item = small["prep"].item[lab["row"]]
    y = lab["demand"].astype(np.float64)
    assert y.mean() > 0.1
    z = _cluster_z(y - o["demand"], item)
    assert abs(z) < 4, z
    for b in np.array_split(np.argsort(o["p_purchase"], kind="stable"), 5):
        z = _cluster_z(y[b] - o["demand"][b], item[b])
        assert abs(z) < 4, z
    assert np.corrcoef(y, o["demand"])[0, 1] > 0.3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    tiny = dict(num_users=60, num_items=100, num_brands=10, days=3, oracle_replays=2,
                demand_replays=1)
    a = simulate.simulate(str(tmp_path / "a"), seed=5, **tiny)
    simulate.simulate(str(tmp_path / "b"), seed=5, **tiny)
    simulate.simulate(str(tmp_path / "c"), seed=6, **tiny)
    assert a["num_events"] > 100
    for name in ("events.parquet", "items.parquet", "oracle.parquet", "oracle_meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "events.parquet").read_bytes() != (
        tmp_path / "c" / "events.parquet").read_bytes()
    # The Monte Carlo oracle draws from its own streams: the log does not depend on it.
    simulate.simulate(str(tmp_path / "d"), seed=5, **dict(tiny, oracle_replays=0))
    assert (tmp_path / "a" / "events.parquet").read_bytes() == (
        tmp_path / "d" / "events.parquet").read_bytes()
    o = pq.read_table(str(tmp_path / "d" / "oracle.parquet"))
    assert np.isnan(o.column("demand").to_numpy()).all()
    assert not np.isnan(o.column("p_click").to_numpy()).any()


def test_csv_format_reads_back_the_same(tmp_path):
    tiny = dict(num_users=40, num_items=60, num_brands=8, days=2, seed=1, oracle_replays=0)
    simulate.simulate(str(tmp_path / "p"), **tiny)
    simulate.simulate(str(tmp_path / "c"), format="csv", **tiny)
    p = contract.read_contract(str(tmp_path / "p"))
    c = contract.read_contract(str(tmp_path / "c"))
    assert c.events_path.endswith(".csv")
    for col in ("event_id", "user_id", "event", "query", "item_id", "timestamp", "position",
                "quantity"):
        assert np.array_equal(_np(p.events[col]), _np(c.events[col])), col
    np.testing.assert_allclose(_np(p.items["price"]), _np(c.items["price"]))


def test_failed_run_leaves_no_folder(tmp_path, monkeypatch):
    def boom(world):
        raise RuntimeError("disk full")
    monkeypatch.setattr(simulate, "_items_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate.simulate(str(tmp_path / "out"), num_users=30, num_items=40, days=1,
                          oracle_replays=0)
    assert os.listdir(tmp_path) == []


def test_default_dataset_location_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOM_ZOO_CACHE", str(tmp_path))
    folder = simulate.default_data_dir()
    assert folder == os.path.join(str(tmp_path), "simulated", simulate.DEFAULT_VERSION)
    calls = []

    def fake(path, **kw):
        calls.append(path)
        os.makedirs(path)
        open(os.path.join(path, "oracle_meta.json"), "w").write("{}")
    monkeypatch.setattr(simulate, "simulate", fake)
    assert simulate.ensure_default_dataset() == folder
    assert simulate.ensure_default_dataset() == folder
    assert calls == [folder]


def _repeat_share(folder, categories):
    """Share of the purchases in `categories` whose (user, item) was bought before."""
    ev = pq.read_table(os.path.join(folder, "events.parquet")).to_pydict()
    items = pq.read_table(os.path.join(folder, "items.parquet")).to_pydict()
    cat = dict(zip(items["item_id"], items["category"]))
    seen, repeats, n = set(), 0, 0
    for u, i, e in zip(ev["user_id"], ev["item_id"], ev["event"]):
        if e == "purchase" and cat.get(i) in categories:
            n += 1
            repeats += (u, i) in seen
            seen.add((u, i))
    return repeats / max(n, 1), n


def test_repeat_purchase_regime_buys_staples_again(small, tmp_path):
    """Consumables are bought again (the same item, by the same user) far more often with the
    regime than without; the regime's own stream leaves the world otherwise as it was."""
    consumables = set(simulate.CONSUMABLES)
    with_regime, n_with = _repeat_share(small["folder"], consumables)
    off = str(tmp_path / "off")
    simulate.simulate(off, **dict(SMALL, repeat_purchase=False, oracle_replays=0))
    without, n_without = _repeat_share(off, consumables)
    assert small["meta"]["repeat_purchase"] is True
    assert n_with > 1.5 * n_without, (n_with, n_without)
    assert with_regime > 2 * without, (with_regime, without)
    # Off, the catalogue is the one of the first simulator (same items and prices).
    on_items = pq.read_table(os.path.join(small["folder"], "items.parquet"))
    off_items = pq.read_table(os.path.join(off, "items.parquet"))
    assert on_items.equals(off_items)


def _brand_echo_share(folder):
    """(mean oracle p_click of impressions within BRAND_ECHO_SECONDS after the user bought
    the item's brand, the same of the other impressions)."""
    ev = pq.read_table(os.path.join(folder, "events.parquet")).to_pydict()
    items = pq.read_table(os.path.join(folder, "items.parquet")).to_pydict()
    brand = dict(zip(items["item_id"], items["brand"]))
    oracle = pq.read_table(os.path.join(folder, "oracle.parquet")).to_pydict()
    p_click = dict(zip(oracle["event_id"], oracle["p_click"]))
    last_buy, echo, plain = {}, [], []
    for eid, t, u, i, e in zip(ev["event_id"], ev["timestamp"], ev["user_id"], ev["item_id"],
                               ev["event"]):
        if e == "purchase":
            last_buy[(u, brand[i])] = t
        elif e == "impression":
            bought = last_buy.get((u, brand[i]))
            recent = bought is not None and t - bought <= simulate.BRAND_ECHO_SECONDS
            (echo if recent else plain).append(p_click[eid])
    return float(np.mean(echo)), float(np.mean(plain)), len(echo)


def test_brand_echo_plants_a_recent_brand_purchase_as_a_cause(tmp_path):
    """The planted signal raises the click of an item while its brand was bought within
    3 days; off (the default) the log is the default one, byte for byte."""
    kw = dict(num_users=300, num_items=400, num_brands=20, days=8, seed=3, oracle_replays=0)
    simulate.simulate(str(tmp_path / "off"), **kw)
    simulate.simulate(str(tmp_path / "zero"), **kw, brand_echo=0.0)
    simulate.simulate(str(tmp_path / "on"), **kw, brand_echo=3.0)
    for name in ("events.parquet", "oracle.parquet"):
        assert (tmp_path / "off" / name).read_bytes() == (tmp_path / "zero" / name).read_bytes()
    echo_on, plain_on, n_on = _brand_echo_share(str(tmp_path / "on"))
    echo_off, plain_off, n_off = _brand_echo_share(str(tmp_path / "off"))
    assert n_on > 200 and n_off > 200, (n_on, n_off)
    # Off, a recent purchase of the brand raises the click through brand affinity alone
    # (x1.56 measured); on, the planted term adds to it (x2.8 measured).
    ratio_on, ratio_off = echo_on / plain_on, echo_off / plain_off
    assert ratio_on > 2.3 and ratio_on > 1.5 * ratio_off, (ratio_on, ratio_off)
    assert json.load(open(tmp_path / "on" / "oracle_meta.json"))["brand_echo"] == 3.0
    with pytest.raises(ValueError, match="brand_echo must be a finite number"):
        simulate.simulate(str(tmp_path / "bad"), **kw, brand_echo=float("nan"))


def _drift_world(kw):
    extra = int(np.ceil(max(contract.DEFAULT_PRICE_HORIZON_DAYS,
                            contract.DEFAULT_DEMAND_HORIZON_DAYS))) + 2
    return simulate.World(kw["num_users"], kw["num_items"], kw["num_brands"], kw["days"],
                          extra, kw["seed"], simulate.DEFAULTS["sessions_per_day"],
                          simulate.DEFAULTS["repeat_purchase"], 0.0, kw.get("drift", 0.0))


def _category_shares(tables, rows):
    code = tables.events["item_code"][rows]
    cats = _np(tables.items["category"])[code]
    names = np.unique(_np(tables.items["category"]))
    return np.array([(cats == c).mean() for c in names])


def test_drift_changes_the_shop_over_time_and_the_oracle_stays_exact(tmp_path):
    """drift > 0: items are only shown while on sale, new items take a growing share,
    category demand moves between the first and last week (far more than without drift),
    and the exact click / purchase oracle is still calibrated against the drawn labels."""
    from trainers.core import drift as drift_lib

    kw = dict(num_users=500, num_items=600, num_brands=20, days=28, seed=4, oracle_replays=0)
    shares = {}
    for d in (0.0, 1.0):
        folder = str(tmp_path / f"drift{d}")
        simulate.simulate(folder, **kw, drift=d)
        tables = contract.read_contract(folder)
        ev = tables.events
        imp = np.flatnonzero(ev["event_type"] == contract.EVENT_INDEX["impression"])
        day = (ev["timestamp"][imp] - simulate.START_TIME) // simulate.DAY
        first, last = imp[day < 7], imp[day >= 21]
        shares[d] = drift_lib.psi_shares(_category_shares(tables, first),
                                         _category_shares(tables, last))
        if d == 0.0:
            continue
        world = _drift_world(dict(kw, drift=d))
        item = ev["item_code"][imp]
        assert world.on_sale[item, day].all()  # never a retired or unlaunched item
        launched_late = world.launch[item] >= 7
        assert launched_late[day >= 21].mean() > 0.1, launched_late[day >= 21].mean()
        retired = (world.retire < 21).sum()
        assert retired > 20 and not np.isin(item[day >= 21], np.flatnonzero(
            world.retire < 21)).any()
        meta = json.load(open(os.path.join(folder, "oracle_meta.json")))
        assert meta["drift"] == 1.0
        config = labels.LabelConfig(eval_fraction=meta["eval_fraction"])
        lab = labels.compute_labels(tables, config)
        oracle = pq.read_table(os.path.join(folder, "oracle.parquet"))
        index = {e: i for i, e in enumerate(oracle.column("event_id").to_pylist())}
        rows = np.array([index[e] for e in _np(lab["event_id"])])
        for name in ("click", "purchase"):
            p = oracle.column(f"p_{name}").to_numpy()[rows]
            y = lab[name].astype(np.float64)
            se = np.sqrt((p * (1 - p)).sum()) / len(p)
            assert abs(y.mean() - p.mean()) < 4 * se, (name, y.mean(), p.mean())
            assert _auc(p, y) > 0.72
    # Category mix, first week against the last (PSI): moved with drift, not without.
    assert shares[1.0] > 0.1 and shares[1.0] > 4 * shares[0.0], shares
    with pytest.raises(ValueError, match="drift must be a finite number >= 0"):
        simulate.simulate(str(tmp_path / "bad"), **kw, drift=-1.0)


def test_the_default_shop_is_unchanged_by_the_options_added_since(tmp_path):
    """A digest of a small default shop's tables (events, items, oracle), recorded with the
    code before `drift` existed (commit ae1e917): an option that is off must not move a
    single draw of the default world. The oracle's probabilities go through numpy's exp and
    log, whose SIMD kernels differ in the last bit between CPUs (AVX-512 or not), so its
    floats are digested at 10 significant digits; the draws themselves are exact. (This
    digest was taken on 2026-12-08 from the world whose exact digest is ae1e917's: equal
    with numpy's AVX-512 kernels off, `NPY_DISABLE_CPU_FEATURES=X86_V4`, and the same with
    them on and with AVX2 off.)"""
    import hashlib

    simulate.simulate(str(tmp_path / "shop"), num_users=120, num_items=200, num_brands=10,
                      days=4, seed=11, oracle_replays=2, demand_replays=1)
    digest = hashlib.sha256()
    for name in ("events", "items", "oracle"):
        table = pq.read_table(str(tmp_path / "shop" / f"{name}.parquet")).to_pydict()
        if name == "oracle":
            table = {k: [float(f"{v:.10g}") if isinstance(v, float) else v for v in col]
                     for k, col in table.items()}
        digest.update(json.dumps(table, sort_keys=True, default=str).encode())
    assert digest.hexdigest() == (
        "1d7e319742286dc9881016eaec284f3bf5f28fb05c83ffd97cdee5425f008d45")