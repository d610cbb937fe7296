"""`--workers N`: N server processes on one port (SO_REUSEPORT), each with its own event loop,
cache and model, under a parent that supervises them as pre-fork servers do and serves
--metrics-port for all of them (ranking/telemetry/endpoint.py).

The parent starts the workers, forwards SIGTERM/SIGINT (each worker drains its own calls), and
watches them:

- a worker that dies after it was serving is restarted, after a back-off that doubles with
  each recent death (`RestartPolicy`); the death is logged with its exit code or signal and
  counted (`worker_restarts` in GetStats);
- a worker that dies before it ever served (a bad bundle, a port in use), or workers that keep
  dying (`max_deaths` deaths within `window_s`), stop the server: the parent exits 1, so a
  supervisor (systemd, Kubernetes) sees the failure and restarts or alerts;
- after SIGTERM the exit code is 0 when every worker drained and exited cleanly, else 1.

While a worker is missing or restarting, the others report health NOT_SERVING (`roster.py`).
SO_REUSEPORT spreads connections, not requests: clients need several channels (or a balancer)
to use every worker. New connections are dealt to the workers in turn where the kernel lets the
parent load the eBPF balancer (`ranking.server.balance`), else spread by the kernel's hash.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from ranking.server.app import run_worker
from ranking.server.balance import ConnectionBalancer
from ranking.server.roster import Roster
from ranking.settings import Settings
from ranking.telemetry.endpoint import MetricsServer, SharedSource
from ranking.telemetry.stats import Stats

__all__ = ["RestartPolicy", "serve"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


@dataclass(frozen=True)
class RestartPolicy:
    """When the parent restarts a dead worker and when it gives up."""

    #: This many deaths within `window_s` (all workers together) stop the server, exit 1.
    max_deaths: int = 5
    window_s: float = 60.0
    #: Delay before the first restart; doubled for each further death in the window.
    first_backoff_s: float = 0.25
    max_backoff_s: float = 5.0

    def backoff_s(self, recent_deaths: int) -> float:
        delay: float = self.first_backoff_s * 2.0 ** max(recent_deaths - 1, 0)
        return min(delay, self.max_backoff_s)


@dataclass
class _Slot:
    index: int
    proc: BaseProcess | None = None
    served: bool = False  # the slot's first process got ready at least once
    restart_at: float | None = None
    exit_codes: list[int | None] = field(default_factory=list)


def serve(settings: Settings, policy: RestartPolicy | None = None) -> int:
    """Run the server until a signal; returns the exit code."""
    workers = settings.effective_workers()
    if workers == 1:
        run_worker(settings)
        return 0
    if settings.port == 0:
        raise SystemExit("--port 0 cannot be shared by several workers; pick a port")
    if policy is None:
        policy = RestartPolicy(settings.worker_max_deaths, settings.worker_death_window_s)
    return _Supervisor(settings, workers, policy).run()


class _Supervisor:
    def __init__(self, settings: Settings, workers: int, policy: RestartPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.folder = Path(tempfile.mkdtemp(prefix="ranking-"))
        self.stats_path = Stats.create_shared(workers, self.folder)
        self.roster_path = Roster.create(workers, self.folder)
        self.roster = Roster(workers, self.roster_path)
        self.slots = [_Slot(i) for i in range(workers)]
        self.deaths: deque[float] = deque()
        self.stopping = False
        self.stop_deadline = float("inf")
        self.code = 0
        self.ctx = mp.get_context("spawn")
        self.balancer = ConnectionBalancer.create(workers) if settings.balance_connections else None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        metrics = None
        try:
            for slot in self.slots:
                self._start(slot)
            log.info(
                "started %d workers on %s:%d",
                len(self.slots),
                self.settings.host,
                self.settings.port,
            )
            if self.settings.metrics_port:  # one /metrics for every worker, served from here
                source = SharedSource(self.stats_path, len(self.slots))
                metrics = MetricsServer(
                    self.settings.host, self.settings.metrics_port, source
                ).start()
            while not self.stopping or any(s.proc is not None for s in self.slots):
                self._tick(time.monotonic())
                time.sleep(_POLL_S)
        finally:
            for slot in self.slots:
                if slot.proc is not None and slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join(5)
            if metrics is not None:
                metrics.stop()
            if self.balancer is not None:
                self.balancer.close()
            with contextlib.suppress(OSError):
                for path in self.folder.iterdir():
                    path.unlink()
                self.folder.rmdir()
        return self.code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("parent got %s: stopping the workers", signal.Signals(signum).name)
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.settings.grace_s + 5
        for slot in self.slots:
            slot.restart_at = None
            if slot.proc is not None and slot.proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.terminate()  # SIGTERM: each worker drains its own calls

    def _start(self, slot: _Slot) -> None:
        proc = self.ctx.Process(
            target=_worker_main,
            args=(
                self.settings,
                slot.index,
                self.stats_path,
                self.roster_path,
                os.getpid(),
                self.balancer,
            ),
            name=f"worker-{slot.index}",
        )
        proc.start()
        slot.proc = proc

    def _tick(self, now: float) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                    slot.restart_at = None
                    log.info("restarting worker %d", slot.index)
                    self._start(slot)
                continue
            if proc.is_alive():
                if self.roster.ready(slot.index):
                    slot.served = True
                elif self.stopping and now > self.stop_deadline:
                    log.error("worker %d did not stop in time; killing it", slot.index)
                    proc.kill()
                continue
            proc.join()
            slot.proc = None
            self.roster.clear(slot.index)
            code = proc.exitcode
            slot.exit_codes.append(code)
            if self.stopping:
                if code != 0:
                    log.error("worker %d exited with %s while stopping", slot.index, _how(code))
                    self.code = 1
                continue
            self._died(slot, code, now)

    def _died(self, slot: _Slot, code: int | None, now: float) -> None:
        if not slot.served:
            log.error("worker %d %s before it served; stopping the server", slot.index, _how(code))
            self.code = 1
            self._stop_all()
            return
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.policy.window_s:
            self.deaths.popleft()
        if len(self.deaths) >= self.policy.max_deaths:
            log.error(
                "worker %d %s: %d worker deaths within %.0f s; stopping the server",
                slot.index,
                _how(code),
                len(self.deaths),
                self.policy.window_s,
            )
            self.code = 1
            self._stop_all()
            return
        Stats(len(self.slots), self.stats_path, slot.index).add("worker_restarts")
        delay = self.policy.backoff_s(len(self.deaths))
        log.error(
            "worker %d %s; restarting it in %.2f s (%d deaths in the last %.0f s)",
            slot.index,
            _how(code),
            delay,
            len(self.deaths),
            self.policy.window_s,
        )
        slot.restart_at = now + delay


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the parent dies, so no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    settings: Settings,
    worker: int,
    stats_path: Path,
    roster_path: Path,
    parent: int,
    balancer: ConnectionBalancer | None,
) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s w{worker} %(levelname)s %(name)s: %(message)s"
    )
    _die_with_parent(parent)
    run_worker(settings, worker, stats_path, roster_path, balancer)
