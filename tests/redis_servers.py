"""Pytest plugin: real `redis-server` processes on free loopback ports.

Register it from the root conftest with `pytest_plugins = ["tests.redis_servers"]` (or import
the fixtures). Fixtures:

    redis_servers   factory: `redis_servers.start()` -> RedisServer; all stopped at teardown
    redis_server    one standalone server (function scope)
    redis_replicas  two standalone servers (function scope)
    redis_cluster   a 3-master cluster (session scope; tests use their own namespaces)

Servers run with `--save '' --appendonly no` in a temporary directory, bound to 127.0.0.1, and
are stopped by PID (SIGTERM, then SIGKILL). `RedisServer` can pause (SIGSTOP: the kernel still
accepts connections but nothing answers, like a hung server), resume, kill and restart on the
same port. Every wait is bounded. Tests are skipped when `redis-server` is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

__all__ = ["RedisCluster", "RedisServer", "free_port"]

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server is a broken install, not a skip
        pytest.skip(message)
    return path


class RedisServer:
    """One redis-server process; `url` stays the same across restarts."""

    def __init__(self, workdir: Path, *, cluster: bool = False, port: int | None = None) -> None:
        self.binary = _binary("redis-server")
        self.port = port or free_port()
        self.cluster = cluster
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--enable-debug-command", "local",
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            try:
                with self.client() as c:
                    c.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.01)

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0, **kwargs)  # type: ignore[arg-type]

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


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
        for _attempt in range(3):  # a free port can be taken between probe and bind
            server = RedisServer(self.workdir, cluster=cluster)
            try:
                server.start()
            except RuntimeError:
                continue
            self.servers.append(server)
            return server
        raise RuntimeError("could not start redis-server")

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
