"""New connections dealt to the workers in turn, instead of by Linux's SO_REUSEPORT hash.

The workers of `ranking serve --workers N` listen on one port with SO_REUSEPORT, and by default
the kernel picks a worker for each new connection by a hash of its addresses. HTTP/2 clients
hold a few long-lived connections, and a few draws of a hash are rarely even: four connections
over two workers split 2:2 only three times in eight (3:1 four times, 4:0 once), and the worker
with three carries 75 % of the calls while the other idles. A worker saturates at half the
server's capacity that way. Measured on R200 at 600 req/s (4 connections, 2 workers): the two
workers used 67 % and 34 % of a core and the run missed its p99 budget (12.4 ms).

`ConnectionBalancer` replaces the hash with a round-robin: the supervisor loads a tiny
SK_REUSEPORT eBPF program and its socket map once (`_reuseport.load`) and hands both to every
worker it spawns; each worker, once its gRPC server listens, puts its listening socket into
slot `worker` of the map and attaches the program to the port's group (`_reuseport.join`).
Connection k then goes to worker k mod N. A worker that died leaves its slot empty and the
program falls back to the kernel's hash until the restarted worker joins again, so no
connection is ever refused by the balancer.

Loading the program needs root or CAP_BPF with CAP_NET_ADMIN (Docker and Kubernetes drop both
by default; the Kubernetes manifests run one worker per pod and balance across pods instead).
Where the kernel refuses, the server logs why once and runs with the hash, as it always did;
`--workers 1` needs none of this. `RANKING_BALANCE_CONNECTIONS=0` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from multiprocessing import reduction
from typing import Any

import ranking.server._reuseport as _reuseport

__all__ = ["ConnectionBalancer", "listening_sockets"]

log = logging.getLogger(__name__)


class ConnectionBalancer:
    """The round-robin program and socket map of one worker group; see the module docstring.

    Built by the supervisor (`create`) and pickled into each spawned worker, whose copy holds
    the same kernel objects through inherited file descriptors.
    """

    def __init__(self, workers: int, program_fd: int, sockets_fd: int) -> None:
        self.workers = workers
        self._program = program_fd
        self._sockets = sockets_fd

    @classmethod
    def create(cls, workers: int) -> ConnectionBalancer | None:
        """The balancer for `workers` workers, or None (logged) when the kernel refuses it."""
        try:
            program, sockets = _reuseport.load(workers)
        except OSError as exc:
            log.warning(
                "connections spread by the kernel's SO_REUSEPORT hash, not dealt in turn: "
                "loading the eBPF balancer failed (%s; it needs root or CAP_BPF + CAP_NET_ADMIN)",
                exc,
            )
            return None
        return cls(workers, program, sockets)

    def join(self, worker: int, port: int) -> bool:
        """Put this worker's listener on `port` into slot `worker`; False (logged) if none."""
        fds = listening_sockets(port)
        if not fds:
            log.warning("worker %d: no listening socket on port %d to balance", worker, port)
            return False
        try:
            _reuseport.join(fds[0], worker, self._program, self._sockets)
        except OSError as exc:
            log.warning("worker %d: joining the connection balancer failed (%s)", worker, exc)
            return False
        log.info("worker %d joined the eBPF connection balancer (1 in %d)", worker, self.workers)
        return True

    def close(self) -> None:
        for fd in (self._program, self._sockets):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __reduce__(self) -> tuple[Any, ...]:
        # DupFd: with the spawn start method the fds are passed to the child at start.
        return (
            _rebuild,
            (self.workers, reduction.DupFd(self._program), reduction.DupFd(self._sockets)),
        )


def _rebuild(workers: int, program: Any, sockets: Any) -> ConnectionBalancer:
    return ConnectionBalancer(workers, program.detach(), sockets.detach())


def listening_sockets(port: int) -> list[int]:
    """This process's listening TCP sockets bound to `port`, lowest fd first."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and sock.getsockname()[1] == port
            ):
                found.append(fd)
    return sorted(found)
