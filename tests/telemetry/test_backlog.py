"""Calls refused by gRPC's backlog cap are counted (from channelz) in ranking_shed_total."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

from ranking.server.app import App
from tests.conftest import SmallWorld, free_port, small_settings
from tests.server.test_overload import LoopBlockingStore, burst_while_blocked
from tests.telemetry.metrics_text import parse, value


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def test_backlog_refusals_are_counted_exactly_when_the_server_is_quiet(
    small_world: SmallWorld,
) -> None:
    settings = small_settings(
        small_world, limiter="off", max_pending_calls=1, metrics_port=free_port()
    )
    app = App(settings)
    await app.start()
    assert app.core is not None and app.metrics is not None
    store = LoopBlockingStore.of(small_world)
    store.entered = threading.Event()
    app.core.store = store
    try:
        before = parse(await asyncio.to_thread(scrape, app.metrics.port))
        results = await asyncio.to_thread(burst_while_blocked, app.port, store.entered, 8)
        after = parse(await asyncio.to_thread(scrape, app.metrics.port))
    finally:
        await app.stop(0.5)
    refused = sum(1 for code, _ in results if code == "CANCELLED")
    assert refused >= 5  # the cap did refuse most of the burst (see tests/server/test_overload)
    assert value(before, "ranking_shed_total", cause="backlog") == 0
    assert value(after, "ranking_shed_total", cause="backlog") == refused
    assert value(after, "ranking_shed_total", cause="limiter") == 0
    answered = 1 + len(results) - refused  # the blocking call and the answered extras
    assert value(after, "ranking_requests_total", code="OK") == answered
    started = value(after, "ranking_grpc_server_calls_started_total")
    assert started - value(before, "ranking_grpc_server_calls_started_total") == 1 + len(results)
