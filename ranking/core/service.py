"""The request path, one direction: admit -> fetch -> assemble -> score -> sort.

`RankingService.rank(query, deadline)` knows nothing of protobuf or gRPC. It admits or sheds the
request, fetches the user's and the candidates' features in one store call, assembles the
matrix in the model's order, scores what fits in the time left, sorts, and says in
`degraded` every corner it cut.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ranking.core._order import check_ids, rank_order
from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder, ServingModel
from ranking.degraded import OUTAGE, Degraded
from ranking.errors import (
    DeadlineExceeded,
    FeatureStoreTimeout,
    FeatureStoreUnavailable,
    InvalidRequest,
    Overloaded,
    Unavailable,
)
from ranking.features.store import (
    FeatureStore,
    Gathered,
    Gatherer,
    Lookup,
    Target,
    columns_or_empty,
    gather_into,
)
from ranking.ids import Ids
from ranking.limits import Limiter
from ranking.telemetry import Telemetry
from ranking.telemetry import stats as st
from ranking.telemetry.call import CallRecord, Metadata, begin_call
from ranking.telemetry.state import ServiceState, service_state

if TYPE_CHECKING:
    from ranking.flywheel.explain import Explainer, Explanation
    from ranking.flywheel.hook import Flywheel

__all__ = ["Degraded", "RankQuery", "RankResult", "RankingService"]  # Degraded: re-exported

log = logging.getLogger(__name__)

#: A cancellation this close to the caller's deadline is the deadline (see Deadline.caller_gone).
_CANCEL_SLACK_S = 0.005


@dataclass(frozen=True, slots=True)
class RankQuery:
    """One Rank call in domain terms. `inline_values` is (len(candidate_ids), len(inline_names)).

    `candidate_ids` is an `Ids` (the native decoder builds one straight from the wire); any
    other sequence of str given here is converted to one.
    """

    candidate_ids: Ids
    user_id: str = ""
    context: Mapping[str, float] = field(default_factory=dict)
    top_k: int = 0
    inline_names: Sequence[str] = ()
    inline_values: npt.NDArray[np.float64] | None = None
    #: Which candidates sent inline values (None: all of them); the others sent none.
    inline_rows: npt.NDArray[np.bool_] | None = None
    strict: bool = False
    request_id: str = ""
    #: Ask for the best items' feature contributions (ranking/flywheel/explain.py).
    explain: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.candidate_ids, Ids):
            object.__setattr__(self, "candidate_ids", Ids.from_strs(self.candidate_ids))


@dataclass(slots=True)
class RankResult:
    """Ranked candidates, best first.

    `order` holds rows of `candidates`; the first `len(order) - unscored` of them were scored
    (`ranked_scores`, aligned with them), the last `unscored` were not (score 0). The transport
    encodes the response from these arrays; `ids` and `scores` are the same as Python lists.
    """

    candidates: Ids
    order: npt.NDArray[np.intp]
    ranked_scores: npt.NDArray[np.float64]
    unscored: int
    model_version: str
    degraded: list[str]
    #: The caller's request id, or the one the flywheel generated for a logged request.
    request_id: str = ""
    #: With `RankQuery.explain`: for the best scored items, in response order.
    explanations: list[Explanation] | None = None

    @property
    def ids(self) -> list[str]:
        strs = self.candidates.tolist()
        return [strs[i] for i in self.order.tolist()]

    @property
    def scores(self) -> list[float]:
        return [*self.ranked_scores.tolist(), *([0.0] * self.unscored)]


class RankingService:
    """The core. Built once per worker by the app; safe for one event loop."""

    def __init__(
        self,
        *,
        models: ModelHolder,
        store: FeatureStore,
        limiter: Limiter,
        telemetry: Telemetry,
        max_candidates: int,
        fetch_share: float,
        inline_max_row_trees: int,
        executor: Executor | None,
        flywheel: Flywheel | None = None,
    ) -> None:
        self.models = models
        self.store = store  # the setter also decides, once, whether it gathers
        self.limiter = limiter
        self.telemetry = telemetry
        self.max_candidates = max_candidates
        self.fetch_share = fetch_share
        self.inline_max_row_trees = inline_max_row_trees
        self._executor = executor
        #: Served-feature log, drift and shadow (ranking/flywheel); None when off.
        self.flywheel = flywheel
        self._explainer: Explainer | None = None
        self._has_users = bool(columns_or_empty(store, "user"))
        self._has_items = bool(columns_or_empty(store, "item"))
        # Time the stages after scoring take; reserved before deciding how many rows fit.
        self._tail_s = 100e-6

    @property
    def max_feature_names(self) -> int:
        """The most `feature_names` a request can name and pass `check_names` (unique names
        the serving model knows): the transport refuses more before allocating for them."""
        return self.models.current.plan.num_features

    def begin_call(self, metadata: Metadata | None = None) -> CallRecord:
        """Start timing a call (the transport does this first thing). `metadata` is called
        for the caller's W3C trace context only when tracing records."""
        return begin_call(self.telemetry, metadata)

    @property
    def store(self) -> FeatureStore:
        return self._store

    @store.setter
    def store(self, store: FeatureStore) -> None:
        self._store = store
        # Decided once per store: a runtime Protocol check costs microseconds per request.
        self._gatherer: Gatherer | None = store if isinstance(store, Gatherer) else None

    async def rank(
        self, query: RankQuery, deadline: Deadline, call: CallRecord | None = None
    ) -> RankResult:
        """Rank the query's candidates. Raises a `RankingError` subclass on refusal.

        `call` is the transport's record of this call (it laps the stages before and after
        this one and ends the record); without one, the core keeps and ends its own.
        """
        if call is None:
            call = self.begin_call()
            try:
                result = await self._admit_and_rank(query, deadline, call)
            except BaseException as exc:
                call.end(exc)
                raise
            call.end(None)
            return result
        return await self._admit_and_rank(query, deadline, call)

    async def _admit_and_rank(
        self, query: RankQuery, deadline: Deadline, call: CallRecord
    ) -> RankResult:
        if deadline.caller_gone():
            raise DeadlineExceeded("the deadline had passed before the request was handled")
        self._validate(query)
        token = self.limiter.try_acquire()
        if token is None:
            raise Overloaded(
                "server overloaded: request shed by the concurrency limiter; retry later",
                self.limiter.retry_after_ms(),
            )
        call.lap(st.ADMIT)
        try:
            result = await self._rank(query, deadline, self.models.current, call)
        except DeadlineExceeded:
            token.dropped()
            raise
        except asyncio.CancelledError:
            # gRPC cancels the call when the caller's deadline passes: an overload signal.
            if deadline.caller_gone(slack_s=_CANCEL_SLACK_S):
                token.dropped()
            else:
                token.ignore()
            raise
        except BaseException:
            token.ignore()
            raise
        token.success()
        return result

    def state(self) -> ServiceState:
        """This worker's state beyond the shared counters: model, reloads, limiter, the
        feature store's own counters. Read by GetStats and published for /metrics."""
        return service_state(self.models, self.limiter, self.store)

    def _validate(self, query: RankQuery) -> None:
        ids = query.candidate_ids
        n = len(ids)
        if n == 0:
            raise InvalidRequest("candidates: at least one candidate is required")
        if n > self.max_candidates:
            raise InvalidRequest(
                f"candidates: {n} sent, at most {self.max_candidates} allowed per request"
            )
        if query.top_k < 0:
            raise InvalidRequest("top_k: must be >= 0 (0 returns all candidates)")
        # One native pass over the id bytes (a hash set), no Python string per id.
        dup, empty = check_ids(ids.data, ids.offsets)
        if dup >= 0:
            raise InvalidRequest(f"candidates: duplicate id {ids[dup][:64]!r}")
        if empty >= 0:
            raise InvalidRequest("candidates: ids must be non-empty")
        for name, value in query.context.items():
            if math.isinf(value):
                raise InvalidRequest(f"context[{name[:64]!r}]: must be finite or NaN (missing)")
        if query.inline_names:
            if len(set(query.inline_names)) != len(query.inline_names):
                raise InvalidRequest("feature_names: names must be unique")
            values = query.inline_values
            if values is None or values.shape != (n, len(query.inline_names)):
                raise InvalidRequest(
                    "candidates.feature_values: each candidate needs one value per feature_names"
                )
            if np.isinf(values).any():
                raise InvalidRequest(
                    "candidates.feature_values: values must be finite or NaN (missing)"
                )

    async def _rank(
        self, query: RankQuery, deadline: Deadline, model: ServingModel, call: CallRecord
    ) -> RankResult:
        ids = query.candidate_ids
        n = len(ids)
        model.plan.check_names(query.context, query.inline_names)
        degraded: list[str] = []

        matrix, user_found = await self._fetch(query, deadline, model, degraded)
        call.lap(st.FETCH)
        if deadline.caller_gone():
            raise DeadlineExceeded("the deadline passed while fetching features")

        model.plan.finish(
            matrix,
            user_found,
            query.context,
            query.inline_names,
            query.inline_values,
            query.inline_rows,
        )
        call.lap(st.ASSEMBLE)

        priority, fit = self._plan_scoring(model, matrix, n, deadline)
        if fit < n:
            degraded.append(Degraded.PARTIAL_SCORING)
        scores = await self._score(model, matrix, None if priority is None else priority[:fit])
        call.lap(st.SCORE)

        order, ranked_scores, unscored = _sort(ids, scores, priority, fit, query.top_k)
        call.lap(st.SORT)

        request_id = query.request_id
        if self.flywheel is not None:
            # The one flywheel hook: references only; the matrix is this request's own.
            request_id = self.flywheel.observe(
                request_id,
                query.user_id,
                model.bundle,
                matrix,
                ids,
                order,
                ranked_scores,
                unscored,
                degraded,
                None if priority is None else priority[:fit],
                scores,
            )
        explanations = None
        if query.explain:
            explanations = await self._explain(
                model, matrix, ids, order, unscored, deadline, degraded
            )
        call.ranked(n, fit, degraded, model.version)
        return RankResult(
            ids, order, ranked_scores, unscored, model.version, degraded, request_id, explanations
        )

    async def _explain(
        self,
        model: ServingModel,
        matrix: npt.NDArray[np.float64],
        ids: Ids,
        order: npt.NDArray[np.intp],
        unscored: int,
        deadline: Deadline,
        degraded: list[str],
    ) -> list[Explanation]:
        from ranking.flywheel.explain import EXPLAIN_PARTIAL, MAX_ITEMS, Explainer

        if self._explainer is None:
            self._explainer = Explainer(self._executor)
        wanted = min(len(order) - unscored, MAX_ITEMS)
        k = self._explainer.fit(wanted, deadline)
        if k < wanted:
            degraded.append(EXPLAIN_PARTIAL)
        rows = order[:k]
        return await self._explainer.explain(
            model.bundle, matrix, rows, [ids[i] for i in rows.tolist()]
        )

    async def _fetch(
        self, query: RankQuery, deadline: Deadline, model: ServingModel, degraded: list[str]
    ) -> tuple[npt.NDArray[np.float64], bool]:
        """The defaults matrix with the stored rows gathered in, and whether the user was found.

        Degraded reasons are decided here, once: unknown only for ids the store answered as
        unknown; an outage or a timeout by what the store (or cache) reported; strict requests
        fail when the answer would carry an `OUTAGE` reason, whichever layer noticed it.
        """
        plan = model.plan
        matrix = plan.new_matrix(len(query.candidate_ids))
        lookups: list[Lookup] = []
        targets: list[Target] = []
        if self._has_items:
            lookups.append(Lookup("item", query.candidate_ids))
            targets.append(plan.item_target(matrix))
        want_user = self._has_users and bool(query.user_id)
        if self._has_users and not query.user_id:
            degraded.append(Degraded.USER_MISSING)
        if want_user:
            lookups.append(Lookup("user", [query.user_id]))
            targets.append(plan.user_target(matrix))
        got: list[Gathered] = []
        if lookups:
            try:
                timeout_s = max(deadline.remaining_s() * self.fetch_share, 0.0)
                if self._gatherer is not None:
                    got = await self._gatherer.gather(lookups, targets, timeout_s=timeout_s)
                else:
                    got = await gather_into(self.store, lookups, targets, timeout_s=timeout_s)
            except FeatureStoreUnavailable as exc:  # no cache in front of the store
                timeout = isinstance(exc, FeatureStoreTimeout)
                degraded.append(Degraded.FETCH_TIMEOUT if timeout else Degraded.STORE_UNAVAILABLE)
        for result in got:
            for reason in result.degraded:
                if reason not in degraded:
                    degraded.append(reason)
        stats = self.telemetry.stats
        if Degraded.STORE_UNAVAILABLE in degraded:
            stats.add("store_errors")
        if Degraded.FETCH_TIMEOUT in degraded:
            stats.add("fetch_timeouts")
        if query.strict and not OUTAGE.isdisjoint(degraded):
            raise Unavailable("feature store unavailable and the request is strict; retry later")
        user_found = False
        if want_user and got:
            user = got[-1]
            user_found = bool(user.found[0])
            if user.unknown[0]:
                stats.add("unknown_users")
                degraded.append(Degraded.USER_UNKNOWN)
        if self._has_items and got:
            unknown = int(np.count_nonzero(got[0].unknown))
            if unknown:
                stats.add("unknown_items", float(unknown))
                degraded.append(Degraded.ITEMS_UNKNOWN)
        return matrix, user_found

    def _plan_scoring(
        self, model: ServingModel, matrix: npt.NDArray[np.float64], n: int, deadline: Deadline
    ) -> tuple[npt.NDArray[np.intp] | None, int]:
        """How many rows fit in the time left, and in which order to try them.

        Returns (None, n) when every row fits. Otherwise the rows in priority order (the
        bundle's prior, highest first; else the caller's order) and how many of them to score.
        """
        fit = model.cost.rows_within(deadline.remaining_s() - self._tail_s)
        if fit >= n:
            return None, n
        prior = model.plan.prior_position
        if prior is None:
            return np.arange(n, dtype=np.intp), fit
        values = np.nan_to_num(matrix[:, prior], nan=-np.inf)
        return np.argsort(-values, kind="stable").astype(np.intp), fit

    async def _score(
        self,
        model: ServingModel,
        matrix: npt.NDArray[np.float64],
        rows: npt.NDArray[np.intp] | None,
    ) -> npt.NDArray[np.float64]:
        if rows is not None:
            if len(rows) == 0:
                return np.empty(0, dtype=np.float64)
            matrix = np.ascontiguousarray(matrix[rows])
        count = len(matrix)
        started = time.perf_counter()
        if count * model.num_trees <= self.inline_max_row_trees or self._executor is None:
            raw = model.scorer.score(matrix)
        else:
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(self._executor, model.scorer.score, matrix)
        model.cost.observe(count, time.perf_counter() - started)
        if raw.ndim == 2:
            raw = raw[:, model.bundle.output_index]
        return raw


def _sort(
    ids: Ids,
    scores: npt.NDArray[np.float64],
    priority: npt.NDArray[np.intp] | None,
    fit: int,
    top_k: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], int]:
    """Best first, ties in the order scored (the caller's, or the priority order); cut to
    top_k by partial selection; unscored rows follow in priority order. Returns (rows of
    `ids`, their scores for the scored ones, how many are unscored): see `_order.rank_order`."""
    return rank_order(scores, priority, fit, top_k, len(ids))
