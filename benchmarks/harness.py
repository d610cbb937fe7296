"""What every benchmark program shares: log lines, one load run in its own loop, the machine.

`benchmarks.run` (the scoreboard) and `benchmarks.overload` both print timestamped progress,
run each load in a fresh event loop, and record the machine they ran on; this is that code,
once.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from benchmarks.redis_server import RedisServer, start_redis
from benchmarks.servers import ManagedProcess
from benchmarks.world import BenchWorld
from ranking.loadgen import LoadReport

#: The repository root (benchmarks run from a checkout).
REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "log", "machine_info", "run_async", "serve_world_args"]


def log(msg: str) -> None:
    """One progress line on stdout, with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_async(coro: Coroutine[Any, Any, LoadReport]) -> LoadReport:
    """Run one load run in a fresh event loop (uvloop when installed: less client CPU)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(coro)
    result: LoadReport = uvloop.run(coro)
    return result


def machine_info() -> dict[str, Any]:
    """CPU model, core count, platform and library versions, and the load average now."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grpc
    import lightgbm

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "lightgbm": lightgbm.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def serve_world_args(
    world: BenchWorld, store: str, logs: Path
) -> tuple[list[str], RedisServer | None]:
    """The `ranking serve` arguments for a benchmark world and the redis-server behind them.

    store "memory": the world's tables in the in-process store, no Redis. Otherwise a fresh
    redis-server with the world's users and items loaded by `ranking features load`; the
    caller stops it. SystemExit when loading fails (the server is stopped first).
    """
    if store == "memory":
        args = [
            *("--bundle", str(world.bundle)),
            *("--features", f"user={world.user_features}"),
            *("--features", f"item={world.item_features}"),
        ]
        return args, None
    redis = start_redis(logs, log_path=logs / "redis.log")
    for entity, path in (("user", world.user_features), ("item", world.item_features)):
        load = [sys.executable, "-m", "ranking.cli", "features", "load"]
        load += ["--type", entity, "--file", str(path), "--redis", redis.url]
        with ManagedProcess(f"load-{entity}", load, logs / f"load-{entity}.log", cwd=REPO) as p:
            if p.proc.wait(600) != 0:
                redis.stop()
                raise SystemExit(f"loading {entity} features into Redis failed: {p.tail(5)}")
    return ["--bundle", str(world.bundle), "--redis", redis.url], redis
