"""Every degraded reason appears exactly when it is true: a real gRPC server, a real redis-server
stopped, paused and started again, and the answers' `degraded_reasons` compared as whole sets.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.degraded import OUTAGE, Degraded
from ranking.features.redis_loader import load_entities
from ranking.server.app import App
from ranking.settings import CacheSettings
from tests.conftest import ITEM_COLS, USER_COLS, SmallWorld, small_settings
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
NS = "deg"
D = Degraded


def load(world: SmallWorld, server: RedisServer) -> None:
    users = [f"u{k}" for k in range(len(world.users))]
    items = [f"i{k}" for k in range(len(world.items))]
    load_entities(server.url, NS, "user", users, USER_COLS, world.users, progress=False)
    load_entities(server.url, NS, "item", items, ITEM_COLS, world.items, progress=False)


def request(user: str, ids: list[str], strict: bool = False) -> pb.RankRequest:
    return pb.RankRequest(
        user_id=user,
        candidates=[pb.Candidate(id=i) for i in ids],
        context={"c_hour": 5.0},
        strict=strict,
    )


class Served:
    def __init__(
        self, app: App, stub: ranking_pb2_grpc.RankingServiceStub, world: SmallWorld
    ) -> None:
        self.app = app
        self.stub = stub
        self.world = world

    async def reasons(self, user: str, ids: list[str]) -> set[str]:
        resp = await self.stub.Rank(request(user, ids), timeout=5.0)
        assert len(resp.items) == len(ids)
        return set(resp.degraded_reasons)

    async def strict_code(self, user: str, ids: list[str]) -> grpc.StatusCode:
        try:
            await self.stub.Rank(request(user, ids, strict=True), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            assert "redis" not in (exc.details() or "").lower()
            return exc.code()
        return grpc.StatusCode.OK


async def serve(world: SmallWorld, server: RedisServer, **overrides: object) -> App:
    settings = small_settings(
        world,
        features={},
        redis_urls=(server.url,),
        redis_namespace=NS,
        redis_timeout_ms=300.0,
        **overrides,
    )
    app = App(settings)
    await app.start()
    return app


@pytest.fixture
async def served(small_world: SmallWorld, redis_server: RedisServer) -> AsyncIterator[Served]:
    load(small_world, redis_server)
    # TTL 0: every read goes to Redis; expired entries still serve as stale copies.
    app = await serve(small_world, redis_server, cache=CacheSettings.defaults(ttl_s=0.0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield Served(app, ranking_pb2_grpc.RankingServiceStub(channel), small_world)
    finally:
        await app.stop(0.5)


KNOWN = [f"i{k}" for k in range(20)]


async def test_healthy_answers_carry_no_reason(served: Served) -> None:
    assert await served.reasons("u3", KNOWN) == set()


async def test_unknown_user_and_items_exactly(served: Served) -> None:
    assert await served.reasons("u-nobody", KNOWN) == {D.USER_UNKNOWN}
    assert await served.reasons("u3", [*KNOWN, "i-nope"]) == {D.ITEMS_UNKNOWN}
    assert await served.reasons("u-nobody", ["i-nope"]) == {D.USER_UNKNOWN, D.ITEMS_UNKNOWN}
    # unknown ids are not an outage: a strict request is answered
    assert await served.strict_code("u-nobody", ["i-nope", *KNOWN]) == grpc.StatusCode.OK


async def test_empty_user_id_is_reported_not_refused(served: Served) -> None:
    """Anonymous traffic is served with default user features, and says so."""
    assert await served.reasons("", KNOWN) == {D.USER_MISSING}
    assert await served.strict_code("", KNOWN) == grpc.StatusCode.OK


async def test_outage_says_unavailable_and_stale_never_unknown(
    served: Served, redis_server: RedisServer
) -> None:
    assert await served.reasons("u3", KNOWN[:10]) == set()  # cached (expired at once: TTL 0)
    redis_server.kill()
    # ids read before: stale copies; ids never read: defaults. Nobody is called unknown.
    assert await served.reasons("u3", KNOWN[:10]) == {D.STORE_UNAVAILABLE, D.STALE}
    assert await served.reasons("u3", [*KNOWN[:10], "i400", "i401"]) == {
        D.STORE_UNAVAILABLE,
        D.STALE,
    }
    assert await served.reasons("u9", ["i402", "i403"]) == {D.STORE_UNAVAILABLE}
    assert await served.strict_code("u3", KNOWN[:10]) == grpc.StatusCode.UNAVAILABLE
    assert await served.strict_code("u9", ["i404"]) == grpc.StatusCode.UNAVAILABLE
    redis_server.start()  # same port, empty (no persistence); the store reconnects by itself
    load(served.world, redis_server)
    deadline = time.monotonic() + 10.0
    while (got := await served.reasons("u3", ["i405", *KNOWN[:3]])) != set():
        assert got <= {D.STORE_UNAVAILABLE, D.STALE}
        assert time.monotonic() < deadline, "did not recover after the restart"
        await asyncio.sleep(0.1)
    stats = served.app.telemetry.stats.totals()
    assert stats["store_errors"] >= 5  # three answers and two strict refusals
    assert stats["unknown_users"] == stats["unknown_items"] == 0


async def test_slow_store_says_fetch_timeout_not_unavailable(
    small_world: SmallWorld, redis_server: RedisServer
) -> None:
    """A hung store within a tight budget: the fetch ran out of its share (FETCH_TIMEOUT),
    counted apart from outages; never unknown, never store_unavailable."""
    load(small_world, redis_server)
    app = await serve(
        small_world,
        redis_server,
        budget_ms=60.0,
        cache=CacheSettings.defaults(ttl_s=0.0),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            s = Served(app, ranking_pb2_grpc.RankingServiceStub(channel), small_world)
            assert await s.reasons("u3", KNOWN[:5]) == set()
            redis_server.pause()
            try:
                t0 = time.perf_counter()
                assert await s.reasons("u3", KNOWN[:5]) == {D.FETCH_TIMEOUT, D.STALE}
                assert await s.reasons("u8", ["i300"]) == {D.FETCH_TIMEOUT}
                assert time.perf_counter() - t0 < 2.0  # each within its budget (+ slack)
                assert await s.strict_code("u3", KNOWN[:5]) == grpc.StatusCode.UNAVAILABLE
            finally:
                redis_server.resume()
            deadline = time.monotonic() + 10.0
            while await s.reasons("u3", KNOWN[:5]) != set():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            stats = app.telemetry.stats.totals()
            assert stats["fetch_timeouts"] >= 3
            assert stats["store_errors"] == 0
    finally:
        await app.stop(0.5)


async def test_schema_mismatch_is_reported_not_called_unknown(
    served: Served, redis_server: RedisServer
) -> None:
    with redis_server.client() as c:
        c.set(f"{NS}:item:i7", b"RF\x01\x00\xde\xad\xbe\xef" + b"\0" * 16)  # wrong schema id
    assert await served.reasons("u3", ["i6", "i7", "i8"]) == {D.SCHEMA_MISMATCH}
    assert await served.reasons("u3", ["i6", "i8"]) == set()


async def test_partial_scoring_only_when_rows_do_not_fit(served: Served) -> None:
    assert await served.reasons("u3", KNOWN) == set()
    assert served.app.core is not None
    model = served.app.core.models.current
    model.cost.per_row_s, model.cost.alpha = 1.0, 0.0  # pretend a row costs a second
    assert await served.reasons("u3", KNOWN) == {D.PARTIAL_SCORING}


def test_readme_table_lists_exactly_the_reasons() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("`degraded_reasons` (empty when nothing was cut):", 1)[1].split("\n\n")[1]
    listed = re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.M)
    assert sorted(listed) == sorted(r.value for r in Degraded)
    assert {D.STORE_UNAVAILABLE, D.FETCH_TIMEOUT, D.STALE} == OUTAGE


async def test_without_a_cache_the_same_reasons_and_the_same_strict_rule(
    small_world: SmallWorld, redis_server: RedisServer
) -> None:
    """No cache: the store's exception, not a cache's report, reaches the core; the reasons and
    the strict refusal are the same (one rule, `OUTAGE`)."""
    load(small_world, redis_server)
    app = await serve(
        small_world, redis_server, budget_ms=60.0, cache=CacheSettings.defaults(capacity=0)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            s = Served(app, ranking_pb2_grpc.RankingServiceStub(channel), small_world)
            assert await s.reasons("u3", [*KNOWN[:5], "i-nope"]) == {D.ITEMS_UNKNOWN}
            redis_server.pause()
            try:
                assert await s.reasons("u3", KNOWN[:5]) == {D.FETCH_TIMEOUT}
                assert await s.strict_code("u3", KNOWN[:5]) == grpc.StatusCode.UNAVAILABLE
            finally:
                redis_server.resume()
            redis_server.kill()
            assert await s.reasons("u3", KNOWN[:5]) == {D.STORE_UNAVAILABLE}
            assert await s.strict_code("u3", KNOWN[:5]) == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(0.5)
