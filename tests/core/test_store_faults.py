"""Redis replicas paused, killed and restarted under a bounded load: no call fails.

A real gRPC server over two real redis-server replicas (cache TTL 0, so every request reads
Redis), ~60 requests a second for ~7 s from one client. Replica 0 is frozen (SIGSTOP) for
1.5 s, then replica 1 is killed (SIGKILL) and restarted empty and reloaded. Every call must be
answered OK, and no answer may call a stored id unknown: the faults may only show as hedging,
failover, `features.fetch_timeout` or `features.stale`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import numpy as np

from ranking.api.v1 import ranking_pb2_grpc
from ranking.degraded import Degraded
from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore
from ranking.server.app import App
from ranking.settings import CacheSettings
from tests.conftest import SmallWorld, small_settings
from tests.core.test_degraded import NS, load, request
from tests.redis_servers import RedisServer

RATE_PER_S = 60
DURATION_S = 7.0
ALLOWED = {Degraded.FETCH_TIMEOUT, Degraded.STALE, Degraded.STORE_UNAVAILABLE}


async def test_pause_kill_restart_under_load_no_failed_call(
    small_world: SmallWorld, redis_replicas: list[RedisServer]
) -> None:
    for server in redis_replicas:
        load(small_world, server)
    settings = small_settings(
        small_world,
        features={},
        redis_urls=tuple(s.url for s in redis_replicas),
        redis_namespace=NS,
        redis_timeout_ms=100.0,
        budget_ms=100.0,
        cache=CacheSettings.defaults(ttl_s=0.0),
    )
    app = App(settings)
    await app.start()
    rng = np.random.default_rng(5)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    worst = 0.0

    async def one(stub: ranking_pb2_grpc.RankingServiceStub) -> None:
        nonlocal worst
        ids = [f"i{k}" for k in rng.choice(len(small_world.items), 20, replace=False)]
        t0 = time.perf_counter()
        try:
            resp = await stub.Rank(request(f"u{rng.integers(50)}", ids), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            outcomes[exc.code().name] += 1
            return
        worst = max(worst, time.perf_counter() - t0)
        outcomes["OK"] += 1
        reasons.update(resp.degraded_reasons)

    async def faults() -> None:
        await asyncio.sleep(1.5)
        redis_replicas[0].pause()
        await asyncio.sleep(1.5)
        redis_replicas[0].resume()
        await asyncio.sleep(1.0)
        redis_replicas[1].kill()
        await asyncio.sleep(1.0)
        redis_replicas[1].start()
        load(small_world, redis_replicas[1])

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            fault_task = asyncio.create_task(faults())
            calls = []
            start = time.perf_counter()
            for k in range(int(RATE_PER_S * DURATION_S)):
                delay = start + k / RATE_PER_S - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                calls.append(asyncio.create_task(one(stub)))
            async with asyncio.timeout(30):
                await asyncio.gather(*calls)
                await fault_task
    finally:
        for s in redis_replicas:
            s.resume()
        assert isinstance(app.store, CachedFeatureStore)
        hedged = app.store.inner
        await app.stop(0.5)

    total = int(RATE_PER_S * DURATION_S)
    assert outcomes == {"OK": total}, outcomes
    assert set(reasons) <= ALLOWED, reasons  # a stored id is never called unknown
    assert worst < 1.0  # budget 100 ms; slack for a loaded 2-core machine
    assert isinstance(hedged, HedgedFeatureStore)
    assert hedged.stats.hedges_won + hedged.stats.failovers >= 1  # the faults were met
    assert hedged.stats.errors[1] >= 1  # the killed replica was noticed
