"""`--metrics-port`: one HTTP endpoint serving /metrics for the whole server.

With several workers the parent process serves it, reading the workers' shared stats file and
the states they publish (`SharedSource`): the parent does nothing else, so a scrape costs the
serving processes nothing, and one endpoint sums every worker however the kernel spread the
connections. With one worker the worker serves it from a thread (`LocalSource`), reading its
own live state; a scrape costs ~1 ms of that process's time every scrape interval.

Why not prometheus_client's multiprocess mode: it takes a lock and writes an mmap'd file per
observation (~1-2 us each; a call observes eight histograms), needs its own directory protocol
and cleanup of dead workers' files, and would be a second set of counters beside the stats table
that GetStats and the benchmarks already read. The table is summed as it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ranking.telemetry.exposition import CONTENT_TYPE, render
from ranking.telemetry.state import ServiceState, read_published
from ranking.telemetry.stats import Stats

__all__ = ["LocalSource", "MetricsServer", "SharedSource"]

log = logging.getLogger(__name__)


class SharedSource:
    """The exposition of a multi-worker server, from its shared stats file (parent side)."""

    def __init__(self, stats_path: Path, workers: int) -> None:
        self._stats = Stats(workers, stats_path, 0)
        self._path = stats_path
        self._workers = workers

    def __call__(self) -> str:
        return render(self._stats, read_published(self._path, self._workers))


class LocalSource:
    """The exposition of a one-worker server, from its own stats and live state."""

    def __init__(self, stats: Stats, state: Callable[[], ServiceState | None]) -> None:
        self._stats = stats
        self._state = state

    def __call__(self) -> str:
        state = self._state()
        return render(self._stats, [] if state is None else [(self._stats.worker, state)])


class MetricsServer:
    """GET /metrics on (host, port) from a daemon thread; `port` 0 picks a free one."""

    def __init__(self, host: str, port: int, source: Callable[[], str]) -> None:
        handler = _handler(source)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("serving /metrics on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(source: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = source().encode()
            except Exception:
                log.exception("rendering /metrics failed")
                self.send_error(500, "rendering the metrics failed; it has been logged")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

    return Handler
