"""Throwaway `redis-server` processes on free loopback ports, for the tests and the benchmarks.

One way to start one: `start_redis(workdir)` returns a running `RedisServer` with no
persistence (`--save '' --appendonly no`), bound to 127.0.0.1, stopped by its own PID (SIGTERM,
then SIGKILL). A `RedisServer` can also pause (SIGSTOP: the kernel still accepts connections
but nothing answers, like a hung server), resume, kill (as a crash) and restart on the same
port. Every wait is bounded. The pytest fixtures over it are in `tests/redis_servers.py`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

from benchmarks.ports import free_port

__all__ = ["RedisNotInstalled", "RedisServer", "redis_binary", "start_redis"]

START_TIMEOUT_S = 10.0


class RedisNotInstalled(RuntimeError):
    """The redis-server (or redis-cli) binary is not on this machine."""


#: A cluster node also listens on its port + 10000 (the cluster bus), so its port must be at
#: most 65535 - 10000 and the bus port free too; the kernel hands out ports up to 60999.
CLUSTER_BUS_OFFSET = 10_000


def _free_cluster_port() -> int:
    """A free port whose cluster bus port is in range and was free a moment ago too."""
    for _ in range(100):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port with a free cluster bus port")


def redis_binary(name: str = "redis-server") -> str:
    """The path of a Redis binary; RedisNotInstalled when it is missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise RedisNotInstalled(f"{name} is not installed (scripts/test installs it with apt-get)")
    return path


class RedisServer:
    """One redis-server process; `url` stays the same across restarts.

    `log_path`: where the server's own output goes (appended; discarded when None).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cluster: bool = False,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.binary = redis_binary()
        self.port = port or (_free_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> RedisServer:
        """Start the process and wait until it answers PING; RuntimeError if it does not."""
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
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child holds its own descriptor
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self.proc = None
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
        """A synchronous redis-py client of this server (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0, **kwargs)  # type: ignore[arg-type]

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Undo `pause` (SIGCONT)."""
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
        """SIGTERM, then SIGKILL after 5 s; a no-op when not running."""
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
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(
    workdir: Path, *, cluster: bool = False, log_path: Path | None = None, attempts: int = 3
) -> RedisServer:
    """A running redis-server on a free port (retried: a free port can be taken before bind)."""
    for _attempt in range(attempts):
        server = RedisServer(workdir, cluster=cluster, log_path=log_path)
        try:
            return server.start()
        except RuntimeError:
            continue
    raise RuntimeError(f"could not start redis-server in {attempts} attempts")
