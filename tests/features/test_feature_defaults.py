"""The feature stack's defaults come from one place: `CacheSettings` and `HedgeSettings`."""

from __future__ import annotations

import dataclasses

import pytest

from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore, HedgePolicy
from ranking.features.redis_factory import build_redis_store
from ranking.features.redis_loader import load_entities
from ranking.settings import CacheSettings, HedgeSettings, Settings
from tests.features.conftest import COLUMNS, FakeStore, make_matrix
from tests.redis_servers import RedisServer


def test_settings_nest_the_component_settings_with_the_same_defaults() -> None:
    s = Settings()
    assert s.cache == CacheSettings.defaults()
    assert s.hedge == HedgeSettings.defaults()
    assert s.cache.capacity == 200_000 and s.hedge.delay_floor_ms == 0.5


def test_hedge_policy_defaults_are_the_settings_defaults() -> None:
    hs, policy = HedgeSettings.defaults(), HedgePolicy()
    assert (policy.enabled, policy.percentile, policy.floor_ms, policy.cap_ms) == (
        hs.enabled,
        hs.percentile,
        hs.delay_floor_ms,
        hs.delay_cap_ms,
    )
    assert policy.budget_ratio == hs.budget_ratio
    tuned = HedgePolicy.from_settings(hs.defaults(delay_floor_ms=2.0), timeout_s=0.2)
    assert dataclasses.replace(HedgePolicy(), floor_ms=2.0, timeout_s=0.2) == tuned


def test_env_reaches_the_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKING_CACHE_CAPACITY", "1234")
    monkeypatch.setenv("RANKING_HEDGE_DELAY_FLOOR_MS", "1.5")
    s = Settings()
    assert s.cache.capacity == 1234 and s.hedge.delay_floor_ms == 1.5
    monkeypatch.setenv("RANKING_HEDGE_DELAY_FLOOR_MS", "50")  # above the 20 ms cap
    with pytest.raises(ValueError, match="delay_floor_ms"):
        Settings()


def test_cache_default_capacity_is_the_settings_one() -> None:
    cache = CachedFeatureStore(FakeStore({"item": {}}))
    assert cache.capacity == CacheSettings.defaults().capacity
    with pytest.raises(ValueError):
        CachedFeatureStore(FakeStore({}), CacheSettings.defaults(capacity=0))


async def test_factory_without_settings_uses_the_defaults(redis_server: RedisServer) -> None:
    load_entities(redis_server.url, "d", "item", ["i0"], COLUMNS, make_matrix(1), progress=False)
    store = await build_redis_store([redis_server.url], namespace="d", entity_types=("item",))
    try:
        assert isinstance(store, CachedFeatureStore)
        assert store.capacity == CacheSettings.defaults().capacity
        hedged = store.inner
        assert isinstance(hedged, HedgedFeatureStore)
        assert hedged.policy.floor_ms == HedgeSettings.defaults().delay_floor_ms
    finally:
        await store.close()
