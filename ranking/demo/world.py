"""A deterministic synthetic rewards-ranking world: the demo's users, items and requests.

A loyalty programme's members (users "u0".."u{n-1}") redeem points for rewards (items
"i0".."i{m-1}"): dining, travel, coffee, gift cards... Each request ranks candidate rewards for
one member in a context (hour, day, device, ...). The world has 64 observable features in the
shape of the benchmarks' reference scenario:

    24 user features    u_*   (tier and region are small integer codes; u_age, u_avg_redeem_price
                               and the u_pref_* block of new members are NaN)
    32 item features    i_*   (i_popularity, a percentile in (0, 1), is the bundle's cheap prior;
                               i_category and i_brand_tier are integer codes; i_rating and
                               i_ctr_7d are NaN when there is no data yet)
     8 context features c_*   (hour, day of week, device code, ...; c_days_since_visit is NaN
                               on a first visit)

The hidden preference of a member for a reward (see `_utility`) is the dot product of latent
user and item vectors that the u_pref_* / i_emb_* features observe only partially and with
noise, plus latent popularity and quality, affordability (points balance x promotion against
price), price fit, time-of-day / weekend / device interactions with the category, tier fit and
a novelty taste, plus per-impression noise. Graded relevance 0-4 cuts that utility at fixed
quantiles (about 50 / 25 / 13 / 8 / 4 %) calibrated once per world.

Ids are ordered by popularity: "i0" is the most popular item and "u0" the most active user, so
a Zipf-distributed load generator hits the same hot ids a real cache would.

Determinism: every number comes from numpy's PCG64 `Generator` (whose streams are stable across
platforms) through element-wise IEEE arithmetic in a fixed order: no BLAS, no threads, no
transcendental functions (whose SIMD and libm implementations may differ in the last bit).
So the same seed gives bit-identical arrays on any machine with a compatible numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from ranking.demo.sizes import DEMO

__all__ = [
    "CONTEXT_COLUMNS",
    "ITEM_COLUMNS",
    "USER_COLUMNS",
    "ExampleRequest",
    "QuerySample",
    "World",
    "example_request",
    "make_world",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

LATENT_DIM = 16
N_CATEGORIES = 12
N_PREF = 14
N_EMB = 21

USER_COLUMNS: tuple[str, ...] = (
    "u_age",  # years; NaN for ~8 % (not given)
    "u_tenure_days",
    "u_tier",  # loyalty tier code 0..3
    "u_region",  # region code 0..7
    "u_sessions_7d",
    "u_points_balance",
    "u_redemptions_90d",
    "u_spend_90d",  # points spent in 90 days
    "u_push_opt_in",  # 0 / 1
    "u_avg_redeem_price",  # NaN without redemptions
    *(f"u_pref_{j}" for j in range(N_PREF)),  # noisy taste projections; NaN for new members
)
ITEM_COLUMNS: tuple[str, ...] = (
    "i_popularity",  # percentile rank of observed popularity, in (0, 1)
    "i_price_points",
    "i_category",  # category code 0..11 (0 dining, 1 travel, 2 entertainment, 3 coffee, ...)
    "i_brand_tier",  # 0..3
    "i_age_days",
    "i_discount_pct",
    "i_rating",  # 1..5; NaN without ratings
    "i_n_ratings",
    "i_ctr_7d",  # NaN for items younger than 7 days
    "i_stock",
    "i_is_digital",  # 0 / 1
    *(f"i_emb_{j}" for j in range(N_EMB)),  # noisy content-embedding projections
)
CONTEXT_COLUMNS: tuple[str, ...] = (
    "c_hour",  # 0..23
    "c_dow",  # 0 = Monday .. 6
    "c_is_weekend",  # 0 / 1
    "c_device",  # 0 iOS, 1 Android, 2 web
    "c_session_depth",  # screens seen before this one
    "c_days_since_visit",  # NaN on a first visit
    "c_from_push",  # 0 / 1: the session started from a push notification
    "c_promo_multiplier",  # 1, 2 or 3: points multiplier promotion in force
)

# Relevance grades cut the utility at these quantiles (of a calibration sample of the world).
_GRADE_QUANTILES = (0.50, 0.75, 0.88, 0.96)
_NOISE_SD = 0.6
# Hour-of-day traffic shape: quiet nights, lunch and evening peaks.
_HOUR_WEIGHTS = (
    *(1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 8),  # 0..11
    *(9, 8, 6, 6, 6, 7, 9, 10, 9, 7, 4, 2),  # 12..23
)
_DEVICE_WEIGHTS = (0.45, 0.40, 0.15)
_PROMO_WEIGHTS = (0.80, 0.15, 0.05)
_TIER_WEIGHTS = (0.50, 0.30, 0.15, 0.05)
_CATEGORY_WEIGHTS = (14, 8, 10, 12, 9, 8, 7, 7, 6, 7, 6, 6)
_CATEGORY_BASE_PRICE = (80, 900, 200, 40, 300, 150, 500, 120, 250, 60, 350, 100)


def _draw_codes(rng: np.random.Generator, weights: tuple[float, ...], size: int) -> I64:
    """Integer codes 0..len(weights)-1 drawn with the given relative weights."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.searchsorted(cdf / cdf[-1], rng.random(size), side="right").astype(np.int64)


def _project(latent: F64, mixing: F64) -> F64:
    """latent @ mixing as a fixed-order sum of element-wise products (no BLAS, so exact bits)."""
    out = np.zeros((latent.shape[0], mixing.shape[1]), dtype=np.float64)
    for j in range(latent.shape[1]):
        out += latent[:, j : j + 1] * mixing[j]
    return out


def _percentile_rank(values: F64) -> F64:
    """(rank + 0.5) / n with a stable sort: a deterministic value in (0, 1)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.arange(values.shape[0], dtype=np.float64)
    return np.asarray((ranks + 0.5) / values.shape[0], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class _Hidden:
    """What generates relevance but is never served as a feature."""

    user_latent: F64  # (n_users, LATENT_DIM)
    user_price_pref: F64  # (n_users,) typical price in points
    user_activity: F64  # (n_users,) > 0, relative request rate
    item_latent: F64  # (n_items, LATENT_DIM)
    item_pop: F64  # (n_items,) latent popularity, ~N(0, 1)
    item_quality: F64  # (n_items,)
    item_draw_cdf: F64  # (n_items,) cumulative weights of popularity-biased candidate retrieval
    thresholds: F64  # (4,) utility cuts for grades 1..4


@dataclass(frozen=True, eq=False)
class QuerySample:
    """Sampled requests with graded relevance: query q ranks items item_idx[q] for user_idx[q].

    user_idx: (n_queries,) int64 rows of `World.user_matrix`.
    item_idx: (n_queries, candidates) int64 rows of `World.item_matrix`, distinct per query.
    context: (n_queries, 8) float32 in `CONTEXT_COLUMNS` order (NaN where missing).
    relevance: (n_queries, candidates) int8 grades 0..4.
    """

    user_idx: I64
    item_idx: I64
    context: F32
    relevance: npt.NDArray[np.int8]

    @property
    def n_queries(self) -> int:
        return int(self.item_idx.shape[0])

    @property
    def candidates_per_query(self) -> int:
        return int(self.item_idx.shape[1])

    def group_sizes(self) -> I64:
        """Rows per query, as LightGBM's `group` wants them."""
        return np.full(self.n_queries, self.candidates_per_query, dtype=np.int64)


@dataclass(frozen=True)
class ExampleRequest:
    """One demo request: what `ranking rank` sends and the README shows."""

    user_id: str
    candidate_ids: tuple[str, ...]
    context: dict[str, float]  # missing context values are left out (the bundle's default applies)


@dataclass(frozen=True, eq=False)
class World:
    """The demo world. Matrices are C-contiguous float32 with NaN for missing values; row r of
    `user_matrix` belongs to `user_ids[r]` and its columns are `user_columns` (same for items)."""

    seed: int
    user_ids: tuple[str, ...]
    user_columns: tuple[str, ...]
    user_matrix: F32
    item_ids: tuple[str, ...]
    item_columns: tuple[str, ...]
    item_matrix: F32
    context_columns: tuple[str, ...]
    _hidden: _Hidden = field(repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def feature_row_order(self) -> tuple[str, ...]:
        """The 64 feature names in model order: user, then item, then context columns."""
        return self.user_columns + self.item_columns + self.context_columns

    def feature_matrix(self, sample: QuerySample) -> F32:
        """Rows (query-major, then candidate) in `feature_row_order`: the model's input.

        float32 like the store; casting to float64 for scoring is exact.
        """
        q, c = sample.item_idx.shape
        out = np.empty((q, c, len(self.feature_row_order())), dtype=np.float32)
        nu, ni = len(self.user_columns), len(self.item_columns)
        out[:, :, :nu] = self.user_matrix[sample.user_idx][:, None, :]
        out[:, :, nu : nu + ni] = self.item_matrix[sample.item_idx]
        out[:, :, nu + ni :] = sample.context[:, None, :]
        return out.reshape(q * c, -1)

    def sample_queries(
        self, n_queries: int, candidates_per_query: int = 200, seed: int = 0
    ) -> QuerySample:
        """Draw requests and label their candidates with graded relevance (deterministic).

        Users are drawn in proportion to their activity; candidates are what a retrieval stage
        would return: half popularity-biased, half uniform, distinct within a request.
        """
        if n_queries < 1 or candidates_per_query < 1:
            raise ValueError("n_queries and candidates_per_query must be >= 1")
        if candidates_per_query > self.n_items:
            raise ValueError(
                f"{candidates_per_query} candidates per query; the world has {self.n_items} items"
            )
        rng = np.random.default_rng([self.seed, 0x51, seed])
        users, items, context = self._draw_requests(rng, n_queries, candidates_per_query)
        utility = _utility(self, users, items, context)
        utility += _NOISE_SD * rng.standard_normal(utility.shape)
        grades = np.searchsorted(self._hidden.thresholds, utility, side="right")
        return QuerySample(users, items, context, grades.astype(np.int8))

    def _draw_requests(
        self, rng: np.random.Generator, n_queries: int, candidates: int
    ) -> tuple[I64, I64, F32]:
        hidden = self._hidden
        user_cdf = np.cumsum(hidden.user_activity)
        users = np.searchsorted(user_cdf / user_cdf[-1], rng.random(n_queries), side="right")
        items = np.empty((n_queries, candidates), dtype=np.int64)
        n_draw = 2 * candidates + 16
        for q in range(n_queries):
            popular = rng.random(n_draw) < 0.5
            by_pop = np.searchsorted(hidden.item_draw_cdf, rng.random(n_draw), side="right")
            uniform = rng.integers(0, self.n_items, n_draw)
            row = np.where(popular, by_pop, uniform)
            row = _first_unique(row)
            if row.shape[0] < candidates:  # small worlds: top up with a random permutation
                row = _first_unique(np.concatenate([row, rng.permutation(self.n_items)]))
            items[q] = row[:candidates]
        return users.astype(np.int64), items, _draw_context(rng, n_queries)


def _first_unique(row: I64) -> I64:
    """Distinct values of `row` in order of first appearance."""
    _, first = np.unique(row, return_index=True)
    return row[np.sort(first)]


def _draw_context(rng: np.random.Generator, n: int) -> F32:
    hour = _draw_codes(rng, tuple(float(w) for w in _HOUR_WEIGHTS), n)
    dow = rng.integers(0, 7, n)
    device = _draw_codes(rng, _DEVICE_WEIGHTS, n)
    depth = rng.geometric(0.4, n) - 1
    first_visit = rng.random(n) < 0.15
    days_since = np.floor(30.0 * rng.random(n) ** 3)
    from_push = rng.random(n) < 0.1
    promo = _draw_codes(rng, _PROMO_WEIGHTS, n) + 1
    ctx = np.empty((n, len(CONTEXT_COLUMNS)), dtype=np.float64)
    ctx[:, 0] = hour
    ctx[:, 1] = dow
    ctx[:, 2] = dow >= 5
    ctx[:, 3] = device
    ctx[:, 4] = depth
    ctx[:, 5] = np.where(first_visit, np.nan, days_since)
    ctx[:, 6] = from_push
    ctx[:, 7] = promo
    return ctx.astype(np.float32)


def _utility(world: World, users: I64, items: I64, context: F32) -> F64:
    """The hidden preference of users[q] for items[q, j] in context[q], before noise.

    Reads observable columns where the truth is observable (price, category, tier...) and the
    hidden state for the rest. Shapes: users (q,), items (q, c), context (q, 8) -> (q, c).
    """
    h = world._hidden
    u = world.user_matrix[users].astype(np.float64)  # (q, 24)
    it = world.item_matrix[items].astype(np.float64)  # (q, c, 32)
    ctx = context.astype(np.float64)

    def ucol(name: str) -> F64:
        return u[:, USER_COLUMNS.index(name), None]

    def icol(name: str) -> F64:
        return it[:, :, ITEM_COLUMNS.index(name)]

    def ccol(name: str) -> F64:
        return ctx[:, CONTEXT_COLUMNS.index(name), None]

    # Collaborative taste: <user latent, item latent> / sqrt(d), in a fixed summation order.
    zu, zi = h.user_latent[users], h.item_latent[items]
    taste = np.zeros(items.shape, dtype=np.float64)
    for j in range(LATENT_DIM):
        taste += zu[:, j, None] * zi[:, :, j]
    score = taste * 0.25  # 1 / sqrt(LATENT_DIM)

    score += 0.6 * h.item_pop[items] + 0.3 * h.item_quality[items]

    price = icol("i_price_points")
    budget = ucol("u_points_balance") * ccol("c_promo_multiplier")
    score += 0.5 * np.clip((budget - price) / price, -1.0, 1.0)
    pref = h.user_price_pref[users][:, None]
    score -= 0.4 * np.clip(np.abs(price - pref) / pref, 0.0, 2.0)

    category, hour = icol("i_category"), ccol("c_hour")
    mealtime = ((hour >= 11) & (hour <= 13)) | ((hour >= 18) & (hour <= 20))
    score += np.where(category == 0, np.where(mealtime, 0.9, -0.2), 0.0)
    score += np.where((category == 1) & (ccol("c_is_weekend") > 0), 0.7, 0.0)
    score += np.where((category == 2) & ((hour >= 19) | (hour <= 1)), 0.6, 0.0)
    score += np.where((category == 3) & (hour >= 6) & (hour <= 10), 0.7, 0.0)

    digital, device = icol("i_is_digital") > 0, ccol("c_device")
    score += np.where(digital, np.where(device < 2, 0.4, -0.2), 0.0)
    score += np.where(digital & (ucol("u_age") < 30), 0.3, 0.0)  # NaN age compares False
    score += np.where((ccol("c_from_push") > 0) & (icol("i_discount_pct") > 0), 0.6, 0.0)
    score += 0.25 * (icol("i_brand_tier") - 1.5) * (ucol("u_tier") - 1.0) / 1.5
    novelty = np.minimum(ccol("c_session_depth"), 5.0) / 5.0
    score += 0.5 * novelty * (0.5 - icol("i_popularity"))
    return score


def make_world(n_users: int = DEMO.n_users, n_items: int = DEMO.n_items, seed: int = 0) -> World:
    """Build the world for `seed`: same arguments, bit-identical arrays (about 0.5 s by default)."""
    if n_users < 1 or n_items < 1:
        raise ValueError("n_users and n_items must be >= 1")
    seeds = np.random.SeedSequence(seed).spawn(4)
    shared, user_rng, item_rng, calib_rng = (np.random.default_rng(s) for s in seeds)

    centroids = shared.standard_normal((N_CATEGORIES, LATENT_DIM))
    user_mix = shared.standard_normal((LATENT_DIM, N_PREF)) * 0.25
    item_mix = shared.standard_normal((LATENT_DIM, N_EMB)) * 0.25

    users, user_latent, price_pref, activity = _make_users(user_rng, n_users, user_mix)
    items, item_latent, pop, quality = _make_items(item_rng, n_items, centroids, item_mix)

    # Order ids by popularity / activity so that "i0" and "u0" are the hottest.
    u_order = np.argsort(-activity, kind="stable")
    i_order = np.argsort(-items[:, 0].astype(np.float64), kind="stable")
    popularity = items[i_order, 0].astype(np.float64)
    draw_cdf = np.cumsum(popularity * popularity * popularity)
    hidden = _Hidden(
        user_latent=np.ascontiguousarray(user_latent[u_order]),
        user_price_pref=price_pref[u_order],
        user_activity=activity[u_order],
        item_latent=np.ascontiguousarray(item_latent[i_order]),
        item_pop=pop[i_order],
        item_quality=quality[i_order],
        item_draw_cdf=draw_cdf / draw_cdf[-1],
        thresholds=np.full(4, np.inf),  # calibrated below, once the world can draw requests
    )
    world = World(
        seed=seed,
        user_ids=tuple(f"u{r}" for r in range(n_users)),
        user_columns=USER_COLUMNS,
        user_matrix=np.ascontiguousarray(users[u_order]),
        item_ids=tuple(f"i{r}" for r in range(n_items)),
        item_columns=ITEM_COLUMNS,
        item_matrix=np.ascontiguousarray(items[i_order]),
        context_columns=CONTEXT_COLUMNS,
        _hidden=hidden,
    )
    # Calibrate the grade cuts on requests drawn like real ones.
    n_calib = max(1, min(200, n_users))
    c_users, c_items, c_ctx = world._draw_requests(calib_rng, n_calib, min(100, n_items))
    utility = _utility(world, c_users, c_items, c_ctx)
    utility += _NOISE_SD * calib_rng.standard_normal(utility.shape)
    thresholds = np.asarray(np.quantile(utility.ravel(), _GRADE_QUANTILES), dtype=np.float64)
    return replace(world, _hidden=replace(hidden, thresholds=thresholds))


def _make_users(rng: np.random.Generator, n: int, mixing: F64) -> tuple[F32, F64, F64, F64]:
    latent = rng.standard_normal((n, LATENT_DIM))
    activity_z = rng.standard_normal(n)
    tier = _draw_codes(rng, _TIER_WEIGHTS, n)
    region = rng.integers(0, 8, n)
    age = np.clip(np.round(38.0 + 12.0 * rng.standard_normal(n)), 18.0, 80.0)
    age_missing = rng.random(n) < 0.08
    tenure = np.floor(3650.0 * rng.random(n) ** 2)
    sessions = np.maximum(0.0, np.floor(3.0 + 2.5 * activity_z + rng.standard_normal(n)))
    balance = np.floor((tier + 1.0) ** 2 * 400.0 * (0.1 + 2.0 * rng.random(n) ** 2))
    redemptions = np.maximum(0.0, np.floor(2.0 + 1.5 * activity_z + 1.5 * rng.standard_normal(n)))
    price_pref = 100.0 * (1.0 + tier) * (0.5 + rng.random(n))
    avg_price = np.round(price_pref * (1.0 + 0.15 * rng.standard_normal(n)) / 10.0) * 10.0
    avg_price = np.maximum(avg_price, 10.0)
    spend = np.where(redemptions > 0, np.round(redemptions * avg_price * 1.5), 0.0)
    push = rng.random(n) < 0.6
    prefs = _project(latent, mixing) + 0.5 * rng.standard_normal((n, N_PREF))
    new_member = tenure < 30.0  # no history yet: the taste block is missing

    m = np.empty((n, len(USER_COLUMNS)), dtype=np.float64)
    m[:, 0] = np.where(age_missing, np.nan, age)
    m[:, 1] = tenure
    m[:, 2] = tier
    m[:, 3] = region
    m[:, 4] = sessions
    m[:, 5] = balance
    m[:, 6] = redemptions
    m[:, 7] = spend
    m[:, 8] = push
    m[:, 9] = np.where(redemptions > 0, avg_price, np.nan)
    m[:, 10:] = np.where(new_member[:, None], np.nan, prefs)
    activity = 1.0 + np.maximum(sessions, 0.0) + 0.5 * redemptions
    return m.astype(np.float32), latent, price_pref, activity


def _make_items(
    rng: np.random.Generator, n: int, centroids: F64, mixing: F64
) -> tuple[F32, F64, F64, F64]:
    category = _draw_codes(rng, tuple(float(w) for w in _CATEGORY_WEIGHTS), n)
    latent = 0.8 * centroids[category] + 0.6 * rng.standard_normal((n, LATENT_DIM))
    pop = rng.standard_normal(n)
    quality = rng.standard_normal(n)
    popularity = _percentile_rank(pop + 0.3 * rng.standard_normal(n))
    brand = _draw_codes(rng, (0.4, 0.3, 0.2, 0.1), n)
    base = np.asarray(_CATEGORY_BASE_PRICE, dtype=np.float64)[category]
    price = base * (1.0 + 0.5 * brand) * (0.5 + 1.5 * rng.random(n) ** 2)
    price = np.maximum(10.0, np.round(price / 10.0) * 10.0)
    age = np.floor(720.0 * rng.random(n))
    discount = np.where(rng.random(n) < 0.3, np.floor(5.0 + 45.0 * rng.random(n)), 0.0)
    n_ratings = np.floor(popularity**3 * 2000.0 * rng.random(n))
    rating = np.clip(3.6 + 0.5 * quality + 0.3 * rng.standard_normal(n), 1.0, 5.0)
    rating = np.round(rating * 10.0) / 10.0
    ctr = np.clip(0.03 + 0.01 * pop + 0.005 * rng.standard_normal(n), 0.001, 0.2)
    stock = np.floor(500.0 * rng.random(n))
    digital = rng.random(n) < 0.3
    emb = _project(latent, mixing) + 0.4 * rng.standard_normal((n, N_EMB))

    m = np.empty((n, len(ITEM_COLUMNS)), dtype=np.float64)
    m[:, 0] = popularity
    m[:, 1] = price
    m[:, 2] = category
    m[:, 3] = brand
    m[:, 4] = age
    m[:, 5] = discount
    m[:, 6] = np.where(n_ratings > 0, rating, np.nan)
    m[:, 7] = n_ratings
    m[:, 8] = np.where(age >= 7, ctr, np.nan)
    m[:, 9] = stock
    m[:, 10] = digital
    m[:, 11:] = emb
    return m.astype(np.float32), latent, pop, quality


def example_request(world: World, seed: int = 0, candidates: int = 200) -> ExampleRequest:
    """A realistic request for `world`: one user, `candidates` distinct items, a context."""
    if candidates > world.n_items:
        raise ValueError(f"{candidates} candidates but the world has {world.n_items} items")
    rng = np.random.default_rng([world.seed, 0xE4, seed])
    users, items, ctx = world._draw_requests(rng, 1, candidates)
    context = {
        name: float(v) for name, v in zip(CONTEXT_COLUMNS, ctx[0], strict=True) if not np.isnan(v)
    }
    return ExampleRequest(
        user_id=world.user_ids[int(users[0])],
        candidate_ids=tuple(world.item_ids[int(i)] for i in items[0]),
        context=context,
    )
