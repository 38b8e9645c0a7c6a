"""Recommendation: requests replayed from a log, the retriever, ranking metrics, the cascade."""

import csv
import json
import os

import numpy as np
import pytest

import fixtures
import helpers
from zoo.data import contract, labels, requests


@pytest.fixture(scope="module")
def hand_tables(tmp_path_factory):
    folder = fixtures.write_csv(str(tmp_path_factory.mktemp("hand")))
    return contract.read_contract(folder)


def test_session_requests_open_each_session_with_its_first_query(hand_tables):
    reqs = requests.session_requests(hand_tables, start=0)
    assert list(reqs.session_id) == ["s1", "s3", "s2", "s4", "s5"]
    assert list(reqs.user_id) == ["u1", "u2", "u1", "u2", "u1"]
    assert list(reqs.query) == ["running shoes", "", "", "", ""]  # only s1 opens with a search
    t0, day = fixtures.T0, fixtures.DAY
    assert list(reqs.timestamp) == [t0, t0 + 15, t0 + day, t0 + 7 * day + 11, t0 + 9 * day]
    code = {i[0]: n for n, i in enumerate(fixtures.ITEMS)}
    names = {v: k for k, v in code.items()}
    assert [sorted(names[c] for c in x) for x in reqs.clicked] == [["A", "B"], [], ["B"], [], []]
    assert [sorted(names[c] for c in x) for x in reqs.purchased] == [
        ["A"], ["A"], ["D"], ["A"], ["E"]]
    # A start cuts the sessions that opened before it.
    later = requests.session_requests(hand_tables, start=t0 + day)
    assert list(later.session_id) == ["s2", "s4", "s5"]
    assert list(requests.session_requests(hand_tables, 0, t0 + day).session_id) == ["s1", "s3"]


def test_candidate_features_see_only_events_strictly_before_the_request(hand_tables):
    cfg = labels.LabelConfig(history_length=6, eval_fraction=0.0)
    reqs = requests.session_requests(hand_tables, start=0)
    code = {i[0]: n for n, i in enumerate(fixtures.ITEMS)}
    cands = np.array([[code["A"], code["C"]]] * len(reqs))
    f = requests.candidate_features(hand_tables, reqs, cands, cfg)
    assert f["item_id"].tolist() == ["A", "C"] * len(reqs)
    # Request s1 (u1 at T0): nothing before it.
    assert f["hist_item_id"][0].tolist() == [""] * 6
    assert f["user_impressions"][0] == 0 and f["session_events"][0] == 0
    assert f["query"][0] == "running shoes"
    # Request s2 (u1 at T0 + 1 day): s1's click of B, purchase / cart / click of A.
    r = 2 * 2
    assert f["hist_item_id"][r][:4].tolist() == ["B", "A", "A", "A"]
    assert f["hist_event"][r][:4].tolist() == ["click", "purchase", "cart", "click"]
    assert f["user_item_purchases"][r] == 1 and f["user_item_clicks"][r] == 1  # on A
    assert f["user_item_purchases"][r + 1] == 0  # on C
    assert f["session_events"][r] == 0  # s2's own events come at or after the request
    assert f["user_impressions"][r] == 3  # e2, e3, e7: the request rows of s1 do not count
    assert f["item_clicks_7d"][r] == 1  # A clicked once (e4)
    # Request s4 (u2 at T0 + 7 days + 11 s): u2's one impression (e11) and its purchase of A.
    r = 3 * 2
    assert f["user_impressions"][r] == 1
    assert f["user_item_purchases"][r] == 1
    with pytest.raises(ValueError, match="candidates"):
        requests.candidate_features(hand_tables, reqs, np.array([[99]] * len(reqs)), cfg)


def test_ranking_metrics_match_a_brute_force_loop():
    from trainers.core import ranking_metrics

    rng = np.random.default_rng(0)
    recommended = np.stack([rng.permutation(30)[:20] for _ in range(200)])
    relevant = [rng.choice(30, size=rng.integers(0, 5), replace=False) for _ in range(200)]
    got = ranking_metrics.ranking_metrics(recommended, relevant)
    want = {}
    used = [(rec, set(rel.tolist())) for rec, rel in zip(recommended, relevant) if len(rel)]
    for k in (5, 10, 20):
        recall, ndcg, hit = [], [], []
        for rec, rel in used:
            top = rec[:k].tolist()
            hits = [i for i, x in enumerate(top) if x in rel]
            recall.append(len(hits) / len(rel))
            dcg = sum(1 / np.log2(i + 2) for i in hits)
            idcg = sum(1 / np.log2(i + 2) for i in range(min(len(rel), k)))
            ndcg.append(dcg / idcg)
            hit.append(float(bool(hits)))
        want.update({f"recall@{k}": np.mean(recall), f"ndcg@{k}": np.mean(ndcg),
                     f"hit@{k}": np.mean(hit)})
    want["mrr"] = np.mean([next((1 / (i + 1) for i, x in enumerate(rec.tolist()) if x in rel),
                                0.0) for rec, rel in used])
    assert got["requests"] == len(used)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # A perfect list scores 1 everywhere.
    perfect = ranking_metrics.ranking_metrics(np.array([[3, 1, 2, 0, 4]]), [np.array([3, 1])])
    assert perfect["recall@5"] == perfect["ndcg@5"] == perfect["mrr"] == 1.0


def test_in_batch_loss_is_the_corrected_softmax_without_accidental_hits():
    import keras
    import zoo
    from zoo.models.ranker import vocabulary as vocab_lib

    config = zoo.get_config("two_tower", "tiny")
    model = zoo.get("two_tower", "tiny", vocabulary=vocab_lib.placeholder_vocabulary(config))
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 3)).astype("float32")
    v = rng.normal(size=(4, 3)).astype("float32")
    p = np.array([0.1, 0.2, 0.3, 0.1], "float32")
    items = np.array([7, 8, 7, 9])  # rows 0 and 2 clicked the same item
    got = keras.ops.convert_to_numpy(model.per_example_losses(
        {"item_index": items, "weight": np.array([1, 1, 2, 1], "float32")},
        {"query_embedding": q, "item_embedding": v, "sampling_probability": p})["retrieval"])
    logits = q @ v.T / model.temperature - np.log(p + 1e-7)[None, :]
    for i in range(4):
        for j in range(4):
            if i != j and items[i] == items[j]:
                logits[i, j] = -np.inf
    logits -= logits.max(1, keepdims=True)
    want = -(np.diag(logits) - np.log(np.exp(logits).sum(1))) * np.array([1, 1, 2, 1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def retriever_dir(shop, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("retriever") / "two_tower")
    data, tfds_dir = shop
    helpers.run([helpers.sys.executable, "-m", "trainers.multitask", "--data_dir", data,
                 "--tfds_dir", tfds_dir, "--model_dir", model_dir, "--model", "two_tower",
                 "--preset", "tiny", "--batch_size", "64", "--history_length", "16",
                 "--demand_horizon_days", "1", "--steps", "60", "--learning_rate", "3e-3"])
    return model_dir


def test_two_tower_trains_retrieves_and_reloads(retriever_dir, shop):
    import zoo
    from trainers.core import retrieval_task

    with open(os.path.join(retriever_dir, "metrics.json")) as f:
        metrics = json.load(f)["metrics"]
    n = metrics["catalogue_size"]
    assert n == 400 and metrics["eval_positives"] > 100
    # Far above chance (K / catalogue) over the whole catalogue.
    assert metrics["recall@50"] > 2.0 * 50 / n, metrics
    assert 0 < metrics["mrr"] <= 1
    model = zoo.load_model(os.path.join(retriever_dir, "model.keras"))
    tables = contract.read_contract(shop[0])
    cat = requests.catalogue(tables)
    a = retrieval_task.catalogue_embeddings(model, cat)
    b = retrieval_task.catalogue_embeddings(model, cat, batch_size=64)
    assert a.shape == (n, model.backbone.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # The logQ table came from the training clicks and travelled in the .keras file.
    table = np.asarray(model.backbone.sampling.table)
    assert table.sum() == pytest.approx(1.0, abs=1e-3) and table.max() > 2.0 / len(table)


def test_recommend_cascade_writes_lists_and_metrics(retriever_dir, trained, shop, tmp_path):
    from trainers import recommend

    ranker_dir = trained[0].model_dir
    out = str(tmp_path / "recs.csv")
    proc = helpers.run([helpers.sys.executable, "-m", "trainers.recommend",
                        "--retrieval_dir", retriever_dir, "--model_dir", ranker_dir,
                        "--data_dir", shop[0], "--k", "10", "--candidates", "40",
                        "--max_requests", "60", "--output", out])
    assert "recall@20" in proc.stdout and "covisitation" in proc.stdout
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["user_id", "session_id", "rank", "item_id", "score"]
    assert len(rows) == 60 * 10
    by_request = {}
    for r in rows:
        by_request.setdefault((r["user_id"], r["session_id"]), []).append(r)
    assert len(by_request) == 60
    for recs in by_request.values():
        assert [int(r["rank"]) for r in recs] == list(range(1, 11))
        scores = [float(r["score"]) for r in recs]
        assert scores == sorted(scores, reverse=True)
        assert len({r["item_id"] for r in recs}) == 10
    with open(recommend.metrics_path(out)) as f:
        result = json.load(f)
    assert set(result["metrics"]) == {"retrieval", "cascade", "popularity_7d", "user_bought",
                                      "covisitation"}
    for lists in result["metrics"].values():
        for relevance in ("clicked", "purchased"):
            m = lists[relevance]
            assert m["requests"] > 0
            assert 0 <= m["recall@5"] <= m["recall@10"] <= m["recall@20"] <= 1
            assert 0 <= m["ndcg@10"] <= 1 and 0 <= m["mrr"] <= 1


def test_recommend_filter_never_shows_recent_purchases(retriever_dir, shop, tmp_path):
    from trainers import recommend
    from trainers.core import recommend_lib

    out = str(tmp_path / "recs.csv")
    options = recommend_lib.Options(k=10, candidates=20, repeat="filter", repeat_days=30)
    result = recommend.run(retriever_dir, None, shop[0], output=out, options=options,
                           max_requests=80, verbose=False)
    assert "cascade" not in result["metrics"] and result["objective"] == "retrieval"
    tables = contract.read_contract(shop[0])
    cut = contract.split_time(tables.events["timestamp"], helpers.LABEL_CFG.eval_fraction)
    reqs = requests.session_requests(tables, cut).take(np.arange(80))
    history = recommend_lib.History(tables)
    recent = recommend_lib.recent_purchases(history, reqs, 30)
    assert sum(len(r) for r in recent) > 0  # the check below is not vacuous
    ids = np.asarray(tables.items["item_id"].to_numpy(zero_copy_only=False), object)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    shown = {}
    for r in rows:
        shown.setdefault((r["user_id"], r["session_id"]), set()).add(r["item_id"])
    for u, s, bought in zip(reqs.user_id, reqs.session_id, recent):
        assert not shown[(u, s)] & set(ids[bought].tolist())


def test_recommend_boost_keeps_recent_purchases_among_ranked_candidates(
        retriever_dir, trained, shop, tmp_path):
    from trainers import recommend
    from trainers.core import recommend_lib

    out = str(tmp_path / "recs.csv")
    options = recommend_lib.Options(k=10, candidates=15, repeat="boost", repeat_days=30)
    recommend.run(retriever_dir, trained[0].model_dir, shop[0], output=out, options=options,
                  max_requests=40, verbose=False)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    scores = np.array([float(r["score"]) for r in rows]).reshape(40, 10)
    assert np.isfinite(scores).all()  # a boosted item is ranked on its merits
    assert (np.diff(scores, axis=1) <= 0).all()


def test_recommend_reasons_name_the_users_own_earlier_events(retriever_dir, trained, shop,
                                                            tmp_path):
    """--explain_steps: every item carries up to two reasons, each an event of this user
    before the request, as the ranker read it."""
    import re
    from trainers import recommend
    from trainers.core import recommend_lib

    out = str(tmp_path / "recs.csv")
    options = recommend_lib.Options(k=5, candidates=15, explain_steps=8)
    result = recommend.run(retriever_dir, trained[0].model_dir, shop[0], output=out,
                           options=options, max_requests=30, verbose=False)
    assert result["explain_steps"] == 8 and result["explain_seconds"] > 0
    tables = contract.read_contract(shop[0])
    ev = tables.events
    times = {}
    for u, i, e, t in zip(*(np.asarray(ev[c]) for c in ("user_id", "item_id", "event",
                                                        "timestamp"))):
        times.setdefault((u, i, e), []).append(int(t))
    cut = contract.split_time(ev["timestamp"], helpers.LABEL_CFG.eval_fraction)
    reqs = requests.session_requests(tables, cut)
    at = {(u, s): int(t) for u, s, t in zip(reqs.user_id[:30], reqs.session_id[:30],
                                            reqs.timestamp[:30])}
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-1] == "because" and len(rows) == 30 * 5
    named = 0
    for r in rows:
        t = at[(r["user_id"], r["session_id"])]
        found = re.findall(r"(click|cart|purchase) of (\S+) \(", r["because"])
        assert len(found) <= 2
        for event, item in found:
            assert any(x < t for x in times[(r["user_id"], item, event)]), (r, event, item)
        named += bool(found)
    assert named > 0.5 * len(rows), named


def test_recommend_rejects_bad_flags_before_work(retriever_dir, tmp_path):
    from trainers import recommend
    from trainers.core import recommend_lib

    for options, match in ((recommend_lib.Options(k=0), "--k"),
                           (recommend_lib.Options(k=10, candidates=5), "--candidates"),
                           (recommend_lib.Options(objective="revenue"), "--objective"),
                           (recommend_lib.Options(ranker_history=-1), "--ranker_history"),
                           (recommend_lib.Options(explain_steps=-1), "--explain_steps"),
                           (recommend_lib.Options(explain_steps=8), "needs --model_dir")):
        with pytest.raises(ValueError, match=match):
            recommend.run(retriever_dir, output=str(tmp_path / "r.csv"), options=options)
    proc = helpers.subprocess.run(
        [helpers.sys.executable, "-m", "trainers.recommend", "--retrieval_dir",
         str(tmp_path / "nothing"), "--output", str(tmp_path / "r.csv")],
        capture_output=True, text=True, env=helpers.subprocess_env(), cwd=helpers.REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_config.json" in proc.stderr or "model.keras" in proc.stderr
    assert not os.path.exists(tmp_path / "r.csv")


def _planted_log(folder, num_users=80, num_categories=4, items_per_category=40, days=14,
                 seed=0):
    """Users who click only items of their favourite category (user index mod 4)."""
    rng = np.random.default_rng(seed)
    items, by_cat = [], {}
    for c in range(num_categories):
        for i in range(items_per_category):
            item = f"c{c}i{i}"
            items.append((item, f"thing {item}", f"cat{c}", f"b{rng.integers(8)}",
                          float(rng.integers(5, 100))))
            by_cat.setdefault(c, []).append(item)
    all_items = [it[0] for it in items]
    events, n = [], 0
    for u in range(num_users):
        fav = u % num_categories
        for s in range(days):
            t = fixtures.T0 + s * fixtures.DAY + int(rng.integers(0, 40000))
            shown = list(rng.choice(all_items, 6, replace=False)) + list(
                rng.choice(by_cat[fav], 2, replace=False))
            for pos, item in enumerate(shown):
                n += 1
                events.append((f"e{n}", f"u{u}", f"u{u}s{s}", t + pos, "impression", "",
                               item, pos, ""))
            for k, item in enumerate(i for i in shown if i in by_cat[fav]):
                n += 1
                events.append((f"e{n}", f"u{u}", f"u{u}s{s}", t + 20 + k, "click", "", item,
                               "", ""))
    return fixtures.write_csv(folder, events=events, items=items)


def test_retriever_finds_a_planted_favourite_category(tmp_path):
    """Each user clicks only one category: after training, the top 20 of the whole catalogue
    for the user's next session is mostly that category (chance: a quarter)."""
    from trainers.core import recommend_lib, rundir

    data = _planted_log(str(tmp_path / "planted"))
    model_dir = str(tmp_path / "retriever")
    helpers.run([helpers.sys.executable, "-m", "trainers.multitask", "--data_dir", data,
                 "--tfds_dir", str(tmp_path / "tfds"), "--model_dir", model_dir,
                 "--model", "two_tower", "--preset", "tiny", "--batch_size", "64",
                 "--history_length", "16", "--demand_horizon_days", "1", "--steps", "200",
                 "--learning_rate", "3e-3"])
    model, label_config = rundir.load_trained(model_dir)
    tables = contract.read_contract(data)
    cut = contract.split_time(tables.events["timestamp"], label_config.eval_fraction)
    reqs = requests.session_requests(tables, cut)
    assert len(reqs) > 50
    cand, _ = recommend_lib.retrieve(model, tables, reqs, label_config,
                                     recommend_lib.Options(k=20, candidates=20))
    categories = np.asarray(tables.items["category"].to_numpy(zero_copy_only=False), object)
    favourite = np.array([f"cat{int(u[1:]) % 4}" for u in reqs.user_id], object)
    share = (categories[cand] == favourite[:, None]).mean()
    print(f"planted favourite share of the top 20: {share:.3f}")
    assert share > 0.8, share


def _serving_requests(tables, snap, n=8):
    """n users with the longest histories, at the snapshot's time: half continue their last
    session (the session features and its impressions count), half open a new one with a
    query of the log."""
    import dataclasses

    ev = tables.events
    users = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False), object)
    uniq, counts = np.unique(users, return_counts=True)
    chosen = uniq[np.argsort(-counts, kind="stable")[:n]]
    last = requests.session_requests(tables, int(ev["timestamp"].min()))
    last_session = {u: s for u, s in zip(last.user_id, last.session_id)}
    queries = [q for q in last.query if q][:n] or [""]
    reqs = requests.Requests(
        user_id=chosen.astype(object),
        session_id=np.array([last_session[u] if i % 2 else "new-session"
                             for i, u in enumerate(chosen)], object),
        timestamp=np.full(len(chosen), snap.time, np.int64),
        query=np.array(["" if i % 2 else queries[i % len(queries)]
                        for i in range(len(chosen))], object),
        clicked=[np.zeros(0, np.int64)] * len(chosen), purchased=[np.zeros(0, np.int64)] * len(chosen))
    return dataclasses.replace(reqs)


def test_serving_features_in_the_graph_equal_the_offline_ones(retriever_dir, shop):
    """Every context feature the `recommend` graph assembles (request features sent, item
    statistics from the snapshot, pair features computed from the history) equals the
    offline feature of the same (request, candidate) pair."""
    import tensorflow as tf
    from export import recommend_signature as rs
    from trainers.core import rundir
    from zoo.data import serving_features as sf

    tables = contract.read_contract(shop[0])
    retriever, _ = rundir.load_trained(retriever_dir)
    snap = sf.snapshot(tables)
    reqs = _serving_requests(tables, snap)
    cat_items = requests.catalogue(tables)
    n = len(cat_items["item_id"])
    cat = rs.Catalogue(cat_items, np.zeros((n, 4), np.float32), snap)
    rng = np.random.default_rng(0)
    cands = np.stack([rng.choice(n, 30, replace=False) for _ in range(len(reqs))])
    # Candidates the users did touch, so the pair counts are not all zero.
    hist = sf.request_inputs(tables, reqs, history_limit=400)
    assert hist["hist_item_id"].shape[1] < 400  # every user's whole history was sent
    index = {i: c for c, i in enumerate(cat_items["item_id"])}
    for r in range(len(reqs)):
        touched = [index[i] for i in hist["hist_item_id"][r] if i][:10]
        cands[r, :len(touched)] = touched
    cfg = labels.LabelConfig(history_length=16)
    want = requests.candidate_features(tables, reqs, cands, cfg)
    cand = {"item_id": tf.constant(np.asarray(cat_items["item_id"], object)[cands].astype(str)),
            "item_category": tf.constant(np.asarray(cat_items["item_category"], object)[cands]
                                         .astype(str)),
            "item_brand": tf.constant(np.asarray(cat_items["item_brand"], object)[cands]
                                      .astype(str)),
            "item_price": tf.constant(cat_items["item_price"][cands])}
    t = rs.to_tensors(hist)
    got = rs.pair_features({k: t[k] for k in sf.HISTORY_INPUTS}, cand, t["session_category"],
                           t["query"], cat)
    checked = 0
    for name in sf.PAIR_FEATURES:
        g = np.nan_to_num(got[name].numpy(), nan=-1.0).ravel()
        np.testing.assert_allclose(g, want[name], rtol=1e-5, atol=1e-4, err_msg=name)
        checked += int((want[name] > 0).sum())
    for name in sf.ITEM_FEATURES + sf.ITEM_RAW:
        np.testing.assert_allclose(snap.item[name][cands].ravel(), want[name], rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    for name in sf.REQUEST_FEATURES:
        np.testing.assert_allclose(np.repeat(hist[name], 30), want[name], rtol=1e-6,
                                   err_msg=name)
    assert checked > 100  # the comparison saw real (non-zero) values
    for name in ("user_item_clicks", "session_category_share", "query_category_impressions",
                 "price_vs_user_purchases", "relative_price_vs_user_category",
                 "relative_price_sd_user"):
        assert (want[name] > 0).any(), name


# ranker_history 8 of the tiny ranker's 16: the graph and the offline cascade must cut the
# history the same way.
RECOMMEND_OPTIONS = dict(k=10, candidates=40, objective="purchase", retrieval_weight=1.0,
                         ranker_history=8, explain_steps=8)


@pytest.fixture(scope="module")
def recommend_export(retriever_dir, trained, shop, tmp_path_factory):
    """(export base, version path) of the tiny ranker exported with the retriever."""
    from export import saved_model
    from trainers.core import recommend_lib

    base = str(tmp_path_factory.mktemp("recommend_exports"))
    path = saved_model.export(trained[0].model_dir, base, "rec", retrieval_dir=retriever_dir,
                              recommend_options=recommend_lib.Options(**RECOMMEND_OPTIONS),
                              data_dir=shop[0])
    return base, path


def test_recommend_signature_equals_the_offline_cascade(recommend_export, retriever_dir,
                                                         trained, shop):
    """The exported `recommend` signature, reloaded, answers what `trainers.recommend`'s
    cascade answers for the same requests (retrieval, ranking, blend), and honours
    exclusions."""
    import tensorflow as tf
    from export import recommend_signature as rs, saved_model
    from trainers.core import recommend_lib, rundir
    from zoo.data import serving_features as sf

    ranker_dir = trained[0].model_dir
    options = recommend_lib.Options(**RECOMMEND_OPTIONS)
    path = recommend_export[1]
    with open(os.path.join(path, saved_model.ASSETS_EXTRA, saved_model.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    assert manifest["recommend"]["k"] == 10 and manifest["recommend"]["catalogue_size"] == 400
    assert os.path.exists(os.path.join(path, saved_model.ASSETS_EXTRA,
                                       saved_model.SAMPLE_RECOMMEND_FILE))

    tables = contract.read_contract(shop[0])
    snap = sf.snapshot(tables)
    reqs = _serving_requests(tables, snap)
    retriever, retriever_labels = rundir.load_trained(retriever_dir)
    ranker, ranker_labels = rundir.load_trained(ranker_dir)
    cand, cand_scores = recommend_lib.retrieve(retriever, tables, reqs, retriever_labels,
                                               options)
    scores = recommend_lib.rank(ranker, tables, reqs, cand, ranker_labels, options)
    idx, want_scores = recommend_lib._top(
        recommend_lib.blend(scores, cand_scores, options.retrieval_weight), options.k)
    item_ids = np.asarray(tables.items["item_id"].to_numpy(zero_copy_only=False), object)
    want_items = item_ids[np.take_along_axis(cand, idx, 1)]

    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[rs.SIGNATURE]
    inputs = sf.request_inputs(tables, reqs, history_limit=saved_model.RECOMMEND_HISTORY_LIMIT)
    out = fn(**rs.to_tensors(inputs))
    got_items = out["item_id"].numpy().astype(str)
    np.testing.assert_allclose(out["score"].numpy(), want_scores, rtol=1e-4, atol=1e-4)
    assert (got_items == want_items.astype(str)).mean() > 0.95  # ties may swap neighbours
    assert [set(g) for g in got_items] == [set(w) for w in want_items.astype(str)]
    # Each item's reasons, in the graph, are the offline ones (`trainers.recommend
    # --explain_steps`) for the same list.
    offline = recommend_lib.explain_lists(ranker, tables, reqs, np.take_along_axis(cand, idx, 1),
                                          ranker_labels, options)
    compared = reasons = 0
    for r in range(len(reqs)):
        for j in range(options.k):
            if got_items[r, j] != want_items[r, j]:
                continue
            want = offline[r][j]
            ids = [x.decode() for x in out["because_item_id"].numpy()[r, j] if x]
            events = [x.decode() for x in out["because_event"].numpy()[r, j] if x]
            assert ids == [w["item_id"] for w in want] and events == [
                w["event"] for w in want], (r, j, ids, want)
            np.testing.assert_allclose(out["because_weight"].numpy()[r, j, :len(want)],
                                       [w["attribution"] for w in want], rtol=2e-3, atol=1e-6)
            np.testing.assert_allclose(out["because_seconds_ago"].numpy()[r, j, :len(want)],
                                       [w["seconds_ago"] for w in want])
            compared += 1
            reasons += len(want)
    assert compared > 0.9 * len(reqs) * options.k and reasons > compared, (compared, reasons)

    # Excluded items never come back; the rest of the list moves up.
    exclude = np.full((len(reqs), 2), "", object)
    exclude[:, 0] = got_items[:, 0]
    exclude[0, 1] = "no-such-item"  # unknown ids are ignored
    again = fn(**rs.to_tensors({**inputs, "exclude_item_id": exclude}))
    again_items = again["item_id"].numpy().astype(str)
    for r in range(len(reqs)):
        assert got_items[r, 0] not in again_items[r]
        assert again_items[r, 0] == got_items[r, 1]
    # Fewer items left than candidates: the excluded ones that must fill the list score
    # -inf (the service drops them); every finite score is a kept item.
    keep = set(item_ids[:3].astype(str))
    most = np.array([[i for i in item_ids.astype(str) if i not in keep]] * len(reqs), object)
    few = fn(**rs.to_tensors({**inputs, "exclude_item_id": most}))
    finite = np.isfinite(few["score"].numpy())
    assert finite.sum(axis=1).tolist() == [3] * len(reqs)
    assert set(few["item_id"].numpy().astype(str)[finite]) == keep


def _http(url, body=None, method=None):
    import urllib.error
    import urllib.request

    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_recommender_service_ingests_events_and_answers_over_http(recommend_export, shop,
                                                                 tmp_path):
    """POST /events -> SQLite -> GET /recommend -> gRPC `recommend` on export.serve, end to
    end on 127.0.0.1: a new click changes the answer, a malformed event is a 400 naming the
    field and stores nothing, an unknown user is a cold start, oversized bodies are 413."""
    from export import client as client_lib, event_store, recommender, serve

    base, _ = recommend_export
    tables = contract.read_contract(shop[0])
    ev = tables.events
    user = event_store.busiest_user(tables)
    events = event_store.log_rows(tables, [user])
    assert len(events) > 20 and any("position" in e for e in events)
    t_end = int(ev["timestamp"].max()) + 1

    log = str(tmp_path / "server.log")
    proc, target = serve.launch(["--model_name", "rec", "--model_base_path",
                                 os.path.join(base, "rec")], log)
    store = event_store.SQLiteEventStore(str(tmp_path / "events.sqlite"), keep_per_user=300)
    client = client_lib.PredictionClient(target)
    service = recommender.RecommenderService(store, client, "rec", tables.items)
    server = recommender.serve(service, "127.0.0.1", 0, max_body_bytes=200_000,
                               request_timeout=5.0)
    url = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        assert _http(url + "/healthz")[0] == 200
        status, body = _http(url + "/events", events[:200])
        assert status == 200 and body["stored"] == min(200, len(events))
        n_stored = store.count()
        status, first = _http(url + f"/recommend?user_id={user}&k=5&at={t_end}")
        assert status == 200, first
        assert not first["cold_start"] and len(first["items"]) == 5
        assert {"item_id", "title", "category", "price", "score"} <= set(first["items"][0])
        scores = [i["score"] for i in first["items"]]
        assert scores == sorted(scores, reverse=True)
        # The export explains (explain_steps): each item's reasons are the user's own events.
        mine = {(e["item_id"], e["event"]) for e in events[:200]}
        because = [b for i in first["items"] for b in i["because"]]
        assert because and all((b["item_id"], b["event"]) in mine and b["weight"] > 0
                               and b["seconds_ago"] > 0 and b["title"] for b in because)

        # A new click (in a new session, on an item of another category) changes the answer.
        top_category = first["items"][0]["category"]
        other = next(i for i, c in zip(
            tables.items["item_id"].to_numpy(zero_copy_only=False),
            tables.items["category"].to_numpy(zero_copy_only=False)) if c != top_category)
        click = [{"event_id": "live-1", "user_id": user, "session_id": "live",
                  "timestamp": t_end + 5, "event": "click", "query": "", "item_id": other}]
        assert _http(url + "/events", click) == (200, {"stored": 1})
        status, second = _http(url + f"/recommend?user_id={user}&k=5&at={t_end + 10}")
        assert status == 200 and second["session_id"] == "live"
        assert ([(i["item_id"], round(i["score"], 5)) for i in second["items"]]
                != [(i["item_id"], round(i["score"], 5)) for i in first["items"]])

        # A batch with one malformed row: 400 naming the row and field, nothing stored.
        before = store.count()
        bad = [dict(click[0], event_id="live-2"), dict(click[0], event_id="live-3",
                                                       event="clik")]
        status, body = _http(url + "/events", bad)
        assert status == 400 and "row 1" in body["error"] and "'event'" in body["error"]
        assert store.count() == before == n_stored + 1
        status, body = _http(url + "/events", [dict(click[0], event_id="live-4",
                                                     item_id="no-such-item")])
        assert status == 400 and "item_id" in body["error"]
        assert _http(url + "/events", click)[0] == 400  # the same event_id again
        assert _http(url + "/events", b"{not json")[0] == 400
        assert _http(url + "/events", b"x" * 300_000)[0] == 413
        # Values JSON can carry and the store cannot: named, not a 500.
        status, body = _http(url + "/events", [dict(click[0], event_id="live-5",
                                                     timestamp=10 ** 19)])
        assert status == 400 and "'timestamp'" in body["error"] and "range" in body["error"]
        lone = json.dumps([dict(click[0], event_id="live-6")]).replace(
            '"live-6"', '"live-\\udc80"').encode()
        status, body = _http(url + "/events", lone)
        assert status == 400 and "'event_id'" in body["error"], body
        assert store.count() == before

        # A user never seen: popular items for the query, not an error.
        status, cold = _http(url + "/recommend?user_id=nobody&k=3&query=shoes")
        assert status == 200 and cold["cold_start"] and len(cold["items"]) == 3
        assert _http(url + "/recommend?user_id=nobody&k=1000")[0] == 400
        assert _http(url + "/recommend?user_id=&k=3")[0] == 400
        assert _http(url + "/recommend?user_id=u&k=abc")[0] == 400
    finally:
        server.shutdown()
        client.close()
        store.close()
        serve.terminate(proc)
