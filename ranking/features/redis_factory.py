"""Build the Redis feature-store stack from settings: cache(hedged(replicas)).

    store = await build_redis_store(
        ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
        cluster=False, namespace="rank", entity_types=("user", "item"),
        cache=CacheParams(capacity=200_000, ttl_s=60),
        hedge=HedgePolicy(percentile=95, floor_ms=1, cap_ms=20),
    )
    ...
    await store.close()   # closes the cache, the hedger and every replica's pool

Each URL is one replica holding the same data (a primary and its read replicas, or independent
instances loaded alike); with `cluster=True` each URL is a seed of one whole cluster, and
several clusters are hedged like replicas. The schemas are read once from the first replica that
answers and handed to all, so a replica that is down at start-up only makes the service start
degraded; if none answers, `FeatureStoreUnavailable` is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ranking.errors import FeatureStoreUnavailable
from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore, HedgePolicy
from ranking.features.redis_store import RedisFeatureStore, connect_redis
from ranking.features.store import FeatureStore

__all__ = ["CacheParams", "build_redis_store"]


@dataclass(frozen=True, slots=True)
class CacheParams:
    """The cache's settings (see `CachedFeatureStore`); `enabled=False` leaves it out."""

    enabled: bool = True
    capacity: int = 100_000
    ttl_s: float = 60.0
    negative_ttl_s: float = 10.0
    stale_ttl_s: float = 600.0
    strict: bool = False


async def build_redis_store(
    urls: Sequence[str],
    *,
    cluster: bool = False,
    namespace: str,
    entity_types: Sequence[str] = ("user", "item"),
    buckets: int | None = None,
    timeout_s: float = 0.05,
    cache: CacheParams | None = None,
    hedge: HedgePolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FeatureStore:
    """Connect to every replica, read the schemas, and stack cache(hedged(replicas)).

    buckets: hash-tag buckets per entity type (default 16 with `cluster`, else 0); must match
        the loader's. timeout_s: a replica read's timeout when the caller gives none.
    """
    if not urls:
        raise ValueError("need at least one Redis URL")
    replicas = [
        RedisFeatureStore(
            connect_redis(url, cluster=cluster),
            namespace=namespace,
            entity_types=entity_types,
            buckets=buckets,
            timeout_s=timeout_s,
            name=f"redis[{i}]",
        )
        for i, url in enumerate(urls)
    ]
    try:
        schemas = await _first_schemas(replicas, entity_types)
    except BaseException:
        for r in replicas:
            await r.close()
        raise
    for r in replicas:
        for et, cols in schemas.items():
            r.set_columns(et, cols)
    # Connect every replica now (best effort): the first requests run on a budget of a few ms.
    await asyncio.gather(*(r.ping(timeout_s=max(timeout_s, 0.5)) for r in replicas))
    policy = hedge or HedgePolicy(timeout_s=timeout_s)
    store: FeatureStore = HedgedFeatureStore(replicas, policy=policy)
    params = cache or CacheParams()
    if params.enabled:
        store = CachedFeatureStore(
            store,
            capacity=params.capacity,
            ttl_s=params.ttl_s,
            negative_ttl_s=params.negative_ttl_s,
            stale_ttl_s=params.stale_ttl_s,
            strict=params.strict,
            clock=clock,
        )
    return store


async def _first_schemas(
    replicas: Sequence[RedisFeatureStore], entity_types: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    last: Exception | None = None
    for r in replicas:
        try:
            await r.start()
        except FeatureStoreUnavailable as exc:
            last = exc
            continue
        return {et: r.columns(et) for et in entity_types}
    raise FeatureStoreUnavailable("no feature store replica answered at start-up") from last
