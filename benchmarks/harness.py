"""What every benchmark program shares: log lines, one load run in its own loop, the machine.

`benchmarks.run` (the scoreboard) and `benchmarks.overload` both print timestamped progress,
run each load in a fresh event loop, and record the machine they ran on; this is that code,
once.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ranking.loadgen import LoadReport

__all__ = ["log", "machine_info", "run_async"]


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
