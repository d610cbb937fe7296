"""Process-level behaviour: SIGTERM drains in-flight calls; multi-worker serving; reload."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.ports import free_port
from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.scoring.bundle import write_bundle
from ranking.server.app import App
from tests.conftest import FEATURES, SmallWorld, small_settings, train_small

ROOT = Path(__file__).resolve().parents[2]
LOGS: dict[int, Path] = {}


def start_server(
    world: SmallWorld, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "ranking.cli",
        "serve",
        "--bundle",
        str(world.bundle),
        "--port",
        str(port),
        "--features",
        f"user={world.folder / 'users.csv'}",
        "--features",
        f"item={world.folder / 'items.csv'}",
        *extra,
    ]
    env = {**os.environ, "RANKING_RELOAD_POLL_S": "0", "RANKING_GRACE_S": "10", **(env or {})}
    log = tempfile.NamedTemporaryFile(prefix="ranking-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    LOGS[proc.pid] = Path(log.name)
    return proc


async def wait_serving(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60, service: str = ""
) -> None:
    """Until health says SERVING: for `service` "" (the default) one worker is up; for
    "ranking.v1.RankingService" every worker is."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {LOGS[proc.pid].read_text()[-2000:]}")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not become healthy in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    LOGS.pop(proc.pid).unlink(missing_ok=True)


def big_request(n: int = 1000) -> pb.RankRequest:
    return pb.RankRequest(
        user_id="u1", candidates=[pb.Candidate(id=f"i{k % 500}x{k}") for k in range(n)]
    )


async def test_sigterm_drains_in_flight_calls(small_world: SmallWorld) -> None:
    port = free_port()
    proc = start_server(
        small_world,
        port,
        *("--workers", "1", "--limiter", "off", "--engine", "lightgbm"),
        *("--max-pending-calls", "0"),  # 40 calls at once: all must queue, none be refused
    )
    try:
        await wait_serving(port, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            await stub.Rank(big_request(10))  # connection up
            calls = [asyncio.ensure_future(stub.Rank(big_request(), timeout=30)) for _ in range(40)]
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, [repr(e) for e in errors]
        assert all(len(r.items) == 1000 for r in results)  # type: ignore[union-attr]
        assert proc.wait(30) == 0
    finally:
        stop(proc)


async def test_two_workers_share_the_port(small_world: SmallWorld) -> None:
    port, admin_port = free_port(), free_port()
    proc = start_server(small_world, port, "--workers", "2", "--admin-port", str(admin_port))
    try:
        await wait_serving(port, proc)
        for _ in range(6):  # fresh connections land on either worker
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                resp = await ranking_pb2_grpc.RankingServiceStub(ch).Rank(big_request(20))
                assert len(resp.items) == 20
        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
            stats = await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
        assert stats.workers == 2
        assert stats.counters["ok"] >= 6  # summed over both workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)


async def test_admin_reload_swaps_and_refuses_broken(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    import numpy as np

    newer = tmp_path / "v2"
    booster2 = train_small(np.random.default_rng(99), trees=10, leaves=5)
    write_bundle(newer, booster2.model_to_string(), FEATURES, version="small-v2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.txt").write_text("tree\nversion=v4\nthis is not a model\n")
    (broken / "schema.json").write_text((newer / "schema.json").read_text())

    app = App(small_settings(small_world, admin_token="s3cret", admin_port=0))
    await app.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.admin}") as admin_ch,
        ):
            admin = admin_pb2_grpc.AdminServiceStub(admin_ch)
            rank = ranking_pb2_grpc.RankingServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.ReloadModel(admin_pb2.ReloadModelRequest(bundle_path=str(newer)))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            token = (("x-admin-token", "s3cret"),)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.ReloadModel(
                    admin_pb2.ReloadModelRequest(bundle_path=str(broken)), metadata=token
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "old model still serving" in (info.value.details() or "")
            assert (await rank.Rank(big_request(5))).model_version == "small-v1"
            done = await admin.ReloadModel(
                admin_pb2.ReloadModelRequest(bundle_path=str(newer)), metadata=token
            )
            assert done.model_version == "small-v2"
            resp = await rank.Rank(big_request(5))
            assert resp.model_version == "small-v2"
            m = small_world.matrix("u1", [it.id for it in resp.items], 12.0)
            expected = booster2.predict(m, raw_score=True)
            assert [it.score for it in resp.items] == expected.tolist()
    finally:
        await app.stop(0.5)


async def test_watched_bundle_reloads_under_load(small_world: SmallWorld, tmp_path: Path) -> None:
    """Requests keep succeeding through a reload; each response is wholly one model's."""
    import numpy as np

    folder = tmp_path / "live"
    b1 = small_world.booster
    write_bundle(folder, b1.model_to_string(), FEATURES, version="live-1", prior="i_pop")
    b2 = train_small(np.random.default_rng(5), trees=12, leaves=6)
    app = App(small_settings(small_world, bundle=folder, reload_poll_s=0.05, limiter="off"))
    await app.start()
    ids = [f"i{k}" for k in range(30)]
    m = small_world.matrix("u1", ids, 12.0)
    want = {"live-1": b1.predict(m, raw_score=True), "live-2": b2.predict(m, raw_score=True)}
    seen: set[str] = set()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            rank = ranking_pb2_grpc.RankingServiceStub(ch)
            req = pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=i) for i in ids])
            swapped_at = None
            for step in range(400):
                if step == 20:
                    write_bundle(folder, b2.model_to_string(), FEATURES, version="live-2")
                    swapped_at = step
                resps = await asyncio.gather(*(rank.Rank(req) for _ in range(5)))
                for r in resps:
                    seen.add(r.model_version)
                    got = {it.id: it.score for it in r.items}
                    assert [got[i] for i in ids] == want[r.model_version].tolist()
                if "live-2" in seen and step > (swapped_at or 0) + 5:
                    break
                await asyncio.sleep(0.01)
    finally:
        await app.stop(0.5)
    assert seen == {"live-1", "live-2"}


RANKING = "ranking.v1.RankingService"


async def _status(port: int, service: str = RANKING) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(r.status)


async def test_health_turns_not_serving_when_a_drain_starts(small_world: SmallWorld) -> None:
    """Readiness follows the service: SERVING once started, NOT_SERVING from the first moment
    of a drain while in-flight calls still finish."""
    from tests.conftest import GatedStore

    app = App(small_settings(small_world, limiter="off"))
    assert not app.ready()  # no model loaded, nothing listening yet
    await app.start()
    port = app.port
    assert app.core is not None
    store = GatedStore.of(small_world)
    app.core.store = store
    stopping = None
    try:
        assert await _status(port) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = asyncio.ensure_future(
                ranking_pb2_grpc.RankingServiceStub(ch).Rank(big_request(5), timeout=10)
            )
            await asyncio.sleep(0.1)  # the call is in flight, held by the store's gate
            stopping = asyncio.ensure_future(app.stop(grace_s=5))
            await asyncio.sleep(0.05)
            assert await _status(port) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _status(port, "") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not call.done()
            store.gate.set()
            assert len((await call).items) == 5
        await stopping
    finally:
        store.gate.set()
        if stopping is None:
            await app.stop(0.5)


async def test_health_is_not_serving_while_a_sibling_worker_is_missing(
    small_world: SmallWorld,
) -> None:
    """Two workers sharing a roster (here in one process, on two ports): each is ready (the
    service's status) only while both are up; each is alive ("") while it serves."""
    from ranking.server.roster import Roster

    roster = Roster(2)
    first = App(small_settings(small_world), worker=0, roster=roster)
    second = App(small_settings(small_world), worker=1, roster=roster)
    await first.start()
    try:
        assert await _status(first.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        await second.start()
        await asyncio.sleep(0.15)  # the readiness loop runs every 50 ms
        assert await _status(first.port) == health_pb2.HealthCheckResponse.SERVING
        assert await _status(second.port) == health_pb2.HealthCheckResponse.SERVING
        roster.clear(1)  # what the parent does when worker 1 dies
        await asyncio.sleep(0.15)
        assert await _status(first.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _status(first.port, "") == health_pb2.HealthCheckResponse.SERVING
        roster.set_ready(1, True)  # it is back
        await asyncio.sleep(0.15)
        assert await _status(first.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await second.stop(0.2)
        await first.stop(0.2)


async def test_warm_up_runs_before_serving_and_leaves_no_trace(
    small_world: SmallWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """The warm-up's queries go through the core (store, assemble, scorer) before the port is
    bound, with their own limiter and telemetry: the counters callers see start at zero."""
    import logging

    app = App(small_settings(small_world, warmup_rounds=3))
    with caplog.at_level(logging.INFO, logger="ranking.server.warmup"):
        await app.start()
    try:
        assert "warmed up with 3 rounds of 8 queries" in caplog.text
        assert "(0 failed)" in caplog.text
        assert app.core is not None
        assert app.telemetry.stats.totals()["requests"] == 0
        assert app.core.limiter.accepted == 0
        assert app.core.models.current.cost.per_row_s > 0
    finally:
        await app.stop(0.5)
