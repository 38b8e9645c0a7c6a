"""The recommendation cascade replayed over a log, and the baselines it is measured against.

    retrieval (two_tower: the whole catalogue -> --candidates per request)
      -> ranking (a multi-task model scores each (request, candidate) pair with the
         features an impression at that moment would have had)
      -> the objective orders them: click, purchase, or gmv = p(purchase) x price
      -> top K

Baselines, computed on the same requests from the same log strictly before each request:
  popularity_7d   the items clicked most in the 7 days before the request
  user_bought     the user's own most-bought items (most purchases, then latest), then
                  popularity_7d for the rest of the list
  covisitation    items clicked in the same sessions as the user's last history items
                  (co-visitation counts of the sessions that ended before the first
                  request), then popularity_7d for the rest
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data import contract, requests as requests_lib
from zoo.data.contract import EVENT_INDEX, SECONDS_PER_DAY

OBJECTIVES = ("click", "purchase", "gmv")
REPEAT_MODES = ("keep", "filter", "boost")
BASELINES = ("popularity_7d", "user_bought", "covisitation")
WEEK = 7 * SECONDS_PER_DAY
# Last history items whose co-visited items the covisitation baseline sums.
COVISIT_LAST_ITEMS = 5


@dataclasses.dataclass
class Options:
    k: int = 20
    # Re-ranked per request. 50 and 200 give the same purchase recall@20 and NDCG@20 on the
    # default shop (0.330 / 0.156 against 0.332 / 0.156), and 50 keeps a served answer
    # under 100 ms at p99 (BUILD_NOTES.md, "Served").
    candidates: int = 50
    objective: str = "purchase"
    repeat: str = "keep"          # items the user bought in the last repeat_days
    repeat_days: float = 30.0
    batch_size: int = 4096
    # The cascade's final score: log(ranker's objective) + retrieval_weight x the
    # retriever's logit (0: the ranker's order alone). The ranker learned from impressions
    # the shop chose to show; the retriever from the whole catalogue (BUILD_NOTES.md).
    retrieval_weight: float = 1.0
    # History events passed to the ranker per candidate (0: as many as its preprocessor
    # reads, `max_history`: the columns beyond are dropped inside it anyway, after costing
    # their string lookups once per candidate). The context features still count the whole
    # history.
    ranker_history: int = 0
    # Integrated-gradients steps of the reasons each recommended item carries (the history
    # events that raise its objective most beyond the list's other items: `zoo.explain`);
    # 0: none. A served answer then costs about this many times the ranking of K items
    # more (BUILD_NOTES.md, "Reasons in the answers").
    explain_steps: int = 0

    def explain_output(self) -> str:
        """The ranker output the reasons explain: gmv is p(purchase) x a constant price."""
        return "click" if self.objective == "click" else "purchase"

    def ranker_events(self, ranker, history_length: int) -> int:
        """The history columns the ranker is given: what it reads, at most what it has."""
        reads = int(getattr(getattr(ranker, "preprocessor", None), "max_history",
                            history_length))
        wanted = self.ranker_history or reads
        return max(1, min(wanted, int(history_length)))

    def check(self) -> None:
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.candidates < self.k:
            raise ValueError(f"--candidates must be >= --k ({self.k}), got {self.candidates}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.repeat not in REPEAT_MODES:
            raise ValueError(f"--repeat_purchases must be one of {REPEAT_MODES}, got "
                             f"{self.repeat!r}")
        if not self.repeat_days > 0:
            raise ValueError(f"--repeat_days must be > 0, got {self.repeat_days}")
        if not self.retrieval_weight >= 0:
            raise ValueError(f"--retrieval_weight must be >= 0, got {self.retrieval_weight}")
        if self.ranker_history < 0:
            raise ValueError(f"--ranker_history must be >= 0, got {self.ranker_history}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.explain_steps < 0:
            raise ValueError(f"--explain_steps must be >= 0, got {self.explain_steps}")


def blend(objective_scores: np.ndarray, retrieval_scores: np.ndarray, weight: float):
    """log(objective) + weight x retrieval logit (the objective alone when weight is 0)."""
    if not weight:
        return objective_scores
    return np.log(np.maximum(objective_scores, 1e-12)) + weight * retrieval_scores


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k best columns per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    return idx, np.take_along_axis(scores, idx, 1)


class History:
    """The log's behaviour events for "what did this user do before t" over many requests."""

    def __init__(self, tables: contract.Tables):
        ev = tables.events
        users = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False), object)
        uniq, self.user = np.unique(users, return_inverse=True)
        self.user_index = {u: i for i, u in enumerate(uniq.tolist())}
        self.ts = ev["timestamp"].astype(np.int64)
        self.kind = ev["event_type"]
        self.item = ev["item_code"]
        self.session = requests_lib.labels_lib._codes(ev["user_id"], ev["session_id"])
        self.num_items = len(tables.items["price"])
        self._by_user = np.lexsort((np.arange(len(self.ts)), self.ts, self.user))
        self._user_start = np.searchsorted(self.user[self._by_user],
                                           np.arange(self.user.max(initial=0) + 2))

    def rows(self, user_id: str, t: int, kinds, since: float | None = None) -> np.ndarray:
        """The user's rows of the given event kinds strictly before t (oldest first)."""
        u = self.user_index.get(user_id, -1)
        if u < 0:
            return np.zeros(0, np.int64)
        block = self._by_user[self._user_start[u]:self._user_start[u + 1]]
        keep = (self.ts[block] < t) & np.isin(self.kind[block], [EVENT_INDEX[k] for k in kinds])
        if since is not None:
            keep &= self.ts[block] >= since
        return block[keep]


def recent_purchases(history: History, reqs, days: float) -> list:
    """Per request, the items the user bought in the `days` before it."""
    return [np.unique(history.item[history.rows(u, t, ("purchase",), t - days * SECONDS_PER_DAY)])
            for u, t in zip(reqs.user_id, reqs.timestamp)]


def popularity_7d(history: History, reqs, k: int) -> np.ndarray:
    clicks = np.flatnonzero(history.kind == EVENT_INDEX["click"])
    clicks = clicks[np.argsort(history.ts[clicks], kind="stable")]
    times = history.ts[clicks]
    out = np.zeros((len(reqs), k), np.int64)
    for r, t in enumerate(reqs.timestamp):
        lo, hi = np.searchsorted(times, [t - WEEK, t], side="left")
        counts = np.bincount(history.item[clicks[lo:hi]], minlength=history.num_items)
        out[r] = _top(counts[None, :].astype(np.float64) + 1e-9 * -np.arange(
            history.num_items)[None, :], k)[0][0]
    return out


def _fill(first: list, fallback: np.ndarray, k: int) -> np.ndarray:
    """Each request's own list, then its fallback's items not already in it, up to k."""
    out = np.zeros((len(first), k), np.int64)
    for r, own in enumerate(first):
        own = list(dict.fromkeys(int(i) for i in own))[:k]
        rest = [int(i) for i in fallback[r] if int(i) not in set(own)]
        out[r] = (own + rest)[:k]
    return out


def user_bought(history: History, reqs, k: int, fallback: np.ndarray) -> np.ndarray:
    lists = []
    for u, t in zip(reqs.user_id, reqs.timestamp):
        rows = history.rows(u, t, ("purchase",))
        items = history.item[rows]
        if not len(items):
            lists.append([])
            continue
        uniq, counts = np.unique(items, return_counts=True)
        last = np.array([rows[items == i].max() for i in uniq])
        lists.append(uniq[np.lexsort((-last, -counts))].tolist())
    return _fill(lists, fallback, k)


def covisitation(history: History, reqs, k: int, fallback: np.ndarray) -> np.ndarray:
    start = int(np.min(reqs.timestamp)) if len(reqs) else 0
    clicks = np.flatnonzero((history.kind == EVENT_INDEX["click"]) & (history.ts < start))
    # Sessions that ended before the first request only: no request sees a later click.
    last = np.zeros(int(history.session.max(initial=0)) + 1, np.int64)
    np.maximum.at(last, history.session, history.ts)
    clicks = clicks[last[history.session[clicks]] < start]
    pairs = np.unique(np.stack([history.session[clicks], history.item[clicks]], 1), axis=0)
    n = np.int64(history.num_items)
    # Pairs of distinct items within each session.
    bounds = np.r_[0, np.flatnonzero(np.diff(pairs[:, 0])) + 1, len(pairs)]
    a, b = [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        items = pairs[s:e, 1]
        if len(items) > 1:
            aa, bb = np.meshgrid(items, items)
            keep = aa != bb
            a.append(aa[keep]), b.append(bb[keep])
    if a:
        keys, counts = np.unique(np.concatenate(a) * n + np.concatenate(b), return_counts=True)
    else:
        keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst = keys // n, keys % n
    indptr = np.searchsorted(src, np.arange(n + 1))
    lists = []
    for u, t in zip(reqs.user_id, reqs.timestamp):
        rows = history.rows(u, t, ("click", "cart", "purchase"))
        recent = list(dict.fromkeys(history.item[rows][::-1].tolist()))[:COVISIT_LAST_ITEMS]
        score = np.zeros(n)
        for i in recent:
            score[dst[indptr[i]:indptr[i + 1]]] += counts[indptr[i]:indptr[i + 1]]
        score[recent] = 0.0
        top = np.flatnonzero(score > 0)
        lists.append(top[np.argsort(-score[top], kind="stable")][:k].tolist())
    return _fill(lists, fallback, k)


def baselines(history: History, reqs, k: int) -> dict:
    pop = popularity_7d(history, reqs, k)
    return {"popularity_7d": pop, "user_bought": user_bought(history, reqs, k, pop),
            "covisitation": covisitation(history, reqs, k, pop)}


def retrieve(retriever, tables: contract.Tables, reqs, label_config, options: Options,
             exclude: list | None = None, include: list | None = None, progress=None):
    """[R, C] candidate item codes and their retrieval scores, from the whole catalogue."""
    from trainers.core.retrieval_task import catalogue_embeddings
    from zoo.models.features import RAW_FEATURES

    items = catalogue_embeddings(retriever, requests_lib.catalogue(tables))
    dummy = np.zeros((len(reqs), 1), np.int64)  # the query tower ignores the candidate
    out_idx, out_scores = [], []
    step = 1024  # requests per pass: [step, catalogue] scores in memory
    for start in range(0, len(reqs), step):
        part = reqs.take(np.arange(start, min(start + step, len(reqs))))
        raw = requests_lib.candidate_features(tables, part, dummy[:len(part)], label_config)
        q = np.asarray(retriever.query_embeddings({k: raw[k] for k in RAW_FEATURES}))
        logits = (q @ items.T) / retriever.temperature
        scores = logits.copy()
        for j in range(len(part)):
            r = start + j
            if exclude is not None and len(exclude[r]):
                scores[j, exclude[r]] = -np.inf
            if include is not None and len(include[r]):
                scores[j, include[r]] = np.inf  # candidates whatever their retrieval score
        idx, s = _top(scores, options.candidates)
        if include is not None:
            # Boosted items are candidates whatever their score; in the ranking they carry
            # their own retrieval logit, not an infinite one.
            s = np.take_along_axis(logits, idx, 1)
        out_idx.append(idx)
        out_scores.append(s)
        if progress:
            progress(len(part))
    return np.concatenate(out_idx), np.concatenate(out_scores)


def rank(ranker, tables: contract.Tables, reqs, candidates: np.ndarray, label_config,
         options: Options, progress=None) -> np.ndarray:
    """[R, C] objective scores of each candidate by the multi-task model."""
    import tensorflow as tf
    from zoo.models.features import RAW_FEATURES

    forward = tf.function(lambda raw: ranker(ranker.preprocessor(raw), training=False),
                          autograph=False, reduce_retracing=True)
    prices = np.asarray(tables.items["price"], np.float64)
    per_chunk = max(1, options.batch_size // candidates.shape[1])
    out = np.zeros(candidates.shape, np.float64)
    for start in range(0, len(reqs), per_chunk):
        sel = np.arange(start, min(start + per_chunk, len(reqs)))
        raw = requests_lib.candidate_features(tables, reqs.take(sel), candidates[sel],
                                              label_config)
        keep = options.ranker_events(ranker, label_config.history_length)
        raw = {k: v[:, :keep]  # the event columns, as the graph does
               if k.startswith("hist_") and v.ndim == 2 else v for k, v in raw.items()}
        preds = forward({k: tf.constant(raw[k]) if raw[k].dtype != object
                         else tf.constant(raw[k].astype(str)) for k in RAW_FEATURES})
        p = preds["click" if options.objective == "click" else "purchase"].numpy()
        p = p.reshape(len(sel), -1).astype(np.float64)
        if options.objective == "gmv":
            p = p * prices[candidates[sel]]
        out[sel] = p
        if progress:
            progress(len(sel))
    return out


def explain_lists(ranker, tables: contract.Tables, reqs, items: np.ndarray, label_config,
                  options: Options, progress=None) -> list:
    """Per request, per item of its list `items` [R, K]: the ranker's reasons
    (`zoo.models.explain.reasons`, contrasted within the list: the code the served
    signature runs), with the features the ranking saw."""
    from zoo.models.explain import reasons
    from zoo.models.features import RAW_FEATURES

    k = items.shape[1]
    keep = options.ranker_events(ranker, label_config.history_length)
    per_chunk = max(1, options.batch_size // (k * max(options.explain_steps, 1)))
    out = []
    for start in range(0, len(reqs), per_chunk):
        sel = np.arange(start, min(start + per_chunk, len(reqs)))
        raw = requests_lib.candidate_features(tables, reqs.take(sel), items[sel], label_config)
        raw = {name: v[:, :keep] if name.startswith("hist_") and v.ndim == 2 else v
               for name, v in raw.items()}
        found = reasons(ranker, {name: raw[name] for name in RAW_FEATURES}, k,
                        options.explain_output(), options.explain_steps)
        out += [found[i * k:(i + 1) * k] for i in range(len(sel))]
        if progress:
            progress(len(sel))
    return out
