"""Client-side load balancing: gRPC sends every call of a channel on one connection, and
SO_REUSEPORT workers (like a ClusterIP's kube-proxy) spread connections, not calls. The README's
client configs are checked here: round_robin with health checking over several replicas' addresses
(what a headless Service's DNS name gives), and a pool of connections for a multi-worker server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.client import balanced_options
from ranking.server.app import App
from ranking.telemetry.stats import INDEX, Stats
from tests.conftest import SmallWorld, free_port, small_settings

ROOT = Path(__file__).resolve().parents[2]
REQUEST = pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(5)])


def ok_count(app: App) -> int:
    assert app.core is not None
    return int(app.core.telemetry.stats.totals()["ok"])


async def test_round_robin_with_health_checks_spreads_calls_and_skips_a_draining_replica(
    small_world: SmallWorld,
) -> None:
    apps = [App(small_settings(small_world, grace_s=5.0)) for _ in range(2)]
    for app in apps:
        await app.start()
    stopping: asyncio.Task[None] | None = None
    try:
        # The form a headless Service resolves to: one address per ready pod.
        target = "ipv4:" + ",".join(f"127.0.0.1:{app.port}" for app in apps)
        async with grpc.aio.insecure_channel(target, options=balanced_options()) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            for _ in range(100):  # until both subchannels are connected and healthy
                await stub.Rank(REQUEST, timeout=5)
                if min(ok_count(a) for a in apps) > 0:
                    break
            before = [ok_count(a) for a in apps]
            for _ in range(40):
                await stub.Rank(REQUEST, timeout=5)
            share = [ok_count(a) - b for a, b in zip(apps, before, strict=True)]
            assert sum(share) == 40
            assert abs(share[0] - share[1]) <= 2, share  # round robin, not one connection

            # The first replica starts draining while calls keep coming: its health turns
            # NOT_SERVING, the client's health watch sees it and sends it nothing more (but
            # for calls already picked), and no call fails. Without the health check the
            # client would send it every other call until the drain's grace ran out.
            before = [ok_count(a) for a in apps]
            stopping = asyncio.create_task(apps[0].stop())
            results = [await stub.Rank(REQUEST, timeout=5) for _ in range(60)]
            assert all(len(r.items) == 5 for r in results)
            share = [ok_count(a) - b for a, b in zip(apps, before, strict=True)]
            assert sum(share) == 60
            assert share[0] <= 6, share  # ~30 without the health check
            await asyncio.wait_for(stopping, 4)  # quiet without calls: the drain ends early
    finally:
        if stopping is None:
            await apps[0].stop(0.5)
        await apps[1].stop(0.5)


def start_two_workers(world: SmallWorld, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    cmd = [
        *(sys.executable, "-m", "ranking.cli", "serve", "--workers", "2", "--port", str(port)),
        *("--bundle", str(world.bundle)),
        *("--features", f"user={world.folder / 'users.csv'}"),
        *("--features", f"item={world.folder / 'items.csv'}"),
    ]
    # TMPDIR: the workers' shared stats file (one row per worker) lands where the test reads it.
    env = {**os.environ, "RANKING_RELOAD_POLL_S": "0", "TMPDIR": str(tmp)}
    with (tmp / "serve.log").open("wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


def tail(log: Path) -> str:
    return log.read_text()[-2000:]


async def wait_serving(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {tail(log)}")
            try:
                r = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not become healthy in time")


def per_worker_ok(tmp: Path) -> list[int]:
    (path,) = tmp.glob("ranking-*/ranking-stats-*.bin")
    return [int(Stats(2, path, worker).row[INDEX["ok"]]) for worker in range(2)]


async def test_a_pool_of_connections_reaches_both_workers_of_one_server(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    port = free_port()
    proc = start_two_workers(small_world, port, tmp_path)
    try:
        await wait_serving(port, proc, tmp_path / "serve.log")
        target = f"127.0.0.1:{port}"
        # One channel is one connection: every call lands on the worker that accepted it.
        async with grpc.aio.insecure_channel(target) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            for _ in range(20):
                await stub.Rank(REQUEST, timeout=5)
        assert sorted(per_worker_ok(tmp_path)) == [0, 20]

        # The README's config for a multi-worker server: several channels, each its own
        # connection (a local subchannel pool), calls rotated over them. The kernel hashes each
        # connection to a worker; with 16 connections both are reached but for a 2^-15 chance.
        options = [("grpc.use_local_subchannel_pool", 1), *balanced_options()]
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(16)]
        try:
            stubs = [ranking_pb2_grpc.RankingServiceStub(c) for c in channels]
            for i in range(64):
                await stubs[i % len(stubs)].Rank(REQUEST, timeout=5)
        finally:
            await asyncio.gather(*(c.close(None) for c in channels))
        after = per_worker_ok(tmp_path)
        assert sum(after) == 84
        assert min(after) > 0, after
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


async def test_max_connection_age_closes_connections_so_clients_reconnect(
    small_world: SmallWorld,
) -> None:
    """RANKING_MAX_CONNECTION_AGE_S: the server ends each connection after that long (GOAWAY,
    calls in flight finish); the client reconnects by itself (re-resolving its target, which is
    how it finds new replicas and meets a rotated certificate), and no call fails."""
    app = App(small_settings(small_world, max_connection_age_s=0.3))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            await stub.Rank(REQUEST, timeout=5)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            left_ready = 0
            deadline = time.monotonic() + 10
            while left_ready < 2 and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(
                        channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 2
                    )
                except TimeoutError:
                    continue
                left_ready += 1
                assert len((await stub.Rank(REQUEST, timeout=5)).items) == 5  # reconnected
            assert left_ready == 2  # the connection was closed by age, twice
    finally:
        await app.stop(0.5)
