"""The workers' connection balancer (ranking/server/balance.py): real sockets, a real kernel.

New connections on a SO_REUSEPORT port go to the group's listeners in turn; an empty slot (a
dead worker) falls back to the kernel's hash, so connections are never refused; a worker that
comes back takes its turns again; without the privilege the server starts and says why it
spreads connections by hash. Needs root (or CAP_BPF + CAP_NET_ADMIN), as CI runs.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import ranking.server._reuseport as _reuseport
from ranking.server.balance import ConnectionBalancer, listening_sockets
from tests.conftest import SmallWorld, free_port
from tests.server.test_lifecycle import LOGS, start_server, stop, wait_serving
from tests.server.test_workers import RANKING, restarted, worker_pids

try:
    os.close(_reuseport.load(1)[0])
except OSError as exc:  # not root: say so rather than fail every test the same way
    pytest.skip(f"the kernel refuses the eBPF balancer here ({exc})", allow_module_level=True)


def listener(port: int = 0) -> socket.socket:
    """A non-blocking SO_REUSEPORT listener on `port` (0: a free one)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    s.setblocking(False)
    return s


def listeners(n: int) -> list[socket.socket]:
    socks = [listener()]
    port = socks[0].getsockname()[1]
    return socks + [listener(port) for _ in range(n - 1)]


def accepted(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def test_connections_go_to_the_listeners_in_turn_and_an_empty_slot_falls_back() -> None:
    balancer = ConnectionBalancer.create(3)
    assert balancer is not None
    socks = listeners(3)
    port = socks[0].getsockname()[1]
    clients: list[socket.socket] = []
    try:
        for i, s in enumerate(socks):
            _reuseport.join(s.fileno(), i, balancer._program, balancer._sockets)
        clients += connect(port, 12)
        assert [accepted(s) for s in socks] == [4, 4, 4]
        # Listener 2 goes away (its worker died): its turns fall back to the hash, so every
        # connection is still accepted by the two left.
        socks.pop().close()
        clients += connect(port, 9)
        assert sum(accepted(s) for s in socks) == 9
        # A new listener in slot 2 (the restarted worker) takes its turns again.
        socks.append(listener(port))
        _reuseport.join(socks[-1].fileno(), 2, balancer._program, balancer._sockets)
        clients += connect(port, 12)
        assert [accepted(s) for s in socks] == [4, 4, 4]
    finally:
        for c in clients:
            c.close()
        for s in socks:
            s.close()
        balancer.close()


def test_listening_sockets_finds_the_listeners_of_one_port_only() -> None:
    socks = listeners(2)
    other = listeners(1)
    try:
        port = socks[0].getsockname()[1]
        assert listening_sockets(port) == sorted(s.fileno() for s in socks)
        client = socket.create_connection(("127.0.0.1", port))  # an accepted one is no listener
        ready, _, _ = select.select(socks, [], [], 5)
        conn, _ = ready[0].accept()
        with conn, client:
            assert listening_sockets(port) == sorted(s.fileno() for s in socks)
    finally:
        for s in socks + other:
            s.close()


def test_a_bad_slot_or_worker_count_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        _reuseport.load(0)
    program, sockets = _reuseport.load(2)
    try:
        with pytest.raises(ValueError, match="index"):
            _reuseport.join(0, -1, program, sockets)
        s = listeners(1)[0]
        try:
            with pytest.raises(OSError, match="socket map update"):  # past the map's end
                _reuseport.join(s.fileno(), 2, program, sockets)
        finally:
            s.close()
    finally:
        os.close(program)
        os.close(sockets)


def _established(pid: int, port: int) -> int:
    """Connections to `port` a process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "01" and int(f[1].split(":")[1], 16) == port and f[9] in inodes:
                n += 1
    return n


async def _open_channels(port: int, n: int) -> list[grpc.aio.Channel]:
    """`n` channels, each on its own connection, opened one after another."""
    channels = []
    for _ in range(n):
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        channels.append(ch)
    return channels


@pytest.fixture
def two_workers(small_world: SmallWorld) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = start_server(small_world, port, "--workers", "2")
    try:
        yield proc, port
    finally:
        stop(proc)


@pytest.mark.timeout(120)
async def test_a_two_worker_server_splits_eight_connections_four_and_four(
    two_workers: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = two_workers
    await wait_serving(port, proc, service=RANKING)
    channels = await _open_channels(port, 8)
    try:
        pids = worker_pids(proc.pid)
        assert [_established(p, port) for p in pids] == [4, 4]
        # A killed worker's restarted successor joins again and takes its turns.
        os.kill(pids[0], signal.SIGKILL)
        await restarted(proc, port, {pids[0]}, 2)
        more = await _open_channels(port, 8)
        channels += more
        after = worker_pids(proc.pid)
        new = next(p for p in after if p not in pids)
        assert _established(new, port) == 4
        assert _established(pids[1], port) == 8  # its 4 from before and 4 new
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    log = LOGS[proc.pid].read_text()
    assert log.count("joined the eBPF connection balancer (1 in 2)") == 3, log[-3000:]


def test_without_the_privilege_the_server_says_it_spreads_connections_by_hash() -> None:
    # Root without capabilities (what a container's default profile leaves): bpf() is refused.
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from ranking.server.balance import ConnectionBalancer\n"
        "assert ConnectionBalancer.create(2) is None\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set", "-all", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "connections spread by the kernel's SO_REUSEPORT hash" in out.stderr
    assert "Operation not permitted" in out.stderr
