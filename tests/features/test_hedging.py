"""HedgedFeatureStore: the algorithm on fake replicas, then faults on real Redis replicas."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ranking.degraded import Degraded
from ranking.errors import FeatureStoreUnavailable
from ranking.features.hedging import (
    HedgeBudget,
    HedgedFeatureStore,
    HedgePolicy,
    LatencyTracker,
)
from ranking.features.redis_factory import build_redis_store
from ranking.features.redis_loader import load_entities
from ranking.features.store import Lookup
from ranking.settings import CacheSettings
from tests.features.conftest import COLUMNS, FakeStore, make_matrix
from tests.features.contract import check_feature_store
from tests.redis_servers import RedisServer

STALE, STORE_UNAVAILABLE = Degraded.STALE, Degraded.STORE_UNAVAILABLE
NO_CACHE = CacheSettings.defaults(capacity=0)

ITEMS = [Lookup("item", ["i1", "i2"])]
# The deadline of the fault tests: far below the 2 s a paused replica would hold a read, with
# room for a shared CI machine's scheduling stalls.
DEADLINE_S = 0.25


def test_policy_checked() -> None:
    with pytest.raises(ValueError):
        HedgePolicy(floor_ms=5, cap_ms=1)
    with pytest.raises(ValueError):
        HedgePolicy(percentile=100)


def test_tracker_percentile_clamped() -> None:
    policy = HedgePolicy(floor_ms=1.0, cap_ms=10.0, initial_ms=4.0, min_samples=10, window=100)
    t = LatencyTracker(policy)
    assert t.delay_ms == 4.0
    for k in range(100):
        t.record(2.0 if k % 20 else 50.0)  # 5% slow
    assert 2.0 <= t.delay_ms <= 10.0
    for _ in range(200):  # a window's worth, whatever the recompute phase
        t.record(0.1)
    assert t.delay_ms == 1.0  # floor
    for _ in range(200):
        t.record(100.0)
    assert t.delay_ms == 10.0  # cap


def test_budget_token_bucket() -> None:
    b = HedgeBudget(ratio=0.05, burst=2.0)
    spent = 0
    for _ in range(1000):
        b.earn()
        spent += b.try_spend()
    assert spent <= 0.05 * 1000 + 2


async def test_fast_primary_no_hedge(item_data) -> None:
    a, b = FakeStore(item_data), FakeStore(item_data)
    store = HedgedFeatureStore([a, b], policy=HedgePolicy(initial_ms=20.0, floor_ms=5.0))
    for _ in range(10):
        (r,) = await store.fetch(ITEMS)
        assert r.found.all()
    assert store.stats.hedges_sent == 0 and a.calls == 5 and b.calls == 5  # round-robin
    await check_feature_store(store, {"item": {"i4": item_data["item"]["i4"]}})
    assert a.closed and b.closed


async def test_slow_primary_hedged_loser_cancelled(item_data) -> None:
    slow, fast = FakeStore(item_data, delay_s=1.0), FakeStore(item_data)
    policy = HedgePolicy(initial_ms=5.0, floor_ms=1.0, slow_strikes=0, timeout_s=2.0)
    store = HedgedFeatureStore([slow, fast], policy=policy)
    t0 = time.perf_counter()
    for _ in range(4):
        (r,) = await store.fetch(ITEMS)
        assert r.found.all()
    assert time.perf_counter() - t0 < 0.5
    assert store.stats.hedges_sent == 2 and store.stats.hedges_won == 2
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await store.close()


async def test_error_fails_over_and_marks_down(item_data) -> None:
    bad, good = FakeStore(item_data), FakeStore(item_data)
    bad.fail = True
    store = HedgedFeatureStore([bad, good], policy=HedgePolicy(down_backoff_ms=10_000))
    for _ in range(6):
        (r,) = await store.fetch(ITEMS)
        assert r.found.all()
    assert bad.calls == 1  # then routed around for the back-off
    assert store.stats.errors == [1, 0] and store.stats.failovers == 1
    assert store.stats.hedges_sent == 0  # failover is not charged to the budget
    await store.close()


async def test_slow_strikes_route_around(item_data) -> None:
    slow, fast = FakeStore(item_data, delay_s=0.5), FakeStore(item_data)
    policy = HedgePolicy(initial_ms=2.0, slow_strikes=2, down_backoff_ms=10_000, timeout_s=1.0)
    store = HedgedFeatureStore([slow, fast], policy=policy)
    for _ in range(10):
        await store.fetch(ITEMS)
    assert slow.calls == 2 and store.is_down(0)
    await store.close()


async def test_all_down_fails_fast_with_one_probe(item_data) -> None:
    a, b = FakeStore(item_data), FakeStore(item_data)
    a.fail = b.fail = True
    store = HedgedFeatureStore([a, b], policy=HedgePolicy(down_backoff_ms=10_000))
    with pytest.raises(FeatureStoreUnavailable):
        await store.fetch(ITEMS)
    assert a.calls + b.calls == 2
    with pytest.raises(FeatureStoreUnavailable):  # both down: one probe
        await store.fetch(ITEMS)
    assert a.calls + b.calls == 3
    await store.close()


async def test_budget_caps_extra_reads(item_data) -> None:
    # Hedge on every read (zero delay); the budget must still cap extras at ratio * reads + burst.
    a, b = FakeStore(item_data, delay_s=0.002), FakeStore(item_data, delay_s=0.002)
    policy = HedgePolicy(
        floor_ms=0.0, cap_ms=0.0, initial_ms=0.0, budget_burst=2.0, reserve_tokens=1.0
    )
    store = HedgedFeatureStore([a, b], policy=policy)
    for _ in range(200):
        await store.fetch(ITEMS)
    s = store.stats
    assert s.hedges_sent <= 0.05 * 200 + 2
    assert s.budget_exhausted >= 200 - s.hedges_sent - 1
    assert sum(s.replica_reads) == 200 + s.hedges_sent
    await store.close()


async def test_reserve_kept_for_late_hedges(item_data) -> None:
    slow, fast = FakeStore(item_data, delay_s=0.2), FakeStore(item_data)
    policy = HedgePolicy(
        initial_ms=2.0, floor_ms=1.0, cap_ms=50.0, late_factor=4.0, budget_ratio=0.0,
        budget_burst=3.0, reserve_tokens=2.0, slow_strikes=0, timeout_s=1.0,
    )  # fmt: skip
    store = HedgedFeatureStore([slow, fast], policy=policy)
    took = []
    for _ in range(8):  # round-robin: every other read has the slow primary
        t0 = time.perf_counter()
        await store.fetch(ITEMS)
        took.append(time.perf_counter() - t0)
    s = store.stats
    assert (s.hedges_sent, s.late_hedges, s.hedges_deferred, s.budget_exhausted) == (3, 2, 3, 1)
    assert sorted(took)[-1] > 0.15 and sorted(took)[-2] < 0.1  # only the last slow read waited
    await store.close()


async def test_hedge_times_capped_at_half_the_timeout(item_data) -> None:
    slow, fast = FakeStore(item_data, delay_s=1.0), FakeStore(item_data)
    policy = HedgePolicy(initial_ms=50.0, floor_ms=50.0, cap_ms=50.0, slow_strikes=0)
    store = HedgedFeatureStore([fast, slow], policy=policy)
    await store.fetch(ITEMS, timeout_s=0.02)  # primary: slow (round-robin starts at 1)
    assert store.stats.hedges_won == 1  # hedged at 10 ms, not 50 ms: in time
    await store.close()


# --- real servers ----------------------------------------------------------------------------


def load_both(replicas: list[RedisServer], n: int = 200) -> np.ndarray:
    m = make_matrix(n)
    ids = [f"i{k}" for k in range(n)]
    for s in replicas:
        load_entities(s.url, "h", "item", ids, COLUMNS, m, progress=False)
        load_entities(s.url, "h", "user", ["u1"], COLUMNS, m[:1], progress=False)
    return m


def pause(server: RedisServer, how: str) -> None:
    if how == "sigstop":  # the whole process frozen
        server.pause()
    else:  # the server holds every client's commands for 2 s
        with server.client() as c:
            c.execute_command("CLIENT", "PAUSE", "2000", "ALL")


@pytest.mark.parametrize("how", ["sigstop", "client_pause"])
async def test_paused_replica_every_read_under_deadline(
    redis_replicas: list[RedisServer], how: str
) -> None:
    load_both(redis_replicas)
    policy = HedgePolicy(initial_ms=5.0, floor_ms=2.0, cap_ms=10.0)
    store = await build_redis_store(
        [s.url for s in redis_replicas], namespace="h", hedge=policy,
        cache=NO_CACHE,
    )  # fmt: skip
    hedged = store
    assert isinstance(hedged, HedgedFeatureStore)
    lookups = [Lookup("user", ["u1"]), Lookup("item", [f"i{k}" for k in range(200)])]
    await store.fetch(lookups, timeout_s=1.0)  # connect both pools
    await store.fetch(lookups, timeout_s=1.0)
    pause(redis_replicas[0], how)
    try:
        worst = 0.0
        for _ in range(40):
            t0 = time.perf_counter()
            _, items = await store.fetch(lookups, timeout_s=DEADLINE_S)
            worst = max(worst, time.perf_counter() - t0)
            assert items.found.all()
        assert worst < DEADLINE_S
        assert hedged.stats.hedges_won >= 1
        assert hedged.is_down(0)  # routed around after a few lost hedges
        extra = sum(hedged.stats.replica_reads) - hedged.stats.reads
        assert extra <= 0.05 * hedged.stats.reads + policy.budget_burst
    finally:
        redis_replicas[0].resume()
    await store.close()


async def test_killed_replica_mid_run(redis_replicas: list[RedisServer]):
    load_both(redis_replicas)
    store = await build_redis_store([s.url for s in redis_replicas], namespace="h", cache=NO_CACHE)
    lookups = [Lookup("item", [f"i{k}" for k in range(200)])]
    for k in range(30):
        if k == 10:
            redis_replicas[1].kill()
        t0 = time.perf_counter()
        (items,) = await store.fetch(lookups, timeout_s=DEADLINE_S)
        assert time.perf_counter() - t0 < DEADLINE_S
        assert items.found.all()
    assert isinstance(store, HedgedFeatureStore)
    assert store.stats.errors[1] >= 1
    await store.close()


async def test_all_replicas_down_degraded_not_errors(redis_replicas: list[RedisServer]):
    load_both(redis_replicas)
    store = await build_redis_store(
        [s.url for s in redis_replicas], namespace="h",
        cache=CacheSettings.defaults(ttl_s=0.0, stale_ttl_s=60.0),
    )  # fmt: skip
    (warm,) = await store.fetch([Lookup("item", ["i1", "i2"])], timeout_s=1.0)
    for s in redis_replicas:
        s.kill()
    for _ in range(5):
        t0 = time.perf_counter()
        (r,) = await store.fetch([Lookup("item", ["i1", "i2", "i3"])], timeout_s=DEADLINE_S)
        assert time.perf_counter() - t0 < DEADLINE_S
        assert r.found.tolist() == [True, True, False]
        np.testing.assert_array_equal(r.rows[:2], warm.rows)
        assert set(r.degraded) == {STALE, STORE_UNAVAILABLE}
    await store.close()


async def test_factory_starts_with_one_replica_down(redis_replicas: list[RedisServer]):
    load_both(redis_replicas)
    redis_replicas[0].kill()
    store = await build_redis_store([s.url for s in redis_replicas], namespace="h")
    assert store.columns("item") == COLUMNS
    (r,) = await store.fetch([Lookup("item", ["i1"])], timeout_s=1.0)
    assert r.found.all()
    await store.close()
    redis_replicas[1].kill()
    with pytest.raises(FeatureStoreUnavailable):
        await build_redis_store([s.url for s in redis_replicas], namespace="h")
