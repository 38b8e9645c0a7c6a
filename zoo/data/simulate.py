r"""A behaviour simulator for a small web shop, with the true label probabilities (the oracle).

    python -m zoo.data.simulate --output_dir DIR [--num_users 1400 --num_items 3000 --days 28
        --seed 0 --format parquet|csv --eval_fraction 0.2 --num_price_ranges 5
        --price_horizon_days 7 --demand_horizon_days 7 --oracle_replays 6 --demand_replays 2
        --[no]repeat_purchase --brand_echo 0 --drift 0]

writes a contract folder (see `zoo/data/contract.py`) plus the oracle:

    DIR/events.parquet   search / impression / click / cart / purchase rows, time-sorted
    DIR/items.parquet    item_id, title, category, brand, price
    DIR/oracle.parquet   one row per impression: event_id, p_click, p_purchase,
                         p_price_range_0..K-1, p_price_range_any, demand
    DIR/oracle_meta.json the label configuration the oracle is for (K, H, D, eval split, edges)

The output is written into a temporary sibling folder and renamed into place at the end, so a
failed run leaves no partial folder. Same seed and sizes -> byte-identical tables (the oracle
replays draw from their own random streams, so `--oracle_replays` never changes the log).

The shop
--------
20 categories, each with a noun and synonyms, 8 attribute words and a log-normal price level;
brands (made-up names) sell in a few categories with a price premium and a quality; items are
brand + two attribute words + category noun + model code, priced log-normally around their
category and brand, with an attractiveness that has an item trend and weekly seasonality.
Users have latent category tastes (an AR(1) drift per day), a budget (preferred price relative
to the category level; lower budgets mean stronger price sensitivity), preferred attribute per
category, brand affinities (grow with purchases), a session rate and a search propensity.

Repeat purchases (`repeat_purchase`, on by default): some categories are consumables (pet
food, skincare, t-shirts) that a user buys again on a cycle of their own (a per-user multiple
of the category's cycle). A user who buys in such a category keeps the item as their staple
(the start of the log finds the category's regular buyers with a staple bought some time
before); as the cycle runs out the need grows (a logistic in time since the last purchase over
the cycle), which raises the category's chance to be the session's intent and the feed's page,
the shop puts the staple into the retrieved pool and ranks it up ("buy it again"), and the
staple's click, cart and buy probabilities rise with the need. Off, the world is the one of the
first simulator version (the regime draws from its own random stream).

A planted signal (`brand_echo`, 0 by default, so the default shop is unchanged): the click
utility of an item gains `brand_echo` while the user bought an item of the same brand within
the last 3 days (BRAND_ECHO_SECONDS, measured at the impression). One kind of past event -
a recent purchase of the candidate's brand - then drives clicks on its own, which is what an
explanation of the model should find (`tests/test_explain.py`). The oracle stays exact: the
term is part of the utility the simulator draws from. No random draw depends on it, so with
the same seed the log differs only through the responses it changes.

Drift (`drift`, 0 by default, so the default shop is unchanged; 1 is the drifting shop of
the daily-training comparison): the world changes under a model trained once.
* Items are launched and retired: with drift 1, 35 % of the items (not the first of each
  category) go on sale on a day drawn uniformly over the log and 30 % are retired some weeks
  after their launch (retrieval, and so the log, only ever holds items on sale that day); a
  new item is attractive while it is new (+0.8 on its attractiveness, decaying over a week).
* Category demand is seasonal: every category's taste term gains 1.2 sin(2 pi d / 56 +
  phase), so over 8 weeks categories rise and fall in intent, feeds and clicks.
* Tastes drift slowly: the user's base taste (the level the daily AR(1) drift reverts to)
  moves linearly by N(0, 1) per category over the log.
Everything scales with `drift`; it draws from its own random stream, and the oracle stays
exact (the terms are part of the state the simulator draws from and replays).

Sessions arrive per user as a Poisson process with a time-of-day (zero between 23:30 and 06:00,
so no session crosses midnight) and day-of-week profile; the next one can only start after the
previous ended. A session has an intent category drawn from taste + recent clicks (decayed,
which makes the behaviour sequence predictive) - recent purchases (satiation). It has up to 6
pages; each is a search (a query made of category noun/synonym, maybe brand, maybe attribute,
maybe a modifier like "cheap"/"premium", occasional typos and off-intent queries) or a feed
page (empty query, category from the recommender). The engine ranks a retrieved pool of the
category's items by a noisy text relevance (+ popularity, + price for cheap/premium queries;
+ brand affinity on feeds) and shows the top 10 items not yet shown in the session. Each shown
item is clicked with P = examination(position) * sigmoid(utility) (utility: intent match,
taste, brand affinity, attribute match, query match, price fit vs budget, attractiveness,
quality), then carted and purchased with further probabilities; the user scans top-down, so
events of position j come before those of position j+1. Quantity is 1 + Poisson (more for
cheap items). All of a page's clicks are decided at once, independently given the state at
the impression, and clicks only follow impressions: an item is shown at most once per session.

The oracle (each is conditional on the simulator's full state at the impression)
---------------------------------------------------------------------------------
* p_click / p_purchase: exact, P(click) = exam * sigmoid(u), P(purchase) = P(click) *
  P(cart | click) * P(buy | cart), as drawn by the simulator.
* p_price_range_k: Monte Carlo over `oracle_replays` replays of the user's future from the
  state at the list (the list's responses, the rest of the session, later sessions, the taste
  drift all redrawn with an independent stream), Rao-Blackwellised within the page: on the
  replayed page that holds the replay's first purchase, its item is not taken as drawn but
  spread over the page's items by P(first purchase is item j | a purchase on this page) =
  prod_{i<j}(1-q_i) q_j / (1 - prod_i (1-q_i)), counted when that purchase falls within H
  days (and before the end of the log, since the label cannot see past it either). Unbiased,
  each replay adds at most 1, so the K columns sum to P(any purchase within H days) =
  p_price_range_any <= 1, which moves in steps of about 1/oracle_replays.
* demand: E[quantity of the item bought in (t, t+D]] = own part + others' part. Own part: the
  same replays add, on every replayed page, P(purchase) * E[quantity] for the list's items.
  Others' part: `demand_replays` replays of the whole user base from the start of the
  impression's day (state at 00:00; no session is running then) for D+1 days add the same
  expected quantities of the other users. The others are thus conditioned on the state at the
  start of the day, not at the impression (a coarser but valid conditioning: unbiased, a
  touch less sharp). Windows end at the end of the log, like the labels.
`--oracle_replays 0` skips both Monte Carlo parts (price_range / demand oracle columns NaN),
for large benchmark logs.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from zoo.data import contract

START_TIME = 1767571200  # Monday 2026-01-05 00:00:00 UTC
DAY = contract.SECONDS_PER_DAY
LIST = 10          # items per page
MAX_PAGES = 6      # pages per session
SHOWN = LIST * MAX_PAGES
NEVER = np.iinfo(np.int64).max // 4
POOL = 64          # retrieved candidates per page (random sample of the category)
# v2: the repeat-purchase regime.
DEFAULT_VERSION = "default-v2"

DEFAULTS = dict(num_users=1400, num_items=3000, num_brands=80, days=28, seed=0,
                format="parquet", eval_fraction=contract.DEFAULT_EVAL_FRACTION,
                num_price_ranges=contract.DEFAULT_NUM_PRICE_RANGES,
                price_horizon_days=contract.DEFAULT_PRICE_HORIZON_DAYS,
                demand_horizon_days=contract.DEFAULT_DEMAND_HORIZON_DAYS,
                oracle_replays=6, demand_replays=2, sessions_per_day=0.25,
                repeat_purchase=True, brand_echo=0.0, drift=0.0)
# The planted signal's window (`brand_echo`): a purchase of the brand this recent counts.
BRAND_ECHO_SECONDS = 3 * DAY
# Drift (`drift` = 1): shares of items launched during the log / retired, the novelty boost
# of a new item and its decay, the seasonal amplitude and period of category demand, the
# total move of the users' base tastes over the log.
DRIFT_LAUNCHED, DRIFT_RETIRED = 0.35, 0.30
DRIFT_NOVELTY, DRIFT_NOVELTY_DAYS = 0.8, 7.0
DRIFT_SEASON, DRIFT_SEASON_DAYS = 1.2, 56.0
DRIFT_TASTE = 1.0

# name, [noun, synonyms...], 8 attribute words, median price
CATEGORIES = [
    ("running shoes", ["running shoes", "sneakers", "trainers"],
     ["lightweight", "cushioned", "trail", "waterproof", "breathable", "wide", "neon", "black"], 80),
    ("headphones", ["headphones", "earbuds", "headset"],
     ["wireless", "noise cancelling", "bluetooth", "over-ear", "sport", "bass", "foldable", "white"], 90),
    ("coffee makers", ["coffee maker", "espresso machine", "coffee machine"],
     ["automatic", "compact", "stainless", "programmable", "drip", "milk frother", "single serve", "retro"], 120),
    ("backpacks", ["backpack", "rucksack", "daypack"],
     ["hiking", "laptop", "waterproof", "travel", "30l", "school", "rolltop", "minimalist"], 60),
    ("phone cases", ["phone case", "phone cover", "case"],
     ["silicone", "leather", "clear", "shockproof", "wallet", "magnetic", "slim", "glitter"], 18),
    ("t-shirts", ["t-shirt", "tee", "shirt"],
     ["cotton", "organic", "oversized", "graphic", "v-neck", "slim fit", "striped", "plain"], 22),
    ("jeans", ["jeans", "denim", "trousers"],
     ["skinny", "straight", "relaxed", "stretch", "ripped", "high waist", "dark wash", "bootcut"], 55),
    ("blenders", ["blender", "smoothie maker", "mixer"],
     ["high speed", "portable", "glass jar", "quiet", "1000w", "personal", "vacuum", "compact"], 70),
    ("yoga mats", ["yoga mat", "exercise mat", "pilates mat"],
     ["non-slip", "thick", "cork", "travel", "eco", "extra long", "printed", "foldable"], 30),
    ("watches", ["watch", "wristwatch", "smartwatch"],
     ["gps", "analog", "chronograph", "leather strap", "waterproof", "solar", "fitness", "titanium"], 150),
    ("lamps", ["desk lamp", "lamp", "led light"],
     ["dimmable", "usb", "clamp", "minimalist", "touch", "warm white", "architect", "rechargeable"], 40),
    ("vacuum cleaners", ["vacuum cleaner", "vacuum", "hoover"],
     ["cordless", "robot", "bagless", "handheld", "pet hair", "hepa", "stick", "quiet"], 200),
    ("books", ["novel", "book", "paperback"],
     ["thriller", "romance", "fantasy", "mystery", "bestseller", "classic", "sci-fi", "hardcover"], 14),
    ("tents", ["tent", "camping tent", "shelter"],
     ["2 person", "4 person", "ultralight", "pop up", "waterproof", "family", "dome", "backpacking"], 130),
    ("skincare", ["face cream", "moisturizer", "cream"],
     ["hydrating", "spf 30", "night", "anti aging", "sensitive", "organic", "vitamin c", "fragrance free"], 25),
    ("computer mice", ["gaming mouse", "mouse", "wireless mouse"],
     ["rgb", "ergonomic", "lightweight", "wireless", "16000 dpi", "silent", "left handed", "programmable"], 45),
    ("office chairs", ["office chair", "desk chair", "gaming chair"],
     ["ergonomic", "mesh", "lumbar support", "reclining", "leather", "adjustable", "swivel", "armless"], 180),
    ("water bottles", ["water bottle", "bottle", "flask"],
     ["insulated", "stainless", "bpa free", "1l", "sport", "glass", "collapsible", "kids"], 20),
    ("pet food", ["dog food", "puppy food", "dog treats"],
     ["grain free", "salmon", "chicken", "senior", "small breed", "organic", "dry", "wet"], 35),
    ("sunglasses", ["sunglasses", "shades", "sun glasses"],
     ["polarized", "aviator", "round", "sport", "uv400", "oversized", "retro", "mirrored"], 50),
]
MODIFIERS = ["cheap", "premium", "best", "new", "sale", "deals"]
SYLLABLES = ["zo", "ka", "ri", "lu", "ne", "tor", "vex", "mi", "sa", "bel", "gra", "no", "fin",
             "dra", "co", "pe", "quin", "ax", "ly", "ra", "mon", "tek", "ul", "ve", "sto"]
NUM_ATTRS = 8
NUM_CATS = len(CATEGORIES)

# Behaviour constants.
TAU_REC = 3.0 * DAY      # decay of recent clicks
TAU_SAT = 6.0 * DAY      # decay of purchase satiation
DRIFT_PHI = 0.93         # daily AR(1) taste drift towards the user's base taste
DRIFT_SIGMA = 0.25
EXAM = (1.0 / (1.0 + np.arange(LIST))) ** 0.6   # position bias
# Consumables of the repeat-purchase regime: category -> median days between purchases.
CONSUMABLES = {"pet food": 8.0, "skincare": 12.0, "t-shirts": 16.0}
NEED_INTENT = 2.5        # intent / feed logit of a fully due consumable
NEED_SLOPE = 6.0         # steepness of the need around the end of the cycle
STAPLE_RANK = 1.5        # the shop's "buy it again" boost of the staple in the ranking


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gumbel(rng, shape):
    return -np.log(-np.log(rng.random(shape) + 1e-300) + 1e-300)


# ----------------------------------------------------------------------------- the world

class World:
    """Static catalogue, users and the exogenous time profiles."""

    def __init__(self, num_users, num_items, num_brands, days, extra_days, seed,
                 sessions_per_day, repeat_purchase=False, brand_echo=0.0, drift=0.0):
        rng = np.random.default_rng([seed, 1])
        self.brand_echo = float(brand_echo)
        self.drift = float(drift)
        C, A = NUM_CATS, NUM_ATTRS
        self.days = days
        self.t0 = START_TIME
        self.t_end = START_TIME + days * DAY
        self.cat_mu = np.log([c[3] for c in CATEGORIES])
        self.words = [c[1] for c in CATEGORIES]
        self.attr_words = [w for c in CATEGORIES for w in c[2]]

        # Brands: unique made-up names, each selling in 1-4 categories.
        names, seen = [], set()
        while len(names) < num_brands:
            n = rng.integers(2, 4)
            name = "".join(rng.choice(SYLLABLES, n)).capitalize()
            if name not in seen:
                seen.add(name)
                names.append(name)
        self.brand_names = names
        B = num_brands
        brand_cat = np.zeros((B, C), bool)
        for b in range(B):
            brand_cat[b, rng.choice(C, rng.integers(1, 5), replace=False)] = True
        for c in range(C):  # at least 3 brands per category
            while brand_cat[:, c].sum() < 3:
                brand_cat[rng.integers(B), c] = True
        self.brand_cat = brand_cat
        brand_premium = rng.normal(0, 0.3, B)
        brand_quality = rng.normal(0, 0.5, B)

        # Items.
        cat_w = rng.dirichlet(np.full(C, 4.0))
        icat = rng.choice(C, num_items, p=cat_w)
        icat[:C] = np.arange(C)  # every category has items
        ibrand = np.empty(num_items, np.int64)
        for c in range(C):
            rows = np.flatnonzero(icat == c)
            bs = np.flatnonzero(brand_cat[:, c])
            bw = rng.dirichlet(np.full(len(bs), 1.5))
            ibrand[rows] = rng.choice(bs, len(rows), p=bw)
        a1 = rng.integers(0, A, num_items)
        a2 = (a1 + rng.integers(1, A, num_items)) % A
        self.attr1 = icat * A + a1
        self.attr2 = icat * A + a2
        logp = self.cat_mu[icat] + brand_premium[ibrand] + rng.normal(0, 0.4, num_items)
        price = np.exp(logp)
        price = np.where(price >= 10, np.floor(price) + 0.99, np.round(price, 2))
        price = np.maximum(price, 0.99)
        self.price = price
        self.logp_rel = np.log(price) - self.cat_mu[icat]
        self.quality = brand_quality[ibrand] + rng.normal(0, 0.5, num_items)
        self.icat, self.ibrand = icat, ibrand
        # Expected extra quantity: cheap items are bought in multiples.
        self.muq = np.clip(0.35 * np.exp(-1.2 * self.logp_rel), 0.02, 2.0)
        # Attractiveness: base + trend + weekly seasonality (+ category weekend effect).
        total_days = days + extra_days
        dd = np.arange(total_days)
        base = rng.normal(0, 0.5, num_items)
        trend = rng.normal(0, 0.6, num_items)
        amp = rng.uniform(0, 0.5, num_items)
        phase = rng.uniform(0, 7, num_items)
        weekend = rng.normal(0, 0.3, C)[icat]
        dow = (dd % 7)[None, :]
        self.attract = (base[:, None] + trend[:, None] * (dd[None, :] / max(days, 1) - 0.5)
                        + amp[:, None] * np.sin(2 * np.pi * (dow + phase[:, None]) / 7)
                        + weekend[:, None] * (dow >= 5)).astype(np.float64)
        self.num_items = num_items
        self.num_days_total = total_days
        # Items by category, padded.
        counts = np.bincount(icat, minlength=C)
        self.cat_n = counts
        self.cat_items = np.full((C, counts.max()), -1, np.int64)
        for c in range(C):
            rows = np.flatnonzero(icat == c)
            self.cat_items[c, :len(rows)] = rows
        self.primes = np.array([p for p in range(counts.max() + 1, counts.max() + 2000)
                                if all(p % k for k in range(2, int(p ** 0.5) + 1))][:64])

        # Users.
        U = num_users
        theta0 = rng.normal(0, 1.0, (U, C))
        fav = rng.integers(0, C, (U, 2))
        theta0[np.arange(U), fav[:, 0]] += 2.0
        theta0[np.arange(U), fav[:, 1]] += 1.2
        self.theta0 = theta0
        self.z = rng.normal(0, 0.6, U)                      # budget: preferred log-price offset
        self.lam = 1.2 * np.exp(-0.8 * self.z)              # price sensitivity
        self.pref_attr = np.arange(C)[None, :] * A + rng.integers(0, A, (U, C))
        self.baff0 = rng.normal(0, 0.3, (U, B))
        fb = rng.integers(0, B, (U, 3))
        for k in range(3):
            self.baff0[np.arange(U), fb[:, k]] += 1.0
        self.rho = sessions_per_day * rng.lognormal(-0.32, 0.8, U)  # sessions per day (mean ~ spd)
        self.p_search = rng.beta(4, 2, U)
        self.engage = rng.normal(0, 0.5, U)
        self.num_users, self.num_brands = U, B
        self._repeat_purchase(repeat_purchase, np.random.default_rng([seed, 4]))
        self._drift(np.random.default_rng([seed, 5]))

        # Session intensity: 15-minute bins over all days, normalised to 1 session per day.
        binsec = 900
        hours = (np.arange(96) * binsec) / 3600.0
        prof = (np.exp(-0.5 * ((hours - 12.5) / 2.0) ** 2) * 0.6
                + np.exp(-0.5 * ((hours - 20.5) / 1.5) ** 2) * 1.0
                + np.exp(-0.5 * ((hours - 8.5) / 1.5) ** 2) * 0.4 + 0.15)
        prof[(hours < 6.0) | (hours >= 23.5)] = 0.0
        prof /= prof.sum()
        dow_f = np.array([0.95, 0.9, 0.95, 1.0, 1.05, 1.15, 1.1])
        rate = np.concatenate([prof * dow_f[d % 7] for d in range(total_days)])
        self.binsec = binsec
        self.rate = rate
        self.cum = np.concatenate([[0.0], np.cumsum(rate)])

    def _repeat_purchase(self, on, rng):
        """Per-user cycles and the staples the log starts with (own stream: off, the world is
        the same as before the regime existed)."""
        U, C = self.num_users, NUM_CATS
        cycle_days = np.zeros(C)
        if on:
            names = [c[0] for c in CATEGORIES]
            for name, days in CONSUMABLES.items():
                cycle_days[names.index(name)] = days
        self.consumable = cycle_days > 0
        self.cycle = (cycle_days[None, :] * DAY * rng.lognormal(0.0, 0.35, (U, C)))
        self.staple0 = np.full((U, C), -1, np.int64)
        self.last_buy0 = np.full((U, C), self.t0, np.int64)
        for c in np.flatnonzero(self.consumable):
            items = self.cat_items[c, :self.cat_n[c]]
            buyers = np.flatnonzero(self.theta0[:, c] > 0.0)
            if not len(buyers) or not len(items):
                continue
            # The staple: the buyer's pick by quality and brand affinity.
            pick = (self.quality[items][None, :] + self.baff0[buyers][:, self.ibrand[items]]
                    + _gumbel(rng, (len(buyers), len(items))))
            self.staple0[buyers, c] = items[np.argmax(pick, 1)]
            ago = rng.uniform(0.0, 1.0, len(buyers)) * self.cycle[buyers, c]
            self.last_buy0[buyers, c] = self.t0 - ago.astype(np.int64)

    def _drift(self, rng):
        """Item launches and retirements, seasonal category demand and the drift of the
        base tastes (own stream; all off at drift 0, so the default shop is unchanged)."""
        I, C, U, T = self.num_items, NUM_CATS, self.num_users, self.num_days_total
        self.launch = np.zeros(I, np.int64)
        self.retire = np.full(I, T, np.int64)
        self.season = np.zeros((C, T))
        self.taste_shift = np.zeros((U, C))
        if self.drift <= 0:
            self.on_sale = np.ones((I, T), bool)
            return
        share = min(self.drift, 1.0)
        first = np.zeros(I, bool)
        first[np.unique(self.icat, return_index=True)[1]] = True  # one item per category
        launched = (rng.random(I) < DRIFT_LAUNCHED * share) & ~first
        self.launch = np.where(launched, rng.integers(1, max(self.days, 2), I), 0)
        retired = (rng.random(I) < DRIFT_RETIRED * share) & ~first
        life = 7 + rng.exponential(self.days / 2.0, I).astype(np.int64)
        self.retire = np.where(retired, np.minimum(self.launch + life, T), T)
        dd = np.arange(T)
        self.on_sale = (dd[None, :] >= self.launch[:, None]) & (dd[None, :] < self.retire[:, None])
        age = dd[None, :] - self.launch[:, None]
        novelty = np.where(launched[:, None] & (age >= 0),
                           DRIFT_NOVELTY * np.exp(-np.maximum(age, 0) / DRIFT_NOVELTY_DAYS), 0.0)
        self.attract = self.attract + self.drift * novelty
        phase = rng.uniform(0, 2 * np.pi, C)
        self.season = self.drift * DRIFT_SEASON * np.sin(
            2 * np.pi * dd[None, :] / DRIFT_SEASON_DAYS + phase[:, None])
        self.taste_shift = self.drift * DRIFT_TASTE * rng.normal(0, 1, (U, C))

    def base_taste(self, uid, day):
        """[n, C]: the taste the users' daily drift reverts to on `day` (theta0 without drift)."""
        if self.drift <= 0:
            return self.theta0[uid]
        frac = (np.asarray(day, np.float64) / max(self.days, 1))[:, None]
        return self.theta0[uid] + frac * self.taste_shift[uid]

    def need(self, st, a, t):
        """[n, C] in [0, 1]: how due each consumable with a staple is for agents a at t."""
        if not self.consumable.any():
            return np.zeros((len(a), NUM_CATS))
        cycle = np.where(self.consumable, self.cycle[st.uid[a]], 1.0)
        due = (np.asarray(t, np.float64)[:, None] - st.last_buy[a]) / cycle
        has = (st.staple[a] >= 0) & self.consumable[None, :]
        return np.where(has, _sigmoid(NEED_SLOPE * (due - 1.0)), 0.0)

    def intensity_at(self, t):
        x = (np.asarray(t, np.float64) - self.t0) / self.binsec
        i = np.clip(np.floor(x).astype(np.int64), 0, len(self.rate) - 1)
        return self.cum[i] + self.rate[i] * np.clip(x - i, 0, 1)

    def next_arrival(self, t, uid, rng):
        """First session start after time t (int seconds; a huge value if past the grid)."""
        target = self.intensity_at(t) + rng.exponential(1.0, len(uid)) / self.rho[uid]
        i = np.searchsorted(self.cum, target, side="left") - 1
        out = np.full(len(uid), NEVER, np.int64)
        ok = i < len(self.rate)
        i = i[ok]
        frac = (target[ok] - self.cum[i]) / self.rate[i]
        ts = self.t0 + ((i + frac) * self.binsec).astype(np.int64)
        out[ok] = np.maximum(ts, np.asarray(t)[ok] + 1)
        return out

    def day_of(self, t):
        return np.clip((np.asarray(t) - self.t0) // DAY, 0, self.num_days_total - 1)


# ----------------------------------------------------------------------------- agent state

class State:
    """Dynamic per-agent state (an agent is a user, or a copy of one in a replay)."""

    # brand_buy [U, B]: when the agent last bought each brand (-NEVER: never), for the
    # planted `brand_echo` signal.
    FIELDS = ("uid", "theta", "rec", "sat", "baff", "last_t", "day", "staple", "last_buy",
              "brand_buy")

    def __init__(self, **kw):
        for k in self.FIELDS:
            setattr(self, k, kw[k])

    @classmethod
    def initial(cls, world):
        U = world.num_users
        return cls(uid=np.arange(U), theta=world.theta0.copy(), rec=np.zeros((U, NUM_CATS)),
                   sat=np.zeros((U, NUM_CATS)), baff=world.baff0.copy(),
                   last_t=np.full(U, world.t0, np.int64), day=np.zeros(U, np.int64),
                   staple=world.staple0.copy(), last_buy=world.last_buy0.copy(),
                   brand_buy=np.full((U, world.num_brands), -NEVER, np.int64))

    def take(self, idx):
        return State(**{k: getattr(self, k)[idx].copy() for k in self.FIELDS})


def _session_start(world, st, a, t, rng):
    """Decays / drifts the agents' state to time t and draws the session intents."""
    dt = (t - st.last_t[a]).astype(np.float64)
    st.rec[a] *= np.exp(-dt / TAU_REC)[:, None]
    st.sat[a] *= np.exp(-dt / TAU_SAT)[:, None]
    st.last_t[a] = t
    day = world.day_of(t)
    k = (day - st.day[a]).astype(np.float64)
    moved = k > 0
    if moved.any():
        am, km = a[moved], k[moved][:, None]
        phik = DRIFT_PHI ** km
        sd = DRIFT_SIGMA * np.sqrt((1 - phik ** 2) / (1 - DRIFT_PHI ** 2))
        base = world.base_taste(st.uid[am], day[moved])
        st.theta[am] = base + phik * (st.theta[am] - base) + sd * rng.normal(size=(len(am), NUM_CATS))
        st.day[am] = day[moved]
    logits = (st.theta[a] + world.season[:, day].T + 1.0 * np.log1p(st.rec[a]) - 1.2 * st.sat[a]
              + NEED_INTENT * world.need(st, a, np.broadcast_to(t, a.shape)))
    intent = np.argmax(logits + _gumbel(rng, logits.shape), axis=1)
    n = len(a)
    return dict(a=a, intent=intent, p=np.zeros(n, np.int64), T=np.asarray(t, np.int64).copy(),
                shown=np.full((n, SHOWN), -1, np.int64), nshown=np.zeros(n, np.int64),
                kind=np.zeros(n, np.int64), qc=np.zeros(n, np.int64), qword=np.zeros(n, np.int64),
                qbrand=np.full(n, -1, np.int64), qattr=np.full(n, -1, np.int64),
                qmod=np.full(n, -1, np.int64), qtypo=np.zeros(n, np.int64),
                qorder=np.zeros(n, np.int64))


def _sub(d, idx):
    return {k: v[idx] for k, v in d.items()}


def _new_queries(world, st, S, rows, rng):
    """Draws a fresh query for session rows `rows` (in place)."""
    n = len(rows)
    if n == 0:
        return
    a = S["a"][rows]
    uid = st.uid[a]
    qc = S["intent"][rows].copy()
    off = rng.random(n) < 0.07
    qc[off] = rng.integers(0, NUM_CATS, off.sum())
    S["qc"][rows] = qc
    S["qword"][rows] = rng.choice(3, n, p=[0.55, 0.25, 0.2])
    use_brand = rng.random(n) < 0.3
    logits = st.baff[a] + _gumbel(rng, (n, world.num_brands))
    logits[~world.brand_cat[:, qc].T] = -np.inf
    S["qbrand"][rows] = np.where(use_brand, np.argmax(logits, 1), -1)
    r = rng.random(n)
    rand_attr = qc * NUM_ATTRS + rng.integers(0, NUM_ATTRS, n)
    S["qattr"][rows] = np.where(r < 0.45, world.pref_attr[uid, qc],
                                np.where(r < 0.6, rand_attr, -1))
    z = world.z[uid]
    r = rng.random(n)
    p_cheap = _sigmoid(-2.2 - 2.0 * z)
    p_prem = _sigmoid(-2.2 + 2.0 * z)
    other = 2 + rng.integers(0, len(MODIFIERS) - 2, n)
    S["qmod"][rows] = np.where(r < p_cheap, 0, np.where(r < p_cheap + p_prem, 1,
                               np.where(r < p_cheap + p_prem + 0.08, other, -1)))
    S["qtypo"][rows] = (rng.random(n) < 0.05).astype(np.int64)
    S["qorder"][rows] = rng.integers(0, 2, n)


def _gen_page(world, st, S, rng):
    """Query (or feed), retrieval, ranking and the exact response probabilities of a page."""
    n = len(S["a"])
    a = S["a"]
    uid = st.uid[a]
    first = S["p"] == 0
    search = rng.random(n) < world.p_search[uid]
    prev_search = (~first) & (S["kind"] == 0)
    paginate = prev_search & search & (rng.random(n) < 0.3)
    S["kind"] = np.where(search, 0, 1)
    _new_queries(world, st, S, np.flatnonzero(search & ~paginate), rng)
    # Page category: the query's (search) or the recommender's (feed).
    need = world.need(st, a, S["T"])
    day = world.day_of(S["T"])
    feed_logits = (st.theta[a] + world.season[:, day].T + 0.8 * np.log1p(st.rec[a])
                   + NEED_INTENT * need)
    feed_cat = np.argmax(feed_logits + _gumbel(rng, feed_logits.shape), 1)
    pc = np.where(search, S["qc"], feed_cat)
    staple = st.staple[a, pc]  # the user's staple of the page's category (-1: none)
    # Retrieval: all of the category, or POOL distinct ones (stride by a prime > size).
    cn = world.cat_n[pc]
    big = cn > POOL
    r0 = np.where(big, rng.integers(0, 1 << 30, n) % cn, 0)
    step = np.where(big, world.primes[rng.integers(0, len(world.primes), n)], 1)
    ar = np.arange(max(LIST, min(POOL, int(world.cat_n.max()))))
    pos = (r0[:, None] + ar[None, :] * step[:, None]) % np.maximum(cn, 1)[:, None]
    valid = ar[None, :] < cn[:, None]
    items = world.cat_items[pc[:, None], pos]
    items = np.where(valid, items, 0)
    # "Buy it again": the staple joins the retrieved pool (in the first slot) if missing.
    inject = (staple >= 0) & ~(valid & (items == staple[:, None])).any(1)
    items[inject, 0] = staple[inject]
    valid[inject, 0] = True
    valid &= world.on_sale[items, day[:, None]]  # retired or not yet launched: not retrieved
    # Not shown before in the session.
    I = world.num_items
    shown_keys = (np.arange(n)[:, None] * I + S["shown"])[S["shown"] >= 0]
    valid &= ~np.isin(np.arange(n)[:, None] * I + items, shown_keys)
    att = world.attract[items, day[:, None]]
    qb = np.where(search, S["qbrand"], -2)[:, None]
    qa = np.where(search, S["qattr"], -2)[:, None]
    brand_hit = world.ibrand[items] == qb
    attr_hit = (world.attr1[items] == qa) | (world.attr2[items] == qa)
    qm = np.where(search, S["qmod"], -1)[:, None]
    lp = world.logp_rel[items]
    score = (0.6 * att + 1.8 * brand_hit + 1.2 * attr_hit - 1.0 * lp * (qm == 0) + 1.0 * lp * (qm == 1)
             + np.where(search[:, None], 0.0, 0.6 * np.take_along_axis(st.baff[a], world.ibrand[items], 1))
             + STAPLE_RANK * (items == staple[:, None])
             + rng.normal(0, 0.8, items.shape))
    score = np.where(valid, score, -np.inf)
    top = np.argpartition(-score, LIST - 1, axis=1)[:, :LIST]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), 1, kind="stable"), 1)
    shown_items = np.take_along_axis(items, top, 1)
    ok = np.take_along_axis(valid, top, 1)
    shown_items = np.where(ok, shown_items, -1)
    # Record them as shown.
    slot = S["nshown"][:, None] + np.cumsum(ok, 1) - 1
    rr, cc = np.nonzero(ok)
    S["shown"][rr, slot[rr, cc]] = shown_items[rr, cc]
    S["nshown"] = S["nshown"] + ok.sum(1)
    # Response probabilities.
    it = np.where(ok, shown_items, 0)
    ic = world.icat[it]
    ib = world.ibrand[it]
    lp = world.logp_rel[it]
    z = world.z[uid][:, None]
    over = np.maximum(lp - z, 0.0)
    under = np.maximum(z - lp - 0.4, 0.0)
    fit = -world.lam[uid][:, None] * over ** 2 - 0.4 * under ** 2
    intent_hit = ic == S["intent"][:, None]
    theta = np.take_along_axis(st.theta[a], ic, 1) + world.season[ic, day[:, None]]
    baff = np.take_along_axis(st.baff[a], ib, 1)
    sat = np.take_along_axis(st.sat[a], ic, 1)
    pref = world.pref_attr[uid[:, None], ic]
    pref_hit = (world.attr1[it] == pref) | (world.attr2[it] == pref)
    q_brand = (ib == qb)
    q_attr = (world.attr1[it] == qa) | (world.attr2[it] == qa)
    att = world.attract[it, day[:, None]]
    qual = world.quality[it]
    # The staple, and how due it is (0 for everything else).
    is_staple = ok & (it == np.take_along_axis(st.staple[a], ic, 1))
    due = np.take_along_axis(need, ic, 1) * is_staple
    # The planted signal: a purchase of the item's brand within the window before the page.
    echo = ok & ((S["T"][:, None] - np.take_along_axis(st.brand_buy[a], ib, 1))
                 <= BRAND_ECHO_SECONDS)
    util = (-2.6 + 1.6 * intent_hit + 0.45 * theta + 0.5 * baff + 0.8 * pref_hit + 0.7 * q_brand
            + 0.6 * q_attr + 1.0 * fit + 0.5 * att + 0.35 * qual - 0.12 * S["p"][:, None]
            + 0.3 * world.engage[uid][:, None] + 1.2 * is_staple + 2.0 * due
            + world.brand_echo * echo)
    c = EXAM[None, :] * _sigmoid(util)
    cart = _sigmoid(-0.4 + 0.9 * intent_hit + 1.2 * fit + 0.4 * qual + 0.3 * baff - 1.0 * sat
                    + 1.0 * is_staple + 1.0 * due)
    buy = _sigmoid(0.2 + 0.8 * fit + 0.3 * qual - 0.5 * sat + 0.3 * pref_hit
                   + 1.0 * is_staple + 1.0 * due)
    c = np.where(ok, c, 0.0)
    return dict(items=shown_items, ok=ok, c=c, cart=cart, buy=buy, muq=world.muq[it], T=S["T"].copy(),
                kind=S["kind"].copy(), qkey=np.where(search, _query_key(world, S), -1))


def _query_key(world, S):
    B1, A1, M1 = world.num_brands + 1, NUM_CATS * NUM_ATTRS + 1, len(MODIFIERS) + 1
    k = S["qc"] * 3 + S["qword"]
    k = k * B1 + S["qbrand"] + 1
    k = k * A1 + S["qattr"] + 1
    k = k * M1 + S["qmod"] + 1
    return (k * 2 + S["qtypo"]) * 2 + S["qorder"]


def render_queries(world, keys):
    """Query text for query keys (each distinct key rendered once)."""
    B1, A1, M1 = world.num_brands + 1, NUM_CATS * NUM_ATTRS + 1, len(MODIFIERS) + 1
    out = []
    for k in keys.tolist():
        k, order = divmod(k, 2)
        k, typo = divmod(k, 2)
        k, mod = divmod(k, M1)
        k, attr = divmod(k, A1)
        k, brand = divmod(k, B1)
        qc, qword = divmod(k, 3)
        noun = world.words[qc][qword]
        if typo:
            m = max(1, len(noun) // 2)
            noun = noun[:m] + noun[m + 1:]
        parts = [MODIFIERS[mod - 1] if mod else "", world.brand_names[brand - 1].lower() if brand else "",
                 world.attr_words[attr - 1] if attr else "", noun]
        if order:
            parts = [parts[3], parts[2], parts[1], parts[0]]
        out.append(" ".join(p for p in parts if p))
    return out


def _respond(world, st, S, G, rng, recorder):
    """Draws a page's responses, records them, updates the state; returns 'session goes on'."""
    n = len(S["a"])
    a = S["a"]
    gaps = rng.integers(3, 11, (n, LIST))
    base = G["T"][:, None] + 1 + np.cumsum(gaps, 1)     # click at base, cart +1, purchase +2
    u = rng.random((n, LIST, 3))
    click = (u[..., 0] < G["c"]) & G["ok"]
    carted = click & (u[..., 1] < G["cart"])
    bought = carted & (u[..., 2] < G["buy"])
    qty = np.where(bought, 1 + rng.poisson(G["muq"]), 0)
    recorder.page(st, S, G, base, click, carted, bought, qty)
    # State update (an agent has one page in a batch; pairs may repeat a category).
    it = np.where(G["ok"], G["items"], 0)
    ic = world.icat[it]
    ib = world.ibrand[it]
    rows = np.broadcast_to(a[:, None], ic.shape)
    np.add.at(st.rec, (rows, ic), click * 1.0 + carted * 0.5)
    np.add.at(st.sat, (rows, ic), bought * 1.0)
    np.add.at(st.baff, (rows, ib), click * 0.1 + bought * 0.5)
    np.minimum(st.baff, 3.0, out=st.baff)
    r, c = np.nonzero(bought)
    np.maximum.at(st.brand_buy, (a[r], ib[r, c]), base[r, c] + 2)
    # A consumable bought becomes the staple of its category; its cycle starts again.
    refill = bought & world.consumable[ic]
    if refill.any():
        r, c = np.nonzero(refill)
        st.staple[a[r], ic[r, c]] = it[r, c]
        st.last_buy[a[r], ic[r, c]] = base[r, c] + 2
    nclick = click.sum(1)
    anyb = bought.any(1)
    uid = st.uid[a]
    cont = rng.random(n) < _sigmoid(0.4 + 0.7 * (nclick > 0) - 2.0 * anyb - 0.35 * S["p"]
                                    + 0.5 * world.engage[uid])
    cont &= S["p"] + 1 < MAX_PAGES
    S["T"] = base[:, -1] + 3 + rng.integers(5, 30, n) + 10 * nclick
    S["p"] = S["p"] + 1
    return cont


def _run_sessions(world, st, S, rng, recorder, G=None):
    """Runs sessions to their end (the first page's G given for replays); returns end times."""
    end = np.zeros(len(S["a"]), np.int64)
    live = np.arange(len(S["a"]))
    cur = S
    while len(live):
        if G is None:
            G = _gen_page(world, st, cur, rng)
        cont = _respond(world, st, cur, G, rng, recorder)
        end[live] = cur["T"]
        live = live[cont]
        cur = _sub(cur, cont)
        G = None
    return end


def _run_agents(world, st, next_start, t_stop, rng, recorder, on_day=None):
    """Runs all agents' sessions that start before their t_stop, day by day, in rounds."""
    if len(next_start) == 0:
        return
    d0 = int(world.day_of(next_start.min()))
    d1 = int((int(np.max(t_stop)) - 1 - world.t0) // DAY)
    for d in range(d0, d1 + 1):
        day_end = world.t0 + (d + 1) * DAY
        if on_day is not None:
            on_day(d, "start")
        while True:
            act = np.flatnonzero(next_start < np.minimum(t_stop, day_end))
            if len(act) == 0:
                break
            t = next_start[act]
            S = _session_start(world, st, act, t, rng)
            recorder.session(S)
            end = _run_sessions(world, st, S, rng, recorder)
            next_start[act] = world.next_arrival(end, st.uid[act], rng)
            stopped = getattr(recorder, "stopped", None)
            if stopped is not None:
                next_start[act[stopped[act]]] = NEVER
        if on_day is not None:
            on_day(d, "end")


# ----------------------------------------------------------------------------- recorders

class MainRecorder:
    """Collects the log's rows of a day, the impressions' exact p_click / p_purchase and the
    list snapshots the replays start from."""

    def __init__(self, keep_lists):
        self.keep_lists = keep_lists
        self.next_session = 0
        self.next_list = 0
        self.reset()

    def reset(self):
        self.rows = []    # per page: dict of arrays
        self.imps = []
        self.lists = []

    def session(self, S):
        n = len(S["a"])
        S["sid"] = np.arange(self.next_session, self.next_session + n)
        self.next_session += n

    def page(self, st, S, G, base, click, carted, bought, qty):
        n = len(S["a"])
        a = S["a"]
        uid = st.uid[a]
        sid = S["sid"]
        lid = np.arange(self.next_list, self.next_list + n)
        self.next_list += n
        cols = {k: [] for k in ("ts", "user", "session", "type", "item", "query", "pos", "qty", "slot")}

        def add(mask2d, ts, typ, item, query, pos, q, slot):
            r, c = np.nonzero(mask2d)
            cols["ts"].append(ts[r, c])
            cols["user"].append(uid[r])
            cols["session"].append(sid[r])
            cols["type"].append(np.full(len(r), typ, np.int8))
            cols["item"].append(item[r, c])
            cols["query"].append(query[r, c])
            cols["pos"].append(pos[r, c])
            cols["qty"].append(q[r, c])
            cols["slot"].append(slot[r, c])

        E = contract.EVENT_INDEX
        one = np.ones((n, 1), bool)
        T = G["T"][:, None]
        neg = np.full((n, LIST), -1, np.int64)
        slot = lid[:, None] * LIST + np.arange(LIST)[None, :]
        add(one & (G["kind"] == 0)[:, None], T, E["search"], neg[:, :1], G["qkey"][:, None],
            neg[:, :1], neg[:, :1], neg[:, :1])
        qk = np.broadcast_to(G["qkey"][:, None], (n, LIST))
        add(G["ok"], np.broadcast_to(T + 1, (n, LIST)), E["impression"], G["items"], qk,
            np.broadcast_to(np.arange(LIST), (n, LIST)), neg, slot)
        add(click, base, E["click"], G["items"], neg, neg, neg, neg)
        add(carted, base + 1, E["cart"], G["items"], neg, neg, neg, neg)
        add(bought, base + 2, E["purchase"], G["items"], neg, neg, qty, neg)
        self.rows.append({k: np.concatenate(v) for k, v in cols.items()})
        q = G["c"] * G["cart"] * G["buy"]
        r, c = np.nonzero(G["ok"])
        self.imps.append(dict(slot=slot[r, c], p_click=G["c"][r, c], p_purchase=q[r, c]))
        if self.keep_lists:
            snap = st.take(a)
            self.lists.append(dict(lid=lid, state=snap, S={k: v.copy() for k, v in S.items()},
                                   G={k: v.copy() for k, v in G.items()}))


class WorldRecorder:
    """Expected purchased quantities (user, item, time, E[qty] P(buy)) of a world replay."""

    def __init__(self):
        self.parts = []

    def session(self, S):
        pass

    def page(self, st, S, G, base, click, carted, bought, qty):
        q = G["c"] * G["cart"] * G["buy"] * (1 + G["muq"])
        r, c = np.nonzero(G["ok"] & (q > 0))
        self.parts.append((st.uid[S["a"]][r], G["items"][r, c], base[r, c] + 2, q[r, c]))

    def arrays(self):
        if not self.parts:
            e = np.zeros(0, np.int64)
            return e, e, e, np.zeros(0)
        return tuple(np.concatenate(x) for x in zip(*self.parts))


class ListRecorder:
    """Rao-Blackwellised first-purchase masses and own expected demand of list replays."""

    KEEP = 0.25

    def __init__(self, list_of_agent, t_imp, h_stop, d_stop, list_items, num_lists, rng):
        self.list_of_agent = list_of_agent
        self.t_imp, self.h_stop, self.d_stop = t_imp, h_stop, d_stop
        self.list_items = list_items          # per list: (L, LIST) item ids (-1 none)
        self.alive = np.ones(len(list_of_agent), bool)
        self.weight = np.ones(len(list_of_agent))
        self.stopped = np.zeros(len(list_of_agent), bool)
        self.rng = rng
        self.own = np.zeros((num_lists, LIST))
        self.parts = []

    def session(self, S):
        pass

    def page(self, st, S, G, base, click, carted, bought, qty):
        a = S["a"]
        lst = self.list_of_agent[a]
        q = np.where(G["ok"], G["c"] * G["cart"] * G["buy"], 0.0)
        tb = base + 2
        surv = np.cumprod(np.concatenate([np.ones((len(a), 1)), 1 - q[:, :-1]], 1), 1)
        inside = (tb > self.t_imp[a][:, None]) & (tb <= self.h_stop[a][:, None])
        # Given that this page holds the replay's first purchase, which item it was:
        # P(first is j | some purchase on the page) = surv_j q_j / sum_i surv_i q_i.
        first = surv * q
        p_any = first.sum(1, keepdims=True)
        hit = (self.alive[a] & bought.any(1))[:, None]
        mass = np.where(hit, first / np.maximum(p_any, 1e-300), 0.0) * inside
        r, c = np.nonzero(mass > 0)
        self.parts.append((lst[r], G["items"][r, c], mass[r, c]))
        died = self.alive[a] & bought.any(1)
        self.alive[a] &= ~bought.any(1)
        dq = q * (1 + G["muq"]) * ((tb > self.t_imp[a][:, None]) & (tb <= self.d_stop[a][:, None]))
        dq *= self.weight[a][:, None]
        # Russian roulette: after the first purchase only the own-demand part still needs the
        # future, so keep a dead replay with probability KEEP and weight it by 1/KEEP (unbiased).
        if died.any():
            ad = a[died]
            keep = self.rng.random(len(ad)) < self.KEEP
            self.weight[ad] = np.where(keep, self.weight[ad] / self.KEEP, 0.0)
            self.stopped[ad[~keep]] = True
        match = G["items"][:, :, None] == self.list_items[lst][:, None, :]
        match &= G["ok"][:, :, None]
        np.add.at(self.own, lst, (dq[:, :, None] * match).sum(1))

    def masses(self):
        """(list, item, mass) summed over duplicates."""
        if not self.parts:
            e = np.zeros(0, np.int64)
            return e, e, np.zeros(0)
        lst, item, mass = (np.concatenate(x) for x in zip(*self.parts))
        key = lst * np.int64(1 << 24) + item
        uk, inv = np.unique(key, return_inverse=True)
        return uk >> 24, uk & ((1 << 24) - 1), np.bincount(inv, weights=mass)


# ----------------------------------------------------------------------------- replays

def _list_replays(world, state, S, G, n_rep, H, D, rng):
    """Replays each list's user n_rep times from the state at the list (responses redrawn).

    Returns ((local list, item, first-purchase mass), own expected demand (L, LIST)).
    """
    L = len(state.uid)
    rep = np.repeat(np.arange(L), n_rep)
    st = state.take(rep)
    S = _sub(S, rep)
    S["a"] = np.arange(len(rep))
    list_items = G["items"]
    G = _sub(G, rep)
    t_imp = G["T"] + 1
    h_stop = np.minimum(t_imp + int(round(H * DAY)), world.t_end)
    d_stop = np.minimum(t_imp + int(round(D * DAY)), world.t_end)
    stop = np.maximum(h_stop, d_stop)
    recorder = ListRecorder(rep, t_imp, h_stop, d_stop, list_items, L, rng)
    end = _run_sessions(world, st, S, rng, recorder, G=G)
    next_start = world.next_arrival(end, st.uid, rng)
    next_start[recorder.stopped] = NEVER
    _run_agents(world, st, next_start, stop, rng, recorder)
    lst, item, mass = recorder.masses()
    return (lst, item, mass / n_rep), recorder.own / n_rep


def _world_replay(world, snap, d, n_rep, D, rng):
    """Replays all users from 00:00 of day d for D+1 days; expected purchase records."""
    U = len(snap.uid)
    rep = np.tile(np.arange(U), n_rep)
    st = snap.take(rep)
    t = world.t0 + d * DAY
    stop = min(t + int(round((D + 1) * DAY)), world.t_end)
    next_start = world.next_arrival(np.full(len(rep), t, np.int64), st.uid, rng)
    rec = WorldRecorder()
    _run_agents(world, st, next_start, np.full(len(rep), stop, np.int64), rng, rec)
    return rec.arrays()


def _others_demand(records, n_rep, user, item, t, D, t_end):
    """Sum over records of the item in (t, t+D], minus the impression user's own, / n_rep."""
    ru, ri, rt, rq = records
    out = np.zeros(len(user))
    if len(ru) == 0:
        return out
    stop = np.minimum(t + int(round(D * DAY)), t_end)
    span = np.int64(1 << 22)
    base_t = int(rt.min()) - 1
    toff = rt - base_t

    def window_sum(group_r, group_q):
        key = group_r * span + toff
        order = np.argsort(key, kind="stable")
        k = key[order]
        cum = np.concatenate([[0.0], np.cumsum(rq[order])])
        lo = np.searchsorted(k, group_q * span + np.clip(t - base_t, -1, span - 1), side="right")
        hi = np.searchsorted(k, group_q * span + np.clip(stop - base_t, -1, span - 1), side="right")
        return cum[hi] - cum[lo]

    NI = np.int64(item.max() + 1 if len(item) else 1)
    NI = max(NI, np.int64(ri.max() + 1))
    total = window_sum(ri, item)
    own = window_sum(ru * NI + ri, user * NI + item)
    return np.maximum(total - own, 0.0) / n_rep


# ----------------------------------------------------------------------------- writing

def _items_table(world):
    rng = np.random.default_rng([0, 7])
    codes = [f"{chr(65 + a)}{b}" for a, b in zip(rng.integers(0, 26, world.num_items),
                                                  rng.integers(1, 1000, world.num_items))]
    titles = [f"{world.brand_names[b]} {world.attr_words[a1]} {world.attr_words[a2]} "
              f"{world.words[c][0]} {code}"
              for b, a1, a2, c, code in zip(world.ibrand, world.attr1, world.attr2, world.icat, codes)]
    return pa.table({
        "item_id": [f"i{i}" for i in range(world.num_items)],
        "title": titles,
        "category": [CATEGORIES[c][0] for c in world.icat],
        "brand": [world.brand_names[b] for b in world.ibrand],
        "price": pa.array(world.price, pa.float64()),
    })


EVENT_NAMES = np.array(contract.EVENT_TYPES, dtype=object)


def _events_table(world, rows, first_id, query_text):
    n = len(rows["ts"])
    ids = np.char.add("e", np.arange(first_id, first_id + n).astype(str))
    qtext = np.array([query_text.get(k, "") for k in rows["query"].tolist()], dtype=object)
    item = np.where(rows["item"] >= 0, np.char.add("i", rows["item"].astype(str)), "")
    is_imp = rows["type"] == contract.EVENT_INDEX["impression"]
    is_buy = rows["type"] == contract.EVENT_INDEX["purchase"]
    return pa.table({
        "event_id": pa.array(ids.astype(object), pa.string()),
        "user_id": pa.array(np.char.add("u", rows["user"].astype(str)).astype(object), pa.string()),
        "session_id": pa.array(np.char.add("s", rows["session"].astype(str)).astype(object), pa.string()),
        "timestamp": pa.array(rows["ts"], pa.int64()),
        "event": pa.array(EVENT_NAMES[rows["type"]], pa.string()),
        "query": pa.array(qtext, pa.string()),
        "item_id": pa.array(item.astype(object), pa.string()),
        "position": pa.array(rows["pos"], pa.int64(), mask=~is_imp),
        "quantity": pa.array(rows["qty"], pa.int64(), mask=~is_buy),
    })


class _TableWriter:
    def __init__(self, path, fmt):
        self.path, self.fmt, self.w = path, fmt, None

    def write(self, table):
        if self.w is None:
            self.w = (pq.ParquetWriter(self.path, table.schema) if self.fmt == "parquet"
                      else pacsv.CSVWriter(self.path, table.schema))
        self.w.write_table(table)

    def close(self):
        if self.w is not None:
            self.w.close()


def _write_table(table, path, fmt):
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)


# ----------------------------------------------------------------------------- main entry

def simulate(output_dir, num_users=DEFAULTS["num_users"], num_items=DEFAULTS["num_items"],
             num_brands=DEFAULTS["num_brands"], days=DEFAULTS["days"], seed=DEFAULTS["seed"],
             format=DEFAULTS["format"], eval_fraction=DEFAULTS["eval_fraction"],
             num_price_ranges=DEFAULTS["num_price_ranges"],
             price_horizon_days=DEFAULTS["price_horizon_days"],
             demand_horizon_days=DEFAULTS["demand_horizon_days"],
             oracle_replays=DEFAULTS["oracle_replays"], demand_replays=DEFAULTS["demand_replays"],
             sessions_per_day=DEFAULTS["sessions_per_day"],
             repeat_purchase=DEFAULTS["repeat_purchase"], brand_echo=DEFAULTS["brand_echo"],
             drift=DEFAULTS["drift"], overwrite=True, verbose=False):
    """Simulates the shop and writes the contract folder + oracle; returns a summary dict."""
    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be parquet or csv, got {format!r}")
    if num_items < NUM_CATS or num_users < 1 or days < 1 or num_brands < 3:
        raise ValueError("need num_items >= 20, num_users >= 1, days >= 1, num_brands >= 3")
    if not np.isfinite(brand_echo):
        raise ValueError(f"brand_echo must be a finite number, got {brand_echo!r}")
    if not (np.isfinite(drift) and drift >= 0):
        raise ValueError(f"drift must be a finite number >= 0 (0: no drift), got {drift!r}")
    t_start = time.time()
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{output_dir}.tmp-{os.getpid()}-{int(t_start * 1000) % 100000}"
    os.makedirs(tmp)
    try:
        summary = _simulate_into(tmp, num_users, num_items, num_brands, days, seed, format,
                                 eval_fraction, num_price_ranges, price_horizon_days,
                                 demand_horizon_days, oracle_replays, demand_replays,
                                 sessions_per_day, repeat_purchase, brand_echo, drift,
                                 verbose)
        if os.path.exists(output_dir):
            if not overwrite:
                shutil.rmtree(tmp)
                return dict(summary, output_dir=output_dir, kept_existing=True)
            old = f"{output_dir}.old-{os.getpid()}"
            os.rename(output_dir, old)
            os.rename(tmp, output_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["output_dir"] = output_dir
    summary["seconds"] = round(time.time() - t_start, 2)
    return summary


def _simulate_into(out, num_users, num_items, num_brands, days, seed, fmt, eval_fraction, K, H, D,
                   oracle_replays, demand_replays, sessions_per_day, repeat_purchase, brand_echo,
                   drift, verbose):
    extra = int(np.ceil(max(H, D))) + 2
    world = World(num_users, num_items, num_brands, days, extra, seed, sessions_per_day,
                  repeat_purchase, brand_echo, drift)
    rng = np.random.default_rng([seed, 0])
    use_oracle = oracle_replays > 0
    st = State.initial(world)
    rec = MainRecorder(keep_lists=use_oracle)
    next_start = world.next_arrival(np.full(world.num_users, world.t0, np.int64), st.uid, rng)
    t_stop = np.full(world.num_users, world.t_end, np.int64)
    ext = "parquet" if fmt == "parquet" else "csv"
    writer = _TableWriter(os.path.join(out, f"events.{ext}"), fmt)
    query_text = {}
    counters = dict(events=0)
    type_counts = np.zeros(len(contract.EVENT_TYPES), np.int64)
    oracle_parts = []      # per day dict
    list_masses = []
    ts_all_min, ts_all_max = None, None

    def on_day(d, phase):
        nonlocal ts_all_min, ts_all_max
        if phase == "start":
            rec.reset()
            rec.day_snapshot = st.take(np.arange(world.num_users)) if use_oracle else None
            return
        if not rec.rows:
            return
        rows = {k: np.concatenate([r[k] for r in rec.rows]) for k in rec.rows[0]}
        order = np.argsort(rows["ts"], kind="stable")
        rows = {k: v[order] for k, v in rows.items()}
        assert rows["ts"].max() < world.t0 + (d + 1) * DAY, "a session crossed midnight"
        new_keys = np.unique(rows["query"][rows["query"] >= 0])
        new_keys = new_keys[[k not in query_text for k in new_keys.tolist()]]
        query_text.update(zip(new_keys.tolist(), render_queries(world, new_keys)))
        first = counters["events"]
        writer.write(_events_table(world, rows, first, query_text))
        counters["events"] += len(rows["ts"])
        type_counts[:] += np.bincount(rows["type"], minlength=len(type_counts))
        ts_all_min = rows["ts"].min() if ts_all_min is None else ts_all_min
        ts_all_max = rows["ts"].max()
        # Impression rows -> global event index, aligned with the p's.
        imp_rows = np.flatnonzero(rows["slot"] >= 0)
        slot = rows["slot"][imp_rows]
        imps = {k: np.concatenate([x[k] for x in rec.imps]) for k in rec.imps[0]}
        o = np.argsort(imps["slot"])
        pos = np.searchsorted(imps["slot"][o], slot)
        part = dict(event=first + imp_rows, slot=slot, p_click=imps["p_click"][o][pos],
                    p_purchase=imps["p_purchase"][o][pos], user=rows["user"][imp_rows],
                    item=rows["item"][imp_rows], ts=rows["ts"][imp_rows], day=d)
        seen_day = np.unique(rows["item"][rows["item"] >= 0])
        part["seen"] = seen_day
        if use_oracle:
            rrng = np.random.default_rng([seed, 2, d])
            # Own-user replays from each list, in chunks of lists.
            lists = rec.lists
            lid = np.concatenate([x["lid"] for x in lists])
            state = State(**{k: np.concatenate([getattr(x["state"], k) for x in lists])
                             for k in State.FIELDS})
            Sd = {k: np.concatenate([x["S"][k] for x in lists]) for k in lists[0]["S"] if k != "sid"}
            Gd = {k: np.concatenate([x["G"][k] for x in lists]) for k in lists[0]["G"]}
            chunk = max(1, 40000 // oracle_replays)
            own = np.zeros((len(lid), LIST))
            for s in range(0, len(lid), chunk):
                idx = np.arange(s, min(s + chunk, len(lid)))
                masses, own_c = _list_replays(world, state.take(idx), _sub(Sd, idx), _sub(Gd, idx),
                                              oracle_replays, H, D, rrng)
                list_masses.append((lid[idx][masses[0]], masses[1], masses[2]))
                own[idx] = own_c
            o2 = np.argsort(lid)
            k = np.searchsorted(lid[o2], part["slot"] // LIST)
            part["own_demand"] = own[o2][k, part["slot"] % LIST]
            # Others: whole-world replays from 00:00.
            if demand_replays > 0:
                wrng = np.random.default_rng([seed, 3, d])
                recs = _world_replay(world, rec.day_snapshot, d, demand_replays, D, wrng)
                part["others_demand"] = _others_demand(recs, demand_replays, part["user"],
                                                       part["item"], part["ts"], D, world.t_end)
            else:
                part["others_demand"] = np.full(len(slot), np.nan)
        oracle_parts.append(part)
        if verbose:
            print(f"day {d}: {counters['events']} events, {time.time() - t0:.1f}s", flush=True)

    t0 = time.time()
    rec.day_snapshot = None
    _run_agents(world, st, next_start, t_stop, rng, rec, on_day=on_day)
    writer.close()
    if counters["events"] == 0:
        raise RuntimeError("the simulation produced no events; raise num_users or days")
    _write_table(_items_table(world), os.path.join(out, f"items.{ext}"), fmt)

    # Label config: split and price edges exactly as contract.training_price_edges does.
    P = {k: np.concatenate([p[k] for p in oracle_parts]) for k in
         ("event", "slot", "p_click", "p_purchase", "user", "item", "ts")}
    cut = contract.split_time(np.array([ts_all_min, ts_all_max]), eval_fraction)
    seen_before = np.zeros(world.num_items, bool)
    # Distinct items in events before the cut: every item row happens on its day; days are whole.
    for p in oracle_parts:
        if world.t0 + (p["day"] + 1) * DAY <= cut:
            seen_before[p["seen"]] = True
    items_seen = np.flatnonzero(seen_before) if seen_before.any() else np.arange(world.num_items)
    edges = contract.price_edges(world.price[items_seen], K)
    bucket = contract.price_bucket(world.price, edges)

    n_imp = len(P["event"])
    oracle = {"event_id": pa.array(np.char.add("e", P["event"].astype(str)).astype(object), pa.string()),
              "p_click": P["p_click"], "p_purchase": P["p_purchase"]}
    if use_oracle:
        lst = np.concatenate([m[0] for m in list_masses])
        item = np.concatenate([m[1] for m in list_masses])
        mass = np.concatenate([m[2] for m in list_masses])
        n_lists = rec.next_list
        pr = np.zeros((n_lists, K))
        np.add.at(pr, (lst, bucket[item]), mass)
        pr_imp = pr[P["slot"] // LIST]
        demand = (np.concatenate([p["own_demand"] for p in oracle_parts])
                  + np.concatenate([p["others_demand"] for p in oracle_parts]))
    else:
        pr_imp = np.full((n_imp, K), np.nan)
        demand = np.full(n_imp, np.nan)
    for k in range(K):
        oracle[f"p_price_range_{k}"] = pr_imp[:, k]
    oracle["p_price_range_any"] = pr_imp.sum(1)
    oracle["demand"] = demand
    order = np.argsort(P["event"])
    table = pa.table({k: (v.take(pa.array(order)) if isinstance(v, pa.Array) else v[order])
                      for k, v in oracle.items()})
    pq.write_table(table, os.path.join(out, "oracle.parquet"))
    meta = dict(num_price_ranges=K, price_horizon_days=H, demand_horizon_days=D,
                eval_fraction=eval_fraction, split_time=int(cut), price_edges=edges.tolist(),
                oracle_replays=oracle_replays, demand_replays=demand_replays, seed=seed,
                num_users=num_users, num_items=num_items, num_brands=num_brands, days=days,
                start_time=START_TIME, sessions_per_day=sessions_per_day,
                repeat_purchase=bool(repeat_purchase), brand_echo=float(brand_echo),
                **({"drift": float(drift)} if drift else {}),
                notes="p_click/p_purchase exact; p_price_range_* and demand: Rao-Blackwellised "
                      "Monte Carlo (see zoo/data/simulate.py docstring); NaN when replays are 0.")
    with open(os.path.join(out, "oracle_meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    counts = {name: int(c) for name, c in zip(contract.EVENT_TYPES, type_counts)}
    return dict(num_events=int(counters["events"]), num_impressions=int(n_imp),
                num_sessions=int(rec.next_session), num_lists=int(rec.next_list),
                num_users=num_users, num_items=num_items, event_counts=counts,
                mean_p_click=float(P["p_click"].mean()), mean_p_purchase=float(P["p_purchase"].mean()),
                split_time=int(cut), price_edges=edges.tolist())


def default_data_dir():
    """Where the default data set lives: $ECOM_ZOO_CACHE (or ~/.cache/ecom_zoo)/simulated/
    DEFAULT_VERSION."""
    root = os.environ.get("ECOM_ZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ecom_zoo")
    return os.path.join(root, "simulated", DEFAULT_VERSION)


def ensure_default_dataset(verbose=False):
    """Simulates the default data set into `default_data_dir()` once; returns the folder."""
    folder = default_data_dir()
    if not os.path.exists(os.path.join(folder, "oracle_meta.json")):
        simulate(folder, overwrite=False, verbose=verbose)
    return folder


def main(argv):
    del argv
    from absl import flags
    F = flags.FLAGS
    summary = simulate(F.output_dir, num_users=F.num_users, num_items=F.num_items,
                       num_brands=F.num_brands, days=F.days, seed=F.seed, format=F.format,
                       eval_fraction=F.eval_fraction, num_price_ranges=F.num_price_ranges,
                       price_horizon_days=F.price_horizon_days,
                       demand_horizon_days=F.demand_horizon_days,
                       oracle_replays=F.oracle_replays, demand_replays=F.demand_replays,
                       sessions_per_day=F.sessions_per_day,
                       repeat_purchase=F.repeat_purchase, brand_echo=F.brand_echo,
                       drift=F.drift, verbose=F.verbose)
    print(json.dumps(summary, indent=1))


def _define_flags():
    from absl import flags
    flags.DEFINE_string("output_dir", None, "Folder to write (replaced atomically).")
    flags.DEFINE_integer("num_users", DEFAULTS["num_users"], "Users.")
    flags.DEFINE_integer("num_items", DEFAULTS["num_items"], "Items in the catalogue.")
    flags.DEFINE_integer("num_brands", DEFAULTS["num_brands"], "Brands.")
    flags.DEFINE_integer("days", DEFAULTS["days"], "Days of log, from Monday 2026-01-05 UTC.")
    flags.DEFINE_integer("seed", DEFAULTS["seed"], "Random seed.")
    flags.DEFINE_enum("format", DEFAULTS["format"], ["parquet", "csv"], "Table format.")
    flags.DEFINE_float("eval_fraction", DEFAULTS["eval_fraction"], "Eval share of days (oracle meta).")
    flags.DEFINE_integer("num_price_ranges", DEFAULTS["num_price_ranges"], "K price ranges.")
    flags.DEFINE_float("price_horizon_days", DEFAULTS["price_horizon_days"], "H days.")
    flags.DEFINE_float("demand_horizon_days", DEFAULTS["demand_horizon_days"], "D days.")
    flags.DEFINE_integer("oracle_replays", DEFAULTS["oracle_replays"],
                         "Replays per list for the price-range / own-demand oracle; 0 skips the "
                         "Monte Carlo oracle columns (NaN).")
    flags.DEFINE_integer("demand_replays", DEFAULTS["demand_replays"],
                         "Whole-world replays per day for the others' part of the demand oracle.")
    flags.DEFINE_float("sessions_per_day", DEFAULTS["sessions_per_day"], "Mean sessions per user-day.")
    flags.DEFINE_bool("repeat_purchase", DEFAULTS["repeat_purchase"],
                      "Consumables bought again on per-user cycles (see the docstring).")
    flags.DEFINE_float("brand_echo", DEFAULTS["brand_echo"],
                       "Planted signal: click utility added while the user bought the item's "
                       "brand within 3 days (0: off; see the docstring).")
    flags.DEFINE_float("drift", DEFAULTS["drift"],
                       "Drift of the shop over time: items launched and retired, seasonal "
                       "category demand, drifting tastes (0: none; 1: the drifting shop of "
                       "the daily-training comparison; see the docstring).")
    flags.DEFINE_bool("verbose", False, "Progress per day.")
    flags.mark_flag_as_required("output_dir")


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
