"""CachedFeatureStore against a fake inner store and an injected clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ranking.degraded import Degraded
from ranking.features.cache import CachedFeatureStore
from ranking.features.store import Lookup, Target
from ranking.ids import Ids
from ranking.settings import CacheSettings
from tests.features.conftest import FakeStore
from tests.features.contract import check_feature_store

STALE, STORE_UNAVAILABLE = Degraded.STALE, Degraded.STORE_UNAVAILABLE
FETCH_TIMEOUT = Degraded.FETCH_TIMEOUT


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def items(*ids: str) -> list[Lookup]:
    return [Lookup("item", list(ids))]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inner(item_data: dict[str, dict[str, np.ndarray]]) -> FakeStore:
    return FakeStore(item_data)


def cache_of(inner: FakeStore, clock: Clock, **kw: object) -> CachedFeatureStore:
    params: dict[str, object] = {
        "capacity": 100,
        "ttl_s": 10.0,
        "negative_ttl_s": 2.0,
        "stale_ttl_s": 30.0,
    }
    params.update(kw)
    return CachedFeatureStore(inner, CacheSettings.defaults(**params), clock=clock)


async def test_wears_feature_store(inner: FakeStore, clock: Clock) -> None:
    cache = cache_of(inner, clock)
    assert cache.columns("item") == inner.columns("item")
    await check_feature_store(cache, {"item": {"i3": inner.data["item"]["i3"]}, "user": {}})
    assert inner.closed


async def test_hit_after_miss_returns_same_rows(inner: FakeStore, clock: Clock, item_data) -> None:
    cache = cache_of(inner, clock)
    (first,) = await cache.fetch(items("i1", "i2", "nope"))
    (second,) = await cache.fetch(items("i2", "i1", "nope"))
    assert inner.calls == 1
    assert first.found.tolist() == [True, True, False]
    assert second.found.tolist() == [True, True, False]
    np.testing.assert_array_equal(second.rows[0], item_data["item"]["i2"])
    np.testing.assert_array_equal(second.rows[1], item_data["item"]["i1"])
    assert np.isnan(second.rows[2]).all()
    assert cache.stats.hits == 3 and cache.stats.negative_hits == 1 and cache.stats.misses == 3
    assert first.degraded == () and second.degraded == ()
    await cache.close()


async def test_ttl_expiry_and_negative_ttl(inner: FakeStore, clock: Clock) -> None:
    cache = cache_of(inner, clock)
    await cache.fetch(items("i1", "nope"))
    clock.t += 2.5  # past the negative TTL, within the TTL
    await cache.fetch(items("i1", "nope"))
    assert inner.calls == 2 and inner.keys == 3  # only "nope" re-read
    clock.t += 10.0  # past both
    await cache.fetch(items("i1", "nope"))
    assert inner.calls == 3 and inner.keys == 5
    await cache.close()


async def test_negative_caching_turns_into_found_when_loaded(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    (r,) = await cache.fetch(items("new"))
    assert not r.found[0]
    inner.data["item"]["new"] = np.ones(8, dtype=np.float32)
    (r,) = await cache.fetch(items("new"))
    assert not r.found[0]  # negatively cached
    clock.t += 3.0
    (r,) = await cache.fetch(items("new"))
    assert r.found[0] and (r.rows[0] == 1).all()
    await cache.close()


async def test_eviction_keeps_size_bounded_and_rows_right(inner: FakeStore, clock: Clock):
    data = inner.data["item"]
    cache = cache_of(inner, clock, capacity=8)
    for rnd in range(5):
        ids = [f"i{(rnd * 7 + k) % 50}" for k in range(6)]
        (r,) = await cache.fetch(items(*ids))
        assert len(cache) <= 8
        for j, i in enumerate(ids):
            np.testing.assert_array_equal(r.rows[j], data[i])
    assert cache.stats.evictions > 0
    # a batch larger than the cache is answered in full; the cache keeps what fits
    ids = [f"i{k}" for k in range(20)]
    (r,) = await cache.fetch(items(*ids))
    assert r.found.all() and len(cache) == 8
    np.testing.assert_array_equal(r.rows, np.stack([data[i] for i in ids]))
    # every cached id is served from a slot holding its own row (no inner read)
    calls = inner.calls
    cached = [i for i in data if cache.contains("item", i)]
    assert len(cached) == 8
    (r,) = await cache.fetch(items(*cached))
    assert inner.calls == calls and r.found.all()
    np.testing.assert_array_equal(r.rows, np.stack([data[i] for i in cached]))
    await cache.close()


async def test_clock_eviction_prefers_unreferenced(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock, capacity=4)
    await cache.fetch(items("i0", "i1", "i2", "i3"))
    await cache.fetch(items("i0"))  # referenced: gets a second chance
    await cache.fetch(items("i4"))
    assert cache.contains("item", "i0")
    assert not cache.contains("item", "i1")
    await cache.close()


async def test_single_flight(inner: FakeStore, clock: Clock):
    inner.delay_s = 0.02
    cache = cache_of(inner, clock)
    results = await asyncio.gather(
        cache.fetch(items("i1", "i2")),
        cache.fetch(items("i2", "i1", "i3")),
        cache.fetch(items("i1")),
    )
    assert inner.calls == 2  # the first read, and one for i3 only
    assert inner.keys == 3
    assert cache.stats.joined == 3
    for (r,) in results:
        assert r.found.all()
    np.testing.assert_array_equal(results[1][0].rows[1], inner.data["item"]["i1"])
    await cache.close()


async def test_stale_served_when_store_fails(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    (fresh,) = await cache.fetch(items("i1", "i2"))
    clock.t += 15.0  # expired, within stale_ttl_s
    inner.fail = True
    (r,) = await cache.fetch(items("i1", "i2", "i3"))
    assert r.found.tolist() == [True, True, False]
    np.testing.assert_array_equal(r.rows[:2], fresh.rows)
    assert set(r.degraded) == {STALE, STORE_UNAVAILABLE}
    assert cache.stats.stale_served == 2 and cache.stats.unavailable == 1
    assert r.unknown.tolist() == [False, False, False]  # i3 is not said to be unknown
    clock.t += 40.0  # past stale_ttl_s: nothing usable
    (r,) = await cache.fetch(items("i1"))
    assert not r.found.any() and r.degraded == (STORE_UNAVAILABLE,)
    inner.fail = False
    (r,) = await cache.fetch(items("i1"))
    assert r.found.all() and r.degraded == ()
    await cache.close()


async def test_outage_is_reported_never_raised_nor_called_unknown(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    inner.fail = True
    (r,) = await cache.fetch(items("i1", "nope"))
    assert r.degraded == (STORE_UNAVAILABLE,)
    assert not r.found.any() and not r.unknown.any()
    assert cache.stats.store_failures == 1 and cache.stats.unavailable == 2
    await cache.close()


async def test_every_failure_says_why_even_when_all_served_stale(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    await cache.fetch(items("i1"))
    clock.t += 15.0
    inner.fail = True
    (r,) = await cache.fetch(items("i1"))
    assert r.found.all() and set(r.degraded) == {STALE, STORE_UNAVAILABLE}
    await cache.close()


async def test_gather_writes_model_order_columns_and_leaves_defaults(
    inner: FakeStore, clock: Clock, item_data
) -> None:
    cache = cache_of(inner, clock)
    out = np.full((3, 5), -7.0)
    dst = np.array([4, 0, 2], dtype=np.int64)
    src = np.array([1, 3, 6], dtype=np.int64)
    ids = Ids.from_strs(["i1", "nope", "i2"])
    for _ in range(2):  # a miss (read through), then a hit (native gather)
        out[:] = -7.0
        (g,) = await cache.gather([Lookup("item", ids)], [Target(out, dst, src)])
        assert g.found.tolist() == [True, False, True]
        assert g.unknown.tolist() == [False, True, False]
        for row, i in ((0, "i1"), (2, "i2")):
            np.testing.assert_array_equal(out[row, dst], item_data["item"][i][src].astype(float))
            assert (out[row, [1, 3]] == -7.0).all()
        assert (out[1] == -7.0).all()
    assert inner.calls == 1
    await cache.close()


async def test_slow_inner_answers_degraded_within_timeout(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    await cache.fetch(items("i1"))
    clock.t += 11.0
    inner.delay_s = 0.2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    (r,) = await cache.fetch(items("i1", "i9"), timeout_s=0.02)
    assert loop.time() - t0 < 0.15
    assert r.found.tolist() == [True, False]
    assert set(r.degraded) == {STALE, FETCH_TIMEOUT}
    assert cache.stats.fetch_timeouts == 1
    await cache.close()  # cancels the read still in flight


async def test_mixed_entity_types_in_one_inner_read(inner: FakeStore, clock: Clock):
    cache = cache_of(inner, clock)
    user, item = await cache.fetch([Lookup("user", ["u1"]), Lookup("item", ["i1", "i2"])])
    assert inner.calls == 1
    assert user.found.all() and item.found.all()
    await cache.close()


async def test_cancelled_requester_does_not_cancel_the_read(inner: FakeStore, clock: Clock):
    inner.delay_s = 0.05
    cache = cache_of(inner, clock)
    first = asyncio.create_task(cache.fetch(items("i1")))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.08)  # the shared read finishes and fills the cache
    (r,) = await cache.fetch(items("i1"))
    assert r.found.all() and inner.calls == 1 and cache.stats.hits == 1
    await cache.close()
