"""The flywheel's one hook on the request path, and what runs behind it.

`Flywheel.observe` is called by the core once per answered request, after sorting. It decides
(by sample ratios) whether the request is logged, shadow-scored and counted for drift.

A logged request is queued for the log ring's copy thread (`LogProcess.ring.offer`: checked,
its arrays kept by reference; `_ring.c`), which writes its returned rows (~26 KB for R200's
200 x 64: constant columns once, float32-exact ones as float32) into the shared ring, and the
worker's log process (`logproc.py`), which holds neither the worker's GIL nor its memory,
writes Parquet. When the ring is full the request is not logged and is counted
(`log_dropped`, in `flywheel_dropped`); a request never waits for the log.

A shadow-sampled request is scored by the shadow model on the event loop in a `call_soon`
callback (after the response was handed to gRPC, within the shadow's CPU budget, and only while
the loop is not late (`gate.py`), no other live call is in flight and the machine has CPU to
spare; see shadow.py for why not in a thread), compared with the live scores there, then logged
with its shadow scores beside the live ones. Drift-sampled requests are appended, by reference,
to a bounded deque that a daemon thread drains every `poll_s` (5 ms): it counts their features
into the drift monitor of their model (a share, `drift_sample`, default 0.1: binning 200 x 64
values costs far more than copying them, and a sample describes a distribution as well). The
thread also restarts a log process that died. `close` (called by the app after the gRPC server
has drained, i.e. on SIGTERM) processes everything still queued and lets the log process write
out the ring and complete its file: a clean shutdown loses nothing that was queued."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ranking.flywheel.drift import DriftMonitor, FeatureDrift
from ranking.flywheel.gate import LagGate
from ranking.flywheel.idle import IdleMeter
from ranking.flywheel.logproc import LogProcess
from ranking.flywheel.reference import REFERENCE_FILE, load_reference
from ranking.flywheel.served import Served
from ranking.flywheel.shadow import Shadow, ShadowStats, load_shadow
from ranking.scoring.bundle import Bundle
from ranking.settings import Settings

__all__ = ["Flywheel", "build_flywheel"]

log = logging.getLogger(__name__)

_BATCH = 1024
_thread_ns = time.thread_time_ns


class Flywheel:
    """Served-feature log, drift monitor and shadow model of one worker process."""

    def __init__(
        self,
        *,
        log: LogProcess | None = None,
        log_sample: float = 1.0,
        shadow: Shadow | None = None,
        shadow_sample: float = 0.1,
        drift_window_s: float = 600.0,
        drift_sample: float = 0.1,
        queue_size: int = 4096,
        worker: int = 0,
        poll_s: float = 0.005,
    ) -> None:
        self.log = log
        self.log_sample = log_sample if log is not None else 0.0
        self.shadow = shadow
        #: True while the worker is too busy for the shadow (live calls in flight): the app
        #: sets it (`RANKING_SHADOW_BUSY_INFLIGHT`); a shadow score then waits for no one and
        #: is skipped, counted as `shadow_skipped_busy`.
        self.busy: Callable[[], bool] | None = None
        #: The machine's idle share (read by the thread); the shadow is skipped while it is
        #: below `min_idle` (`RANKING_SHADOW_MIN_IDLE`), as `shadow_skipped_idle`.
        self.idle: IdleMeter | None = None
        self.min_idle = 0.0
        #: The gate on the event loop's lag (`gate.py`, `RANKING_SHADOW_MAX_LAG_MS`): skipped
        #: as `shadow_skipped_lag`.
        self.lag_gate: LagGate | None = None
        self._shadow_sample = shadow_sample
        self.shadow_sample = shadow_sample if shadow is not None else 0.0
        #: The shadow's counters, kept across reloads (`set_shadow`).
        self.shadow_stats = shadow.stats if shadow is not None else ShadowStats()
        self.drift_window_s = drift_window_s
        self.drift_sample = drift_sample
        self._queue: deque[Served] = deque()
        self._cap = queue_size
        self._poll_s = poll_s
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._id_prefix = f"{os.getpid():x}{worker:x}{int(time.time() * 1e3) & 0xFFFFFFFF:08x}-"
        self._id_seq = itertools.count(1)
        self._has_reference: dict[int, tuple[Bundle, bool]] = {}
        self._monitors: dict[int, tuple[Bundle, DriftMonitor | None]] = {}
        self._monitor: DriftMonitor | None = None
        self.queued = 0
        self.dropped = 0
        self.drift_errors = 0
        self.batches = 0
        self._processed = 0
        #: The background thread's CPU seconds by step (its cost, paid off the request path).
        self.cpu_s = {"drift": 0.0}
        #: The request path's cost, thread CPU ns: everything `observe` does for sampled
        #: requests (the log's copy is the ring's copy thread's: `log_copy_cpu_s`).
        self.hook_ns = 0

    # ------------------------------------------------------------------ request path

    def observe(
        self,
        request_id: str,
        user_id: str,
        bundle: Bundle,
        matrix: npt.NDArray[np.float64],
        ids: Sequence[str],
        rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float64],
        unscored: int,
        degraded: list[str],
        scored_rows: npt.NDArray[np.intp] | None,
        scored: npt.NDArray[np.float64],
    ) -> str:
        """Log, shadow-score, count the request (each if sampled); returns its request id.

        The id is the caller's, or (when the request is logged and had none) a generated one
        that the response should echo so the caller can report outcomes against it. The
        arguments are kept by reference for shadow and drift: the caller must not modify them
        afterwards.
        """
        rnd = random.random
        logged = self.log_sample > 0.0 and rnd() < self.log_sample
        shadowed = self.shadow_sample > 0.0 and rnd() < self.shadow_sample
        drift = self.drift_sample > 0.0 and rnd() < self.drift_sample and self._drift_on(bundle)
        if not (logged or shadowed or drift):
            return request_id
        t0 = _thread_ns()
        try:
            if logged and not request_id:
                request_id = self._id_prefix + str(next(self._id_seq))
            now = time.time()
            if logged and not shadowed:
                self._offer(now, request_id, user_id, bundle, matrix, ids, rows, scores, unscored,
                            degraded)  # fmt: skip
            if not (shadowed or drift):
                return request_id
            if self._closed or len(self._queue) >= self._cap:
                self.dropped += 1
                if logged and shadowed:  # logged without its shadow scores
                    self._offer(now, request_id, user_id, bundle, matrix, ids, rows, scores,
                                unscored, degraded)  # fmt: skip
                return request_id
            served = Served(
                now,
                request_id,
                user_id,
                bundle,
                matrix,
                ids,
                rows,
                scores,
                unscored,
                degraded,
                scored_rows,
                scored,
                logged,
                shadowed,
                drift,
            )
            if shadowed:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop (a tool or a test): score it here and now
                    self._shadow_then_queue(served)
                else:
                    # After this request's response is on its way: the shadow never delays it.
                    # The time until the loop runs it is the loop's lag (the lag gate's input).
                    served.scheduled = time.perf_counter()
                    loop.call_soon(self._shadow_then_queue, served)
                return request_id
            self._queue.append(served)
            self.queued += 1
            return request_id
        finally:
            self.hook_ns += _thread_ns() - t0

    def _offer(
        self,
        now: float,
        request_id: str,
        user_id: str,
        bundle: Bundle,
        matrix: npt.NDArray[np.float64],
        ids: Sequence[str],
        rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float64],
        unscored: int,
        degraded: list[str],
        shadow: npt.NDArray[np.float64] | None = None,
        shadow_version: str = "",
    ) -> None:
        log = self.log
        if log is None or self._closed:
            self.dropped += 1
            return
        if not log.ring.offer(now, request_id, user_id, bundle, matrix, ids, rows, scores,
                              unscored, degraded, shadow, shadow_version):  # fmt: skip
            self.dropped += 1

    def _shadow_then_queue(self, served: Served) -> None:
        if self.shadow is not None:
            stats = self.shadow_stats
            lag = time.perf_counter() - served.scheduled if served.scheduled else 0.0
            # The gate takes every sample (even when another bound skips this one), so it
            # stays closed while the loop stays late.
            late = self.lag_gate is not None and not self.lag_gate.admit(lag)
            busy = self.busy
            idle = self.idle
            # Skipped, not deferred: a backlog of shadow work would only move the delay later.
            skipped = True
            if late:  # live work queued on this loop: scoring now would add to it
                stats.skipped_lag += 1
            elif busy is not None and busy():
                # Other live calls are in flight on this worker (scoring now would delay them
                # by the shadow's whole scoring time).
                stats.skipped_busy += 1
            elif idle is not None and idle.idle < self.min_idle:
                # The machine has little CPU to spare (live calls queue long before it is all
                # busy).
                stats.skipped_idle += 1
            else:
                skipped = False
            if skipped:
                served.shadow_tried = True
            else:
                self.shadow.score(served)
                # The agreement too, here (~30 us): on the thread its Python would take the
                # GIL from the loop, which then waits up to the 5 ms switch interval.
                self.shadow.finish(served)
        s = served
        if s.log:
            self._offer(
                s.timestamp, s.request_id, s.user_id, s.bundle, s.matrix, s.ids, s.rows,
                s.scores, s.unscored, s.degraded, s.shadow_scores, s.shadow_version,
            )  # fmt: skip
        if s.drift:
            self._queue.append(served)
            self.queued += 1

    @property
    def dropped_total(self) -> int:
        """Everything not logged or counted because a queue or the ring was full: `dropped`
        (refused on the request path) and the requests the log's copy thread found no room
        for in the ring."""
        return self.dropped + (self.log.ring.refused if self.log is not None else 0)

    def set_shadow(self, shadow: Shadow) -> None:
        """Swap in a (re)loaded shadow model, on the event loop: requests already scored by
        the old one finish with it; the counters carry on."""
        shadow.stats = self.shadow_stats
        self.shadow_stats.reloads += 1
        self.shadow = shadow
        self.shadow_sample = self._shadow_sample

    def _drift_on(self, bundle: Bundle) -> bool:
        known = self._has_reference.get(id(bundle))
        if known is None or known[0] is not bundle:
            # Once per model: does its bundle folder hold a reference distribution?
            has = bundle.path is not None and (Path(bundle.path) / REFERENCE_FILE).is_file()
            known = (bundle, has)
            self._has_reference[id(bundle)] = known
            if len(self._has_reference) > 8:
                self._has_reference.pop(next(iter(self._has_reference)))
        return known[1]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flywheel", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Process what is queued, let the log process write out the ring and complete its
        file, stop the thread (blocking)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("flywheel thread did not finish within %.0f s", timeout_s)
            self._thread = None
        else:
            while self._drain():
                pass
        if self.log is not None:
            self.log.close(timeout_s)

    def flush(self, timeout_s: float = 10.0, *, roll: bool = False) -> bool:
        """Wait until everything queued so far is processed and logged and, with `roll`, the
        open log file is complete (for tests and tools). False on timeout."""
        target = self.queued
        until = time.monotonic() + timeout_s
        self._wake.set()
        while self._processed < target:
            if time.monotonic() >= until or self._thread is None:
                return False
            time.sleep(0.005)
        if self.log is not None:
            return self.log.flush(max(0.0, until - time.monotonic()), roll=roll)
        return True

    # ------------------------------------------------------------------ background thread

    def _run(self) -> None:
        checked = 0.0
        while True:
            if not self._drain():
                if self._closed:
                    break
                self._wake.wait(self._poll_s)
                self._wake.clear()
            if self.idle is not None:
                self.idle.tick()
            if self.log is not None:
                self.log.ring.reap()  # the copied requests' matrices, without waiting for traffic
            if self.log is not None and time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                try:
                    self.log.check()
                except Exception:
                    log.exception("restarting the log process failed")

    def _drain(self) -> bool:
        """Process up to one batch; False when the queue was empty."""
        queue = self._queue
        batch: list[Served] = []
        while queue and len(batch) < _BATCH:
            batch.append(queue.popleft())
        if not batch:
            return False
        self.process(batch)
        self._processed += len(batch)
        return True

    def process(self, batch: list[Served]) -> None:
        """Drift counting (the shadow was scored and compared on the loop)."""
        self.batches += 1
        t0 = time.thread_time()
        try:
            self._count_drift(batch)
        except Exception:
            self.drift_errors += 1
            log.exception("drift counting failed")
        self.cpu_s["drift"] += time.thread_time() - t0

    def _count_drift(self, batch: list[Served]) -> None:
        by_bundle: dict[int, list[npt.NDArray[np.float64]]] = {}
        for served in batch:
            if served.drift:
                by_bundle.setdefault(id(served.bundle), []).append(served.matrix)
                self._monitor_for(served.bundle)
        for key, matrices in by_bundle.items():
            monitor = self._monitors[key][1]
            if monitor is not None:
                monitor.update(matrices[0] if len(matrices) == 1 else np.concatenate(matrices))

    def _monitor_for(self, bundle: Bundle) -> DriftMonitor | None:
        known = self._monitors.get(id(bundle))
        if known is None or known[0] is not bundle:
            reference = load_reference(bundle.path, bundle.feature_names)
            monitor = None if reference is None else DriftMonitor(reference, self.drift_window_s)
            known = (bundle, monitor)
            self._monitors[id(bundle)] = known
            if len(self._monitors) > 4:
                self._monitors.pop(next(iter(self._monitors)))
            self._monitor = monitor  # the newest model's monitor is the one reported
        return known[1]

    # ------------------------------------------------------------------ metrics

    def drift_report(self) -> list[FeatureDrift]:
        """Per-feature PSI and missing rate of the current model over the window."""
        monitor = self._monitor
        return [] if monitor is None else monitor.report()

    def metrics(self) -> dict[str, float]:
        """Counters for GetStats and /metrics: flat names, float values (this worker's)."""
        out = {
            "flywheel_queued": float(self.queued),
            "flywheel_dropped": float(self.dropped_total),
            "flywheel_backlog": float(len(self._queue)),
        }
        for step, seconds in self.cpu_s.items():
            out[f"flywheel_cpu_s.{step}"] = seconds
        out["flywheel_cpu_s.hook"] = self.hook_ns / 1e9
        if self.log is not None:
            out.update(self.log.metrics())
        if self.shadow is not None:
            out.update(self.shadow.metrics())
        elif self.shadow_stats.reload_failures:
            out["shadow_reload_failures"] = float(self.shadow_stats.reload_failures)
        for f in self.drift_report():
            out[f"drift_psi.{f.name}"] = f.psi
            out[f"drift_missing.{f.name}"] = f.missing_rate
        return out


def build_flywheel(
    settings: Settings,
    live_bundle: Bundle | None = None,
    worker: int = 0,
    inflight: Callable[[], int] = lambda: 0,
) -> Flywheel | None:
    """The worker's flywheel for these settings, or None when nothing asks for one (blocking).

    `inflight` says how many live calls the worker has in flight (its limiter's count): the
    shadow is skipped while it is at least `shadow_busy_inflight`.

    On when a log folder or a shadow bundle is set, or when the live bundle has a reference
    distribution (drift). A shadow bundle that cannot be loaded is logged and left out.
    """
    s = settings
    has_ref = (
        live_bundle is not None
        and live_bundle.path is not None
        and (Path(live_bundle.path) / REFERENCE_FILE).is_file()
    )
    if s.log_dir is None and s.shadow_bundle is None and not has_ref:
        return None
    shadow = None
    if s.shadow_bundle is not None:
        shadow = load_shadow(s.shadow_bundle, engine=s.engine, cpu_share=s.shadow_cpu_share)
    log_process = None
    if s.log_dir is not None:
        log_process = LogProcess(
            s.log_dir,
            capacity=s.log_buffer_mb << 20,
            roll_s=s.log_roll_s,
            roll_rows=s.log_roll_rows,
            shadow=s.shadow_bundle is not None,
            worker=worker,
        )
        log_process.start()
    fly = Flywheel(
        log=log_process,
        log_sample=s.log_sample,
        shadow=shadow,
        shadow_sample=s.shadow_sample,
        drift_window_s=s.drift_window_s,
        drift_sample=s.drift_sample,
        queue_size=s.log_queue,
        worker=worker,
    )
    if s.shadow_busy_inflight > 0:
        fly.busy = functools.partial(_at_least, inflight, s.shadow_busy_inflight)
    if s.shadow_bundle is not None and s.shadow_min_idle > 0:
        fly.idle = IdleMeter()
        fly.min_idle = s.shadow_min_idle
    if s.shadow_bundle is not None and s.shadow_max_lag_ms > 0:
        fly.lag_gate = LagGate(s.shadow_max_lag_ms / 1e3, s.shadow_lag_hold_s)
    fly.start()
    return fly


def _at_least(inflight: Callable[[], int], n: int) -> bool:
    return inflight() >= n
