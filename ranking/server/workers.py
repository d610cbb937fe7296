"""`--workers N`: N server processes on one port (SO_REUSEPORT), each with its own event loop,
cache and model. The parent only starts them, forwards SIGTERM/SIGINT, waits, and serves
--metrics-port for all of them (ranking/telemetry/endpoint.py).

SO_REUSEPORT spreads connections, not requests: clients need several channels (or a balancer)
to use every worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

from ranking.server.app import run_worker
from ranking.settings import Settings
from ranking.telemetry.endpoint import MetricsServer, SharedSource
from ranking.telemetry.stats import Stats

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    """Run the server until a signal; returns the exit code."""
    workers = settings.effective_workers()
    if workers == 1:
        run_worker(settings)
        return 0
    if settings.port == 0:
        raise SystemExit("--port 0 cannot be shared by several workers; pick a port")
    folder = Path(tempfile.mkdtemp(prefix="ranking-"))
    stats_path = Stats.create_shared(workers, folder)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(settings, i, stats_path), name=f"worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    log.info("started %d workers on %s:%d", workers, settings.host, settings.port)
    metrics = None
    if settings.metrics_port:  # one /metrics for every worker, served by this process
        source = SharedSource(stats_path, workers)
        metrics = MetricsServer(settings.host, settings.metrics_port, source).start()

    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()  # SIGTERM: each worker drains its own calls

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                if not p.is_alive() and p.exitcode not in (0, None) and not stopping:
                    log.error("worker %s exited with %s; stopping the others", p.name, p.exitcode)
                    code = 1
                    forward(signal.SIGTERM, None)
            time.sleep(0.2)
        for p in procs:
            p.join(timeout=settings.grace_s + 5)
    finally:
        if metrics is not None:
            metrics.stop()
        with contextlib.suppress(OSError):
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
    return code


def _worker_main(settings: Settings, worker: int, stats_path: Path) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s w{worker} %(levelname)s %(name)s: %(message)s"
    )
    run_worker(settings, worker, stats_path)
