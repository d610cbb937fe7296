"""Overload over a real transport: what a caller sees when the server sheds.

Two mechanisms, each tested end to end with a real grpc.aio server and a real client:
the concurrency limiter (RESOURCE_EXHAUSTED with retry hints, for calls the worker has taken)
and gRPC's core backlog cap (`max_pending_calls`: CANCELLED at once, for calls a busy worker
has not taken yet).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.client import check_health
from ranking.features.store import FetchResult, Gathered, Lookup, Target
from ranking.server.app import App
from tests.conftest import GatedStore, SmallWorld, small_settings


def request(n: int = 20) -> pb.RankRequest:
    return pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(n)])


async def stats(port: int) -> admin_pb2.GetStatsResponse:
    """GetStats from the admin port `port`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())


async def test_calls_over_the_limit_get_resource_exhausted_with_a_retry_hint(
    small_world: SmallWorld,
) -> None:
    app = App(
        small_settings(
            small_world, limiter="fixed", limiter_fixed=2, max_pending_calls=0, admin_port=0
        )
    )
    await app.start()
    assert app.core is not None
    store = GatedStore.of(small_world)
    app.core.store = store
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            calls = [stub.Rank(request(), timeout=10) for _ in range(6)]
            tasks = [asyncio.ensure_future(c) for c in calls]  # type: ignore[call-overload]
            await asyncio.sleep(0.3)
            shed = [t for t in tasks if t.done()]
            assert len(shed) == 4  # two wait on the store, the rest are refused at once
            for t in shed:
                err = t.exception()
                assert isinstance(err, grpc.aio.AioRpcError)
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "retry later" in (err.details() or "")
                trailers = dict(err.trailing_metadata() or ())
                assert int(trailers["retry-after-ms"]) >= 1
                assert trailers["grpc-retry-pushback-ms"] == trailers["retry-after-ms"]
            store.gate.set()
            answers = await asyncio.gather(*(t for t in tasks if t not in shed))
            assert [len(a.items) for a in answers] == [20, 20]
            # Once the burst is over, calls are admitted again.
            assert len((await stub.Rank(request(), timeout=10)).items) == 20
        got = await stats(app.listeners.admin)
        assert got.counters["shed"] == 4
        assert got.counters["limiter_rejected"] == 4
        assert got.counters["ok"] == 3
    finally:
        await app.stop(0.5)


async def test_a_caller_deadline_passing_mid_call_is_counted_as_dropped_not_logged(
    small_world: SmallWorld, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(small_settings(small_world, limiter="fixed", limiter_fixed=4, admin_port=0))
    await app.start()
    assert app.core is not None
    app.core.store = GatedStore.of(small_world)  # never opened: the call outlives its deadline
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Rank(request(), timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for _ in range(50):  # the server notices the cancellation on its own loop
                if app.core.limiter.inflight == 0:
                    break
                await asyncio.sleep(0.02)
        got = await stats(app.listeners.admin)
        assert got.counters["cancelled"] == 1
        assert got.counters["internal"] == 0
        assert got.counters["limiter_dropped"] == 1  # an overload signal for the limit
        assert got.counters["limiter_inflight"] == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await app.stop(0.5)


class LoopBlockingStore(GatedStore):
    """Blocks the worker's event loop (as CPU-bound work does) in the first fetch only."""

    block_s = 1.0
    entered: threading.Event

    def _block_once(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            time.sleep(self.block_s)

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        self._block_once()
        return self.fetch_now(lookups)

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        self._block_once()
        return self.gather_now(lookups, targets)


def burst_while_blocked(port: int, entered: threading.Event, extra: int) -> list[tuple[str, float]]:
    """One call that blocks the server, then `extra` more; (status, seconds) of each extra.

    A plain (thread-based) client: the server's loop is blocked on purpose, so the client must
    not share it.
    """
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ranking_pb2_grpc.RankingServiceStub(ch)
        first = stub.Rank.future(request(), timeout=20)
        assert entered.wait(10), "the first call never reached the store"
        t0 = time.monotonic()
        done: list[tuple[str, float]] = []
        lock = threading.Lock()

        def record(f: grpc.Future) -> None:
            code = f.code()
            with lock:
                done.append((code.name, time.monotonic() - t0))

        futures = [stub.Rank.future(request(), timeout=20) for _ in range(extra)]
        for f in futures:
            f.add_done_callback(record)
        for f in futures:
            f.exception()  # wait for each
        assert first.code() == grpc.StatusCode.OK
    return done


@pytest.mark.parametrize("max_pending", [1, 0])
async def test_core_backlog_refuses_calls_a_busy_worker_has_not_taken(
    small_world: SmallWorld, max_pending: int
) -> None:
    app = App(small_settings(small_world, limiter="off", max_pending_calls=max_pending))
    await app.start()
    assert app.core is not None
    store = LoopBlockingStore.of(small_world)
    store.entered = threading.Event()
    app.core.store = store
    try:
        results = await asyncio.to_thread(burst_while_blocked, app.port, store.entered, 8)
    finally:
        await app.stop(0.5)
    codes = sorted(code for code, _ in results)
    if max_pending == 0:
        # gRPC's default backlog: every call waits for the loop and is answered late.
        assert codes == ["OK"] * 8
        assert min(t for _, t in results) > 0.5 * store.block_s
        return
    # One call handed to the blocked worker and one in the backlog are answered; the rest are
    # refused by gRPC's core while the worker is still blocked, without any Python work.
    cancelled = [t for code, t in results if code == "CANCELLED"]
    assert codes.count("OK") <= 3
    assert len(cancelled) >= 5
    assert max(cancelled) < 0.5 * store.block_s


class RefusingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Refuses the first `refusals` checks as an overloaded server does, then answers."""

    def __init__(self, refusals: int, code: grpc.StatusCode) -> None:
        self.refusals = refusals
        self.code = code
        self.calls = 0

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.calls += 1
        if self.calls <= self.refusals:
            await context.abort(self.code, "busy")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize(
    ("refusals", "code", "want"),
    [
        (3, grpc.StatusCode.CANCELLED, ("OK", health_pb2.HealthCheckResponse.SERVING)),
        (2, grpc.StatusCode.RESOURCE_EXHAUSTED, ("OK", health_pb2.HealthCheckResponse.SERVING)),
        (10**6, grpc.StatusCode.CANCELLED, ("CANCELLED", None)),  # wedged: never takes a call
        (1, grpc.StatusCode.UNAVAILABLE, ("UNAVAILABLE", None)),  # not a busy refusal
    ],
)
async def test_health_probe_retries_busy_refusals_until_its_timeout(
    refusals: int, code: grpc.StatusCode, want: tuple[str, int | None]
) -> None:
    server = grpc.aio.server()
    servicer = RefusingHealth(refusals, code)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        started = time.monotonic()
        got = await asyncio.to_thread(check_health, f"127.0.0.1:{port}", "", 0.5)
        elapsed = time.monotonic() - started
    finally:
        await server.stop(0)
    assert got == want
    if want[1] is None and code == grpc.StatusCode.CANCELLED:
        assert servicer.calls > 3 and elapsed < 1.0  # kept trying, and gave up in time
    if code == grpc.StatusCode.UNAVAILABLE:
        assert servicer.calls == 1
