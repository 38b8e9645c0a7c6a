"""`python -m trainers.recommend`: the top-K items for each session of a log, and how good
they were.

    python -m trainers.recommend --retrieval_dir RETRIEVER [--model_dir RANKER] \
        [--data_dir D] [--split eval] [--k 20] [--candidates 50] \
        [--objective purchase] [--repeat_purchases keep] [--explain_steps 32] \
        --output recs.csv

One request per (user_id, session_id) of the split, at the session's first event, with
that session's first query when it opens with a search; features from the events strictly
before it (`zoo.data.requests`). The retriever (`--model two_tower`) takes the top
--candidates of the whole catalogue, the ranker (any multi-task model_dir) re-ranks them by
--objective, and the top --k are written to --output (user_id, session_id, rank, item_id,
score; with --explain_steps, `because`: the two history events that raise the item's
objective most beyond the list's other items, by integrated gradients, e.g. "purchase of
i12 (coffee makers) 2.1 days before"). Beside it, `<output stem>_metrics.json`: recall / NDCG / hit-rate at 5, 10, 20 and
MRR with the session's clicked items as relevant, then its purchased items, for the
cascade, the retriever alone and the baselines of `trainers.core.recommend_lib`, all on
the same requests.
"""

from __future__ import annotations

import os

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from zoo.data import contract  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    from trainers.core.recommend_lib import Options

    flags.DEFINE_string("retrieval_dir", None, "model_dir of a two_tower run (required).")
    flags.DEFINE_string("model_dir", None, "model_dir of a multi-task run that re-ranks the "
                        "candidates (absent: the retriever's order).")
    flags.DEFINE_string("data_dir", None, "Contract folder (default: the retriever's data).")
    flags.DEFINE_enum("split", "eval", ["eval", "train"], "Sessions opening in this split.")
    flags.DEFINE_integer("k", Options.k, "Items per request.")
    flags.DEFINE_integer("candidates", Options.candidates, "Items retrieved per request "
                         "for the ranker.")
    flags.DEFINE_string("objective", Options.objective, "click, purchase or gmv "
                        "(p(purchase) x price): the ranker's order.")
    flags.DEFINE_string("repeat_purchases", Options.repeat, "Items the user bought in the last "
                        "--repeat_days: keep (as retrieved), filter (never shown) or boost "
                        "(always among the candidates the ranker scores; without a ranker, "
                        "listed first).")
    flags.DEFINE_float("repeat_days", Options.repeat_days, "Window of --repeat_purchases.")
    flags.DEFINE_integer("ranker_history", Options.ranker_history, "History events the ranker "
                         "is given per candidate (0: as many as its preprocessor reads, "
                         "max_history); its cost grows with them.")
    flags.DEFINE_float("retrieval_weight", Options.retrieval_weight, "Cascade score = log(ranker's objective) + "
                       "this x the retriever's logit (0: the ranker's order alone).")
    flags.DEFINE_integer("explain_steps", Options.explain_steps, "With --model_dir (a bert_mtl "
                         "ranker): each item's two reasons, integrated gradients with this "
                         "many steps (0: none; the cost grows with it).")
    flags.DEFINE_integer("max_requests", 0, "Use the first N requests of the split (0: all).")
    flags.DEFINE_integer("batch_size", 8192, "(request, candidate) pairs scored per batch.")
    flags.DEFINE_string("output", "recs.csv", "CSV of the recommendations.")
    flags.DEFINE_boolean("verbose", True, "Progress and the metrics table.")


def metrics_path(output: str) -> str:
    stem, _ = os.path.splitext(output)
    return stem + "_metrics.json"


def _check_output(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise ValueError(f"--output {path}: is a folder; expected a CSV file path")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"--output {path}: {folder} is not a folder")


def describe(reasons: list) -> str:
    """A list's reasons for one item, for a person: "purchase of i12 (coffee makers) 2.1
    days before; ..."."""
    def ago(seconds):
        return (f"{seconds / 86400:.1f} days" if seconds >= 86400
                else f"{seconds / 3600:.1f} hours" if seconds >= 3600
                else f"{seconds / 60:.0f} minutes")

    return "; ".join(f"{r['event']} of {r['item_id']} ({r['category']}) "
                     f"{ago(r['seconds_ago'])} before" for r in reasons)


def write_recs(path: str, reqs, items, scores, item_ids, because=None) -> int:
    from trainers.core import rundir

    columns = ["user_id", "session_id", "rank", "item_id", "score"]
    return rundir.write_csv(path, columns + (["because"] if because is not None else []), (
        [reqs.user_id[r], reqs.session_id[r], j + 1, item_ids[items[r, j]],
         repr(float(scores[r, j]))] + ([describe(because[r][j])] if because is not None
                                       else [])
        for r in range(len(reqs)) for j in range(items.shape[1])))


def run(retrieval_dir, model_dir=None, data_dir=None, split="eval", output="recs.csv",
        options=None, max_requests=0, verbose=True) -> dict:
    """Writes the recommendations and their metrics; returns the metrics dict."""
    import time

    import numpy as np
    from trainers.core import ranking_metrics, recommend_lib, rundir
    from trainers.core.recommend_lib import Options
    from zoo.data import prepare as prepare_lib, requests as req_lib

    options = options or Options()
    options.check()
    _check_output(output)
    if max_requests < 0:
        raise ValueError(f"--max_requests must be >= 0, got {max_requests}")
    retriever, label_config = rundir.load_trained(retrieval_dir)
    if not hasattr(retriever, "query_embeddings"):
        raise ValueError(f"--retrieval_dir {retrieval_dir}: not a retriever (train one with "
                         "python -m trainers.multitask --model two_tower)")
    ranker, ranker_labels = None, None
    if model_dir:
        # Each model reads the history length it was trained with.
        ranker, ranker_labels = rundir.load_trained(model_dir)
        if hasattr(ranker, "query_embeddings") or not hasattr(ranker, "preprocessor"):
            raise ValueError(f"--model_dir {model_dir}: not a multi-task ranker")
    if options.explain_steps:
        if ranker is None:
            raise ValueError("--explain_steps explains the ranker's order: it needs "
                             "--model_dir")
        from zoo.models.explain import check

        try:
            check(ranker, options.explain_output(), options.explain_steps)
        except ValueError as e:
            raise ValueError(f"--explain_steps with --model_dir {model_dir}: {e}") from None
    if data_dir is None:
        data_dir = rundir.train_config_of(retrieval_dir).get("data_dir")
    contract_dir = prepare_lib.resolve_contract_dir(data_dir)
    tables = contract.read_contract(contract_dir)
    cut = contract.split_time(tables.events["timestamp"], label_config.eval_fraction)
    reqs = (req_lib.session_requests(tables, cut) if split == "eval"
            else req_lib.session_requests(tables, int(tables.events["timestamp"].min()), cut))
    if max_requests:
        reqs = reqs.take(np.arange(min(max_requests, len(reqs))))
    if not len(reqs):
        raise ValueError(f"{contract_dir}: no session opens in the {split} split")
    item_ids = np.asarray(tables.items["item_id"].to_numpy(zero_copy_only=False), object)
    t0 = time.time()

    history = recommend_lib.History(tables)
    recent = (recommend_lib.recent_purchases(history, reqs, options.repeat_days)
              if options.repeat != "keep" else None)
    exclude = recent if options.repeat == "filter" else None
    include = recent if options.repeat == "boost" else None
    bar = _bar(len(reqs), "retrieval", verbose)
    cand, cand_scores = recommend_lib.retrieve(retriever, tables, reqs, label_config,
                                               options, exclude, include, bar)
    timing = {"retrieval_seconds": time.time() - t0}
    lists = {"retrieval": cand[:, :options.k]}
    final_items, final_scores = cand[:, :options.k], cand_scores[:, :options.k]
    if ranker is not None:
        t1 = time.time()
        bar = _bar(len(reqs), "ranking", verbose)
        scores = recommend_lib.rank(ranker, tables, reqs, cand, ranker_labels, options, bar)
        scores = recommend_lib.blend(scores, cand_scores, options.retrieval_weight)
        idx, final_scores = recommend_lib._top(scores, options.k)
        final_items = np.take_along_axis(cand, idx, 1)
        lists["cascade"] = final_items
        timing["ranking_seconds"] = time.time() - t1
    because = None
    if options.explain_steps:
        t2 = time.time()
        because = recommend_lib.explain_lists(ranker, tables, reqs, final_items,
                                              ranker_labels, options,
                                              _bar(len(reqs), "reasons", verbose))
        timing["explain_seconds"] = time.time() - t2
    base = recommend_lib.baselines(history, reqs, options.k)
    if options.repeat == "filter":
        base = {name: _without(items, recent, history, reqs, options.k)
                for name, items in base.items()}
    lists.update(base)
    write_recs(output, reqs, final_items, final_scores, item_ids, because)

    result = {"requests": len(reqs), "split": split, "contract_dir": contract_dir,
              "retrieval_dir": retrieval_dir, "model_dir": model_dir,
              "k": options.k, "candidates": options.candidates,
              "objective": options.objective if ranker is not None else "retrieval",
              "repeat_purchases": options.repeat, "repeat_days": options.repeat_days,
              "retrieval_weight": options.retrieval_weight,
              "explain_steps": options.explain_steps, **timing, "metrics": {}}
    for name, items in lists.items():
        result["metrics"][name] = {
            relevance: ranking_metrics.ranking_metrics(
                items, reqs.clicked if relevance == "clicked" else reqs.purchased)
            for relevance in ("clicked", "purchased")}
    rundir.write_json(metrics_path(output), result)
    if verbose:
        print(table(result))
        print(f"wrote {output} ({len(reqs):,} requests x {options.k}) and "
              f"{metrics_path(output)}")
    return result


def _without(items, recent, history, reqs, k):
    """A baseline's list with the recent purchases taken out (--repeat_purchases filter)."""
    import numpy as np
    from trainers.core import recommend_lib

    pop = recommend_lib.popularity_7d(history, reqs, k * 3)
    lists = [[i for i in row if i not in set(r.tolist())] for row, r in zip(items, recent)]
    fallback = np.array([[i for i in p if i not in set(r.tolist())][:k]
                         for p, r in zip(pop, recent)])
    return recommend_lib._fill(lists, fallback, k)


def table(result: dict) -> str:
    cols = ("recall@20", "ndcg@20", "recall@10", "ndcg@10", "hit@20", "mrr")
    lines = []
    for relevance in ("clicked", "purchased"):
        any_metrics = next(iter(result["metrics"].values()))[relevance]
        lines.append(f"\nrelevant = the session's {relevance} items "
                     f"({any_metrics.get('requests', 0):,} requests with one or more)")
        lines.append(f"{'list':<16}" + "".join(f"{c:>11}" for c in cols))
        for name, m in result["metrics"].items():
            m = m[relevance]
            lines.append(f"{name:<16}" + "".join(f"{m.get(c, float('nan')):>11.4f}"
                                                 for c in cols))
    return "\n".join(lines)


def _bar(total: int, name: str, verbose: bool):
    if not verbose:
        return None
    import keras

    bar = keras.utils.Progbar(total, unit_name="request")
    print(f"{name}:")
    done = [0]

    def update(n):
        done[0] += n
        bar.update(done[0])
    return update


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from trainers.core.recommend_lib import Options

    try:
        if not FLAGS.retrieval_dir:
            raise ValueError("--retrieval_dir is required (a python -m trainers.multitask "
                             "--model two_tower run)")
        options = Options(k=FLAGS.k, candidates=FLAGS.candidates, objective=FLAGS.objective,
                          repeat=FLAGS.repeat_purchases, repeat_days=FLAGS.repeat_days,
                          retrieval_weight=FLAGS.retrieval_weight,
                          ranker_history=FLAGS.ranker_history,
                          batch_size=FLAGS.batch_size, explain_steps=FLAGS.explain_steps)
        run(FLAGS.retrieval_dir, FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output,
            options, FLAGS.max_requests, FLAGS.verbose)
    except (contract.ContractError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
