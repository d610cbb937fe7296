"""Serving from Redis: the same ranking as the in-process store; outages degrade, strict fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.server.app import App
from ranking.settings import CacheSettings
from tests.conftest import SmallWorld, small_settings
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def load_with_cli(world: SmallWorld, server: RedisServer) -> None:
    for entity_type, name in (("user", "users.csv"), ("item", "items.csv")):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ranking.cli",
                "features",
                "load",
                "--type",
                entity_type,
                "--file",
                str(world.folder / name),
                "--redis",
                server.url,
                "--namespace",
                "t",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "wrote" in out.stdout


def request(ids: list[str], strict: bool = False) -> pb.RankRequest:
    return pb.RankRequest(
        user_id="u7",
        candidates=[pb.Candidate(id=i) for i in ids],
        context={"c_hour": 5.0},
        strict=strict,
    )


async def test_redis_replicas_serve_and_outage_degrades(
    small_world: SmallWorld, redis_replicas: list[RedisServer]
) -> None:
    for server in redis_replicas:
        load_with_cli(small_world, server)
    settings = small_settings(
        small_world,
        features={},
        redis_urls=tuple(s.url for s in redis_replicas),
        redis_namespace="t",
        redis_timeout_ms=200.0,
        cache=CacheSettings.defaults(ttl_s=0.0),  # every read goes to Redis (stale kept)
    )
    app = App(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            ids = [f"i{k}" for k in range(100)]
            resp = await stub.Rank(request(ids))
            expected = small_world.booster.predict(
                small_world.matrix("u7", ids, 5.0), raw_score=True
            )
            got = {it.id: it.score for it in resp.items}
            assert [got[i] for i in ids] == expected.tolist()
            assert list(resp.degraded_reasons) == []

            # One replica down: routed around, same answer.
            redis_replicas[0].kill()
            again = await stub.Rank(request(ids))
            assert {it.id: it.score for it in again.items} == got

            # All replicas down: answered from the cache's stale copies and defaults.
            redis_replicas[1].kill()
            fresh = ["i300", "i301"]
            down = await stub.Rank(request([*ids[:5], *fresh]), timeout=5)
            assert len(down.items) == 7
            reasons = set(down.degraded_reasons)
            assert {"features.store_unavailable", "features.stale"} <= reasons, reasons
            # ... unless the caller asked for strict mode.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Rank(request(fresh, strict=True), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "redis" not in (info.value.details() or "").lower()
    finally:
        await app.stop(0.5)
