"""gbdt: the log features by hand, no leakage from the future, the LightGBM yardstick run."""

import os

import numpy as np
import pyarrow as pa
import pytest

import fixtures
from helpers import LABEL_CFG
from trainers.core import config as config_lib
from zoo.data import contract
from zoo.models.gbdt import features as F

NAN = float("nan")
H = np.log(2.0) / 2


@pytest.fixture(scope="module")
def by_id(tmp_path_factory):
    folder = fixtures.write_csv(str(tmp_path_factory.mktemp("log")))
    built = F.build(contract.read_contract(folder))
    return {e: {k: built[k][i] for k in F.NAMES} for i, e in enumerate(built["event_id"])}


# Hand-computed from fixtures.EVENTS. "Before" is strictly earlier in time: e2 and e3 share
# a second, e7 and the click e17 too.
@pytest.mark.parametrize("event_id,expected", [
    ("e8", {  # u1 sees B (shoes, zoom, 20) a day later, query "shoes", new session s2
        "position": 0, "price": 20.0, "has_query": 1, "query_tokens": 1, "title_coverage": 0.0,
        "session_seconds": 0, "session_events": 0, "session_impressions": 0,
        "session_category_share": NAN,
        "user_impressions": 3, "user_clicks": 2, "user_purchases": 1, "user_ctr": 2 / 3,
        "user_item_clicks": 1, "user_item_carts": 0, "user_item_purchases": 0,
        "user_item_seconds": fixtures.DAY - 50,  # the click e17 on B
        "user_category_clicks": 2, "user_category_purchases": 1,
        "user_category_seconds": fixtures.DAY - 50,
        "user_brand_clicks": 1, "user_brand_purchases": 0,
        "item_impressions_1d": 1, "item_clicks_1d": 1, "item_impressions_7d": 1,
        "item_clicks_7d": 1, "item_purchases_7d": 0,
        "query_category_impressions": 0, "query_category_ctr": 0.5,  # the prior: 2 of 4
        "price_vs_user_purchases": 2.0, "price_vs_user_clicks": 20 / 15,
        # Shoes' level is the mean of log 10 and log 20: B is +h, A is -h (h = log(2) / 2).
        # Before: A clicked, carted, bought, B clicked: mean -h / 2, all of them shoes.
        "relative_price": H, "relative_price_vs_user": np.exp(1.5 * H),
        "relative_price_sd_user": H * np.sqrt(3) / 2,
        "relative_price_vs_user_category": np.exp(1.5 * H)}),
    ("e7", {  # u1 sees C (outdoor, acme, 30) at second 50 of s1, no query
        "has_query": 0, "query_tokens": 0, "title_coverage": NAN,
        "session_seconds": 50, "session_events": 6, "session_searches": 1,
        "session_impressions": 2, "session_clicks": 1, "session_category_share": 0.0,
        "user_brand_clicks": 1, "user_brand_purchases": 1, "user_item_seconds": NAN,
        "item_ctr": 1 / 3,  # no impression of C yet: the shop's rate so far, 1 of 3
        # C against outdoor's level (C 30, D 40); before: A's click, cart and purchase
        # (-h each); no outdoor event yet.
        "relative_price": np.log(30 / 40) / 2,
        "relative_price_vs_user": np.exp(np.log(30 / 40) / 2 + H),
        "relative_price_sd_user": 0.0, "relative_price_vs_user_category": NAN}),
    ("e3", {  # B at second 10, beside e2: neither sees the other
        "query_tokens": 2, "title_coverage": 0.5, "session_events": 1, "session_searches": 1,
        "session_impressions": 0, "user_impressions": 0, "item_impressions_7d": 0}),
])
def test_features_by_hand(by_id, event_id, expected):
    got = by_id[event_id]
    for name, value in expected.items():
        if np.isnan(value):
            assert np.isnan(got[name]), (name, got[name])
        else:
            assert got[name] == pytest.approx(value), (name, got[name], value)


def _cut(tables: contract.Tables, end: int) -> contract.Tables:
    keep = tables.events["timestamp"] <= end
    events = {k: (v.filter(pa.array(keep)) if isinstance(v, (pa.Array, pa.ChunkedArray))
                  else v[keep]) for k, v in tables.events.items()}
    return contract.Tables(events=events, items=tables.items, events_path="cut",
                           items_path=tables.items_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_of_a_log_cut_at_a_random_impression_are_the_full_builds(shop, seed):
    tables = contract.read_contract(shop[0])
    full = F.build(tables)
    rng = np.random.default_rng(seed)
    end = int(rng.choice(full["timestamp"][len(full["timestamp"]) // 5:]))
    cut = F.build(_cut(tables, end))
    assert 0 < len(cut["row"]) < len(full["row"])
    index = {e: i for i, e in enumerate(full["event_id"])}
    at = np.array([index[e] for e in cut["event_id"]])
    for name in F.NAMES:
        if name.startswith(("price_vs_", "relative_price")):  # means of prices: cumulative sums round apart
            np.testing.assert_allclose(cut[name], full[name][at], rtol=1e-9, atol=1e-9,
                                       err_msg=name)
        else:  # counts, times and codes: exactly
            np.testing.assert_array_equal(cut[name], full[name][at], err_msg=name)


def test_gbdt_trains_on_the_training_split_only_and_its_model_reloads(shop, tmp_path,
                                                                      monkeypatch):
    from trainers.core import train_lib
    from zoo.models.gbdt import model as model_lib

    seen = {}
    fit = model_lib.GbdtModel.fit

    def spy(self, x, labels, timestamps, log=print):
        seen["max_time"] = int(np.max(timestamps))
        seen["rows"] = len(x)
        return fit(self, x, labels, timestamps, log=log)

    monkeypatch.setattr(model_lib.GbdtModel, "fit", spy)
    data, tfds_dir = shop
    config = config_lib.TrainConfig(data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG,
                                    model="gbdt", preset="tiny",
                                    model_dir=str(tmp_path / "gbdt"), verbose=False)
    result = train_lib.train(config)
    from zoo.data import prepare
    meta = prepare.prepare(data, tfds_dir, LABEL_CFG).info.metadata
    assert seen["max_time"] < meta["eval_start_timestamp"]  # no eval row reaches the fit
    metrics = result["metrics"]
    assert metrics["click/auc"] > 0.6 and metrics["purchase/auc"] > 0.6
    assert 0.0 < metrics["price_range/accuracy"] <= 1.0
    assert result["oracle"]["click/auc"] > metrics["click/auc"] - 0.02
    for name in ("metrics.json", "train_config.json", "run_spec.json", "flags.txt"):
        assert os.path.exists(os.path.join(config.model_dir, name)), name
    # The saved boosters predict what the trained ones did.
    tables = contract.read_contract(data)
    x = F.matrix(F.build(tables))[:50]
    reloaded = model_lib.GbdtModel.load(os.path.join(config.model_dir, "gbdt"))
    assert set(reloaded.rounds) == {"click", "purchase", "price_range", "demand"}
    preds = reloaded.predict(x)
    assert preds["price_range"].shape == (50, LABEL_CFG.num_price_ranges)
    np.testing.assert_allclose(preds["price_range"].sum(axis=1), 1.0, rtol=1e-6)
    assert np.all((preds["click"] > 0) & (preds["click"] < 1)) and np.all(preds["demand"] > 0)


def test_gbdt_refuses_what_does_not_apply(shop, tmp_path):
    from trainers.core import train_lib

    data, tfds_dir = shop
    base = config_lib.TrainConfig(data_dir=data, tfds_dir=tfds_dir, label_config=LABEL_CFG,
                                  model="gbdt", preset="tiny", verbose=False,
                                  model_dir=str(tmp_path / "g"))
    for kw, message in (({"export_base": str(tmp_path / "e")}, "not exported"),
                        ({"strategy": "mirrored"}, "one_device")):
        with pytest.raises(ValueError, match=message):
            train_lib.train(config_lib.dataclasses.replace(base, **kw))
    assert not os.path.exists(base.model_dir)
