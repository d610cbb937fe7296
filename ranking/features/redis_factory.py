"""Build the Redis feature-store stack from settings: cache(hedged(replicas)).

    store = await build_redis_store(
        ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
        cluster=False, namespace="rank", entity_types=("user", "item"),
        cache=settings.cache,   # ranking.settings.CacheSettings (capacity 0: no cache)
        hedge=settings.hedge,   # ranking.settings.HedgeSettings, or a tuned HedgePolicy
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

from ranking.errors import FeatureStoreUnavailable
from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore, HedgePolicy
from ranking.features.redis_store import RedisFeatureStore, connect_redis
from ranking.features.store import FeatureStore
from ranking.settings import CacheSettings, HedgeSettings

__all__ = ["build_redis_store"]


async def build_redis_store(
    urls: Sequence[str],
    *,
    cluster: bool = False,
    namespace: str,
    entity_types: Sequence[str] = ("user", "item"),
    buckets: int | None = None,
    timeout_s: float = 0.05,
    cache: CacheSettings | None = None,
    hedge: HedgeSettings | HedgePolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FeatureStore:
    """Connect to every replica, read the schemas, and stack cache(hedged(replicas)).

    buckets: hash-tag buckets per entity type (default 16 with `cluster`, else 0); must match
        the loader's. timeout_s: a replica read's timeout when the caller gives none.
    cache, hedge: the settings objects (None: their defaults); a `HedgePolicy` is used as is.
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
    if isinstance(hedge, HedgePolicy):
        policy = hedge
    else:
        policy = HedgePolicy.from_settings(hedge or HedgeSettings.defaults(), timeout_s=timeout_s)
    store: FeatureStore = HedgedFeatureStore(replicas, policy=policy)
    params = cache or CacheSettings.defaults()
    if params.capacity > 0:
        store = CachedFeatureStore(store, params, clock=clock, entity_types=entity_types)
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
