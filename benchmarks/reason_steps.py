"""How many integrated-gradients steps the recommender's reasons need: the two reasons of
each recommended item at a few step counts against a long reference run.

    python benchmarks/reason_steps.py --model_dir runs/bert_mtl_small \\
        --retrieval_dir runs/two_tower_small [--requests 40] [--k 10] [--steps 8,16,32] \\
        [--reference 128]

Requests are the eval split's first sessions; the lists are the cascade's top K
(`trainers.recommend`'s code); the reasons `recommend_lib.explain_lists`' (what both
`trainers.recommend --explain_steps` and the exported signature answer).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--retrieval_dir", required=True)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--steps", default="8,16,32")
    p.add_argument("--reference", type=int, default=128)
    args = p.parse_args()

    from trainers.core import recommend_lib, rundir
    from zoo.data import contract, prepare as prepare_lib, requests as req_lib

    ranker, ranker_labels = rundir.load_trained(args.model_dir)
    retriever, retriever_labels = rundir.load_trained(args.retrieval_dir)
    data_dir = rundir.train_config_of(args.model_dir).get("data_dir")
    tables = contract.read_contract(prepare_lib.resolve_contract_dir(data_dir))
    cut = contract.split_time(tables.events["timestamp"], ranker_labels.eval_fraction)
    reqs = req_lib.session_requests(tables, cut)
    reqs = reqs.take(np.arange(min(args.requests, len(reqs))))
    options = recommend_lib.Options(k=args.k, candidates=args.candidates)
    cand, cand_scores = recommend_lib.retrieve(retriever, tables, reqs, retriever_labels,
                                               options)
    scores = recommend_lib.blend(recommend_lib.rank(ranker, tables, reqs, cand,
                                                    ranker_labels, options),
                                 cand_scores, options.retrieval_weight)
    idx, _ = recommend_lib._top(scores, args.k)
    items = np.take_along_axis(cand, idx, 1)
    found = {}
    for steps in [int(s) for s in args.steps.split(",")] + [args.reference]:
        t = time.time()
        found[steps] = recommend_lib.explain_lists(
            ranker, tables, reqs, items, ranker_labels,
            recommend_lib.Options(k=args.k, candidates=args.candidates, explain_steps=steps))
        print(f"{steps:>4} steps: {time.time() - t:6.1f} s for {items.size} items", flush=True)

    def positions(reasons):
        return [r["position"] for r in reasons]

    ref = [positions(x) for row in found[args.reference] for x in row]
    print(f"items with a reason: {np.mean([len(r) > 0 for r in ref]):.3f}")
    for steps, lists in found.items():
        if steps == args.reference:
            continue
        got = [positions(x) for row in lists for x in row]
        both = np.mean([a == b for a, b in zip(got, ref)])
        first = np.mean([a[:1] == b[:1] for a, b in zip(got, ref)])
        print(f"{steps:>4} steps: same two reasons as {args.reference} steps {both:.3f}, "
              f"same first {first:.3f}")


if __name__ == "__main__":
    main()
