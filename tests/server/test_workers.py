"""Crash semantics of a multi-worker server (`serve --workers 2`, a real process tree).

A SIGKILLed worker is restarted within seconds while the other serves; health is NOT_SERVING
while it is missing; workers that keep dying, or fail before they ever served, make the parent
exit 1; a clean SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranking.api.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import SmallWorld, free_port
from tests.server.test_broken_models import Load, read_log
from tests.server.test_lifecycle import LOGS, start_server, stop, wait_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def worker_pids(parent: int) -> list[int]:
    """The parent's multiprocessing-spawned children (its workers)."""
    path = Path(f"/proc/{parent}/task/{parent}/children")
    out = []
    for pid in path.read_text().split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(int(pid))
    return sorted(out)


RANKING = "ranking.v1.RankingService"


async def health(port: int, service: str = RANKING) -> int:
    """Readiness (or `service`'s health) over a fresh connection, which lands on any live
    worker; -1 when none answers."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(r.status)


async def wait_until(check: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def restarted(proc: subprocess.Popen[bytes], port: int, old: set[int], n: int) -> float:
    """Seconds until the server has `n` workers again, none of `old` among them, and says
    SERVING."""

    async def back() -> bool:
        pids = set(worker_pids(proc.pid))
        return len(pids) == n and not pids & old and await health(port) == SERVING

    return await wait_until(back, 40, "the workers to come back")


async def counters(admin_port: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
        got = await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
    return dict(got.counters)


@pytest.mark.timeout(120)
async def test_a_killed_worker_is_restarted_under_load(small_world: SmallWorld) -> None:
    port, admin_port = free_port(), free_port()
    proc = start_server(
        small_world, port, "--workers", "2", "--limiter", "off", "--admin-port", str(admin_port)
    )
    try:
        await wait_serving(port, proc, service=RANKING)
        pids = worker_pids(proc.pid)
        assert len(pids) == 2
        load = Load(port, callers=4, pause_s=0.01)
        load.start()
        await asyncio.sleep(0.5)
        os.kill(pids[0], signal.SIGKILL)
        # The survivor reports NOT_SERVING (not ready) while its sibling is missing, and is
        # still alive ("") ...
        await wait_until(
            lambda: _is(health(port), NOT_SERVING), 5, "NOT_SERVING while a worker is missing"
        )
        assert await health(port, "") == SERVING
        # ... and the parent brings the worker back within seconds.
        took = await restarted(proc, port, {pids[0]}, 2)
        assert took < 20
        ok_before = sum(load.versions.values())
        await asyncio.sleep(0.5)
        await load.stop()
        assert sum(load.versions.values()) > ok_before  # still answering after the restart
        # Only calls in flight on the killed worker may fail, and only as UNAVAILABLE.
        assert all(e.startswith("UNAVAILABLE") for e in load.errors), load.errors
        assert len(load.errors) <= 8, load.errors
        assert (await counters(admin_port))["worker_restarts"] == 1
        log = read_log(LOGS[proc.pid])
        assert "worker 0 was killed by SIGKILL; restarting it in 0.25 s" in log or (
            "worker 1 was killed by SIGKILL; restarting it in 0.25 s" in log
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)


async def _is(status: object, want: int) -> bool:
    return await status == want  # type: ignore[misc]


@pytest.mark.timeout(120)
async def test_all_workers_dying_together_are_restarted_then_a_stop_exits_0(
    small_world: SmallWorld,
) -> None:
    port = free_port()
    proc = start_server(small_world, port, "--workers", "2")
    try:
        await wait_serving(port, proc, service=RANKING)
        pids = worker_pids(proc.pid)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await restarted(proc, port, set(pids), 2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)


@pytest.mark.timeout(120)
async def test_workers_that_keep_dying_stop_the_server_with_exit_1(
    small_world: SmallWorld,
) -> None:
    port = free_port()
    env = {"RANKING_WORKER_MAX_DEATHS": "3"}
    proc = start_server(small_world, port, "--workers", "2", env=env)
    try:
        await wait_serving(port, proc, service=RANKING)
        killed: set[int] = set()
        for _ in range(2):  # two deaths: restarted
            pids = worker_pids(proc.pid)
            os.kill(pids[0], signal.SIGKILL)
            killed.add(pids[0])
            await restarted(proc, port, killed, 2)
        pids = worker_pids(proc.pid)
        for pid in pids:  # the third death stops the server
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(30) == 1
        assert "3 worker deaths within 60 s; stopping the server" in read_log(LOGS[proc.pid])
    finally:
        stop(proc)


@pytest.mark.timeout(120)
async def test_a_worker_that_never_served_stops_the_server_with_exit_1(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "schema.json").write_text((small_world.bundle / "schema.json").read_text())
    text = (small_world.bundle / "model.txt").read_text()
    (broken / "model.txt").write_text(text[: len(text) * 2 // 5])  # used to SIGABRT LightGBM
    port = free_port()
    proc = start_server(small_world, port, "--workers", "2", "--bundle", str(broken))
    try:
        assert proc.wait(60) == 1
        log = read_log(LOGS[proc.pid])
        assert "before it served; stopping the server" in log
        assert "model text line" in log
    finally:
        stop(proc)


def test_restart_back_off_doubles_up_to_its_cap() -> None:
    from ranking.server.workers import RestartPolicy

    policy = RestartPolicy(first_backoff_s=0.25, max_backoff_s=5.0)
    assert [policy.backoff_s(k) for k in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
