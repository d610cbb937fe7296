"""Warm a worker up before it listens: the first real calls then run at steady-state speed.

A cold worker's first calls are slow: the feature store opens its first connections (one per
concurrent read and replica), the cache's and the scorer's numpy and C paths run for the first
time, and the limiter and score-cost model have no samples. Calls arriving then queue inside
gRPC and, past `RANKING_MAX_PENDING_CALLS`, are refused (CANCELLED). So before the server binds
its port (and so before health says SERVING), `warm_up` runs rounds of concurrent synthetic
Rank queries through the core: same store, model and executor, but a limiter of its own
(nothing shed, the real limiter's counters untouched) and private telemetry (no spans, no
counters). Their candidate ids are unknown ids, distinct per query, so every round reaches the
store itself rather than the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from opentelemetry import trace

from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder
from ranking.core.service import RankingService, RankQuery
from ranking.errors import RankingError
from ranking.features.store import FeatureStore
from ranking.ids import Ids
from ranking.limits import build_limiter
from ranking.telemetry import Stats, Telemetry

__all__ = ["warm_up"]

log = logging.getLogger(__name__)


async def warm_up(
    *,
    models: ModelHolder,
    store: FeatureStore,
    executor: Executor | None,
    inline_max_row_trees: int,
    fetch_share: float,
    budget_s: float,
    rounds: int,
    concurrency: int = 8,
    candidates: int = 200,
    time_limit_s: float = 3.0,
) -> float:
    """Run up to `rounds` rounds of `concurrency` concurrent queries; returns the seconds spent.

    Stops early after `time_limit_s` (a store that is down must not hold the start-up). Errors
    of single queries are ignored: warming is best effort, serving does not depend on it.
    """
    if rounds <= 0:
        return 0.0
    core = RankingService(
        models=models,
        store=store,
        limiter=build_limiter("off"),
        telemetry=Telemetry(trace.NoOpTracer(), Stats()),
        max_candidates=max(candidates, 1),
        fetch_share=fetch_share,
        inline_max_row_trees=inline_max_row_trees,
        executor=executor,
    )
    started = time.monotonic()
    failed = 0

    async def one(r: int, k: int) -> None:
        nonlocal failed
        query = RankQuery(
            candidate_ids=Ids.from_strs(f"warmup-{r}-{k}-{j}" for j in range(candidates)),
            user_id=f"warmup-user-{k}",
        )
        deadline = Deadline.from_budget(budget_s, time_limit_s)
        try:
            await asyncio.wait_for(core.rank(query, deadline), time_limit_s)
        except (RankingError, TimeoutError):
            failed += 1

    done = 0
    for r in range(rounds):
        if time.monotonic() - started > time_limit_s:
            break
        await asyncio.gather(*(one(r, k) for k in range(concurrency)))
        done += 1
    spent = time.monotonic() - started
    log.info(
        "warmed up with %d rounds of %d queries in %.0f ms (%d failed)",
        done,
        concurrency,
        spent * 1e3,
        failed,
    )
    return spent
