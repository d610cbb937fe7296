"""Pytest plugin: real `redis-server` processes on free loopback ports.

Register it from the root conftest with `pytest_plugins = ["tests.redis_servers"]` (or import
the fixtures). Fixtures:

    redis_servers   factory: `redis_servers.start()` -> RedisServer; all stopped at teardown
    redis_server    one standalone server (function scope)
    redis_replicas  two standalone servers (function scope)
    redis_cluster   a 3-master cluster (session scope; tests use their own namespaces)

The servers themselves are `benchmarks.redis_server.RedisServer` (shared with the benchmarks):
no persistence, bound to 127.0.0.1, stopped by PID; they can pause (SIGSTOP), resume, kill and
restart on the same port. Tests are skipped when `redis-server` is not installed (in CI, where
scripts/test installs it, they fail instead).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ports import free_port
from benchmarks.redis_server import (
    START_TIMEOUT_S,
    RedisNotInstalled,
    RedisServer,
    redis_binary,
    start_redis,
)

__all__ = ["RedisCluster", "RedisServer", "free_port"]


def _binary(name: str) -> str:
    try:
        return redis_binary(name)
    except RedisNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))  # in CI a missing server is a broken install, not a skip
        pytest.skip(str(exc))


class RedisCluster:
    """Masters created with `redis-cli --cluster create`, no replicas."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def create(self) -> RedisCluster:
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        cmd = [_binary("redis-cli"), "--cluster", "create", *addrs]
        cmd += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self._ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not converge")
            time.sleep(0.05)
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        with node.client() as c:
            info = c.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class ServerFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[RedisServer] = []

    def start(self, *, cluster: bool = False) -> RedisServer:
        _binary("redis-server")  # skip (or fail in CI) when it is not installed
        server = start_redis(self.workdir, cluster=cluster)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop()


@pytest.fixture
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path_factory.mktemp("redis"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def redis_server(redis_servers: ServerFactory) -> RedisServer:
    return redis_servers.start()


@pytest.fixture
def redis_replicas(redis_servers: ServerFactory) -> list[RedisServer]:
    return [redis_servers.start(), redis_servers.start()]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    factory = ServerFactory(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes = [factory.start(cluster=True) for _ in range(3)]
        yield RedisCluster(nodes).create()
    finally:
        factory.stop_all()
