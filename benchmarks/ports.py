"""Loopback ports for servers the tests and benchmarks start: pick a free one, wait for one."""

from __future__ import annotations

import contextlib
import socket
import time

__all__ = ["free_port", "wait_port"]


#: Ports `free_port` has handed out in this process: never handed out twice, because the
#: kernel can give a just-closed port to the next bind, and a caller that asks for several
#: ports in a row (serving, admin, health) would get one of them twice.
_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that no earlier call in this
    process returned.

    Another process can take it between this call and the caller's bind, so callers that start
    a server on it retry on a failed start (see `benchmarks.redis_server.start_redis`).
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:`port`; RuntimeError if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")
