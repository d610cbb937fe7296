"""The core without a transport: budget, degradation, shedding, deadline on arrival."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder, build_serving_model
from ranking.core.service import Degraded, RankingService, RankQuery
from ranking.errors import DeadlineExceeded, Overloaded
from ranking.features.memory import MemoryFeatureStore
from ranking.limits import build_limiter
from ranking.scoring.bundle import load_bundle
from ranking.telemetry import Stats, build_telemetry
from tests.conftest import GatedStore, SmallWorld, small_tables


def make_core(
    world: SmallWorld, store: MemoryFeatureStore | None = None, limiter: str = "off", **limit: int
) -> RankingService:
    store = store or MemoryFeatureStore(small_tables(world))
    model = build_serving_model(
        load_bundle(world.bundle), store.columns("user"), store.columns("item"), engine="auto"
    )
    return RankingService(
        models=ModelHolder(model, build=lambda b: model),
        store=store,
        limiter=build_limiter(limiter, **limit),
        telemetry=build_telemetry(Stats()),
        max_candidates=1000,
        fetch_share=0.5,
        inline_max_row_trees=10**9,
        executor=None,
    )


def query(n: int = 200) -> RankQuery:
    return RankQuery(
        candidate_ids=[f"i{k}" for k in range(n)], user_id="u4", context={"c_hour": 8.0}
    )


async def test_deadline_passed_on_arrival_is_refused(small_world: SmallWorld) -> None:
    core = make_core(small_world)
    now = time.monotonic()
    past = Deadline(now + 1.0, now - 0.002, hard_at_s=now - 0.001)
    with pytest.raises(DeadlineExceeded):
        await core.rank(query(), past)
    assert core.limiter.accepted == 0  # refused before admission: no work done


async def test_tiny_budget_scores_what_fits_in_prior_order(small_world: SmallWorld) -> None:
    core = make_core(small_world)
    model = core.models.current
    model.cost.per_row_s = 100e-6  # pretend each row costs 100 us: ~60 of 200 fit in 8 ms
    model.cost.alpha = 0.0  # keep the pretence (no learning from the real, faster scorer)
    result = await core.rank(query(), Deadline.from_budget(0.008, None))
    assert Degraded.PARTIAL_SCORING in result.degraded
    assert len(result.ids) == 200 and len(set(result.ids)) == 200
    scored = len(result.ids) - result.unscored
    assert 0 < scored < 200
    head = result.scores[:scored]
    assert head == sorted(head, reverse=True)
    assert result.scores[scored:] == [0.0] * result.unscored
    # Scored rows are the ones with the highest prior (i_pop); the rest follow in prior order.
    pop = {f"i{k}": small_world.items[k, 0] for k in range(200)}
    by_prior = sorted(pop, key=lambda i: -pop[i])
    assert set(result.ids[:scored]) == set(by_prior[:scored])
    assert result.ids[scored:] == by_prior[scored:]
    # The scores are the model's own for those rows.
    m = small_world.matrix("u4", result.ids[:scored], 8.0)
    np.testing.assert_array_equal(head, small_world.booster.predict(m, raw_score=True))


async def test_no_time_left_for_scoring_still_answers(small_world: SmallWorld) -> None:
    core = make_core(small_world)
    core.models.current.cost.per_row_s = 1.0
    core.models.current.cost.alpha = 0.0
    result = await core.rank(query(50), Deadline.from_budget(0.005, None))
    assert result.unscored == 50
    assert Degraded.PARTIAL_SCORING in result.degraded


async def test_top_k_with_partial_scoring(small_world: SmallWorld) -> None:
    core = make_core(small_world)
    core.models.current.cost.per_row_s = 100e-6
    core.models.current.cost.alpha = 0.0
    result = await core.rank(
        RankQuery(candidate_ids=[f"i{k}" for k in range(200)], user_id="u1", top_k=150),
        Deadline.from_budget(0.008, None),
    )
    assert len(result.ids) == 150
    assert len(result.scores) == 150


async def test_burst_is_shed_fast_then_recovers(small_world: SmallWorld) -> None:
    store = GatedStore.of(small_world)
    core = make_core(small_world, store, "fixed", limit=4)
    tasks = [
        asyncio.ensure_future(core.rank(query(20), Deadline.from_budget(5.0, None)))
        for _ in range(20)
    ]
    await asyncio.sleep(0.05)
    shed = [t for t in tasks if t.done()]
    assert len(shed) == 16  # rejected at once, while 4 wait on the store
    for t in shed:
        with pytest.raises(Overloaded) as info:
            t.result()
        assert info.value.retry_after_ms >= 1
    store.gate.set()
    done = await asyncio.gather(*(t for t in tasks if t not in shed))
    assert len(done) == 4
    # After the burst the limiter admits again.
    again = await core.rank(query(20), Deadline.from_budget(5.0, None))
    assert len(again.ids) == 20
    assert core.limiter.rejected == 16 and core.limiter.inflight == 0


async def test_budget_spent_in_fetch_degrades_but_caller_deadline_drops(
    small_world: SmallWorld,
) -> None:
    store = GatedStore.of(small_world)
    core = make_core(small_world, store)
    loop = asyncio.get_running_loop()
    loop.call_later(0.03, store.gate.set)
    # Server budget 10 ms, no caller deadline: the answer comes, every candidate unscored.
    result = await core.rank(query(30), Deadline.from_budget(0.010, None))
    assert result.unscored == 30
    assert Degraded.PARTIAL_SCORING in result.degraded
    # The caller's own deadline (10 ms) passing while fetching drops the request instead.
    store.gate.clear()
    loop.call_later(0.03, store.gate.set)
    with pytest.raises(DeadlineExceeded):
        await core.rank(query(30), Deadline.from_budget(1.0, 0.010))
    assert core.limiter.dropped == 1
