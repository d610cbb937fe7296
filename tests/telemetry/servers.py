"""Processes the telemetry tests start: the ranking server (`python -m ranking.cli serve`) and
Debian's `prometheus`, each on free loopback ports, stopped by PID; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import SmallWorld, free_port

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ranking.json"


def binary(name: str) -> str:
    """Path of a system binary the test needs; skipped when absent, failed in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/test installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RankingProcess:
    """`ranking serve` over the small world, in its own process group; `module` is the program
    (`python -m module serve ...`), `ranking.cli` unless a benchmark's variant is tested."""

    def __init__(
        self,
        world: SmallWorld,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "ranking.cli",
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        cmd = [
            sys.executable,
            *("-m", module, "serve", "--bundle", str(world.bundle)),
            *("--port", str(self.port), "--metrics-port", str(self.metrics_port)),
            *("--features", f"user={world.folder / 'users.csv'}"),
            *("--features", f"item={world.folder / 'items.csv'}"),
            *args,
        ]
        full_env = {**os.environ, "RANKING_RELOAD_POLL_S": "0", "RANKING_BUDGET_MS": "2000"}
        full_env.update(env or {})
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="ranking-serve-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return Path(self._log.name).read_text()[-3000:]

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited:\n{self.log()}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"server did not become healthy in time:\n{self.log()}")

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        return self.proc.returncode


class Prometheus:
    """Debian's prometheus, scraping `targets` every second, its data in `workdir`."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "ranking", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self._log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._logpath = workdir / "prometheus.log"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self._logpath.read_text()[-3000:]}")
            url = f"http://127.0.0.1:{self.port}/-/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready in time")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (each {metric, value: [ts, "string"]})."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The single value of a query, or None while it has none."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_for(self, promql: str, want: float, timeout_s: float = 20.0) -> float | None:
        """Poll until the query equals `want` (or time runs out); returns the last value."""
        deadline = time.monotonic() + timeout_s
        got = None
        while time.monotonic() < deadline:
            got = self.scalar(promql)
            if got == want:
                return got
            time.sleep(0.25)
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def running(*things: RankingProcess | Prometheus) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            thing.stop()
