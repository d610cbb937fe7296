"""The flywheel's one hook on the request path, and the background thread behind it.

`Flywheel.observe` is called by the core once per answered request, after sorting. It decides
(by sample ratios) whether the request is logged, shadow-scored and counted for drift, and if
any, appends one `Served` record holding references to the request's matrix and results to a
bounded deque: no copy, no lock, no wait. When the deque is full the record is dropped and
counted (`flywheel_dropped`); a request never waits for the log.

A shadow-sampled request is scored by the shadow model first, on the event loop in a
`call_soon` callback (after the response was handed to gRPC, within the shadow's CPU budget;
see shadow.py for why not in the thread), and queued after that.

A daemon thread drains the deque every `poll_s`, 5 ms (it is not woken per request: that
would cost the request path a lock; a short poll keeps fewer matrices alive, though 5 and
50 ms measured alike within the noise) and, per batch: computes the shadow's agreement, counts
the drift-sampled requests' features into the drift monitor of their model (a share,
`drift_sample`, default 0.1: binning 200 x 64 values costs far more than logging them, and a
sample describes a distribution as well), and writes the logged ones.
`close` (called by the app after the gRPC server has drained, i.e. on SIGTERM) processes
everything still queued, completes the open log file and stops the thread: a clean shutdown
loses nothing that was queued.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ranking.flywheel.drift import DriftMonitor, FeatureDrift
from ranking.flywheel.logwriter import LogWriter
from ranking.flywheel.reference import REFERENCE_FILE, load_reference
from ranking.flywheel.served import Served
from ranking.flywheel.shadow import Shadow, load_shadow
from ranking.scoring.bundle import Bundle
from ranking.settings import Settings

__all__ = ["Flywheel", "build_flywheel"]

log = logging.getLogger(__name__)

_BATCH = 1024


class Flywheel:
    """Served-feature log, drift monitor and shadow model of one worker process."""

    def __init__(
        self,
        *,
        writer: LogWriter | None = None,
        log_sample: float = 1.0,
        shadow: Shadow | None = None,
        shadow_sample: float = 0.1,
        drift_window_s: float = 600.0,
        drift_sample: float = 0.1,
        queue_size: int = 4096,
        worker: int = 0,
        poll_s: float = 0.005,
    ) -> None:
        self.writer = writer
        self.log_sample = log_sample if writer is not None else 0.0
        self.shadow = shadow
        self.shadow_sample = shadow_sample if shadow is not None else 0.0
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
        self.log_errors = 0
        self.drift_errors = 0
        self.batches = 0
        self._processed = 0
        self._rolls_wanted = self._rolls_done = 0
        #: The background thread's CPU seconds by step (its cost, paid off the request path).
        self.cpu_s = {"shadow": 0.0, "drift": 0.0, "log": 0.0}

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
        """Queue the request for the background thread; returns its request id.

        The id is the caller's, or (when the request is logged and had none) a generated one
        that the response should echo so the caller can report outcomes against it. The
        arguments are kept by reference: the caller must not modify them afterwards.
        """
        rnd = random.random
        logged = self.log_sample > 0.0 and rnd() < self.log_sample
        shadowed = self.shadow_sample > 0.0 and rnd() < self.shadow_sample
        drift = self.drift_sample > 0.0 and rnd() < self.drift_sample and self._drift_on(bundle)
        if not (logged or shadowed or drift):
            return request_id
        if logged and not request_id:
            request_id = self._id_prefix + str(next(self._id_seq))
        if self._closed or len(self._queue) >= self._cap:
            self.dropped += 1
            return request_id
        served = Served(
            time.time(),
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
            except RuntimeError:  # no loop (a tool or a test): the thread scores it
                pass
            else:
                # After this request's response is on its way: the shadow never delays it.
                loop.call_soon(self._shadow_then_queue, served)
                return request_id
        self._queue.append(served)
        self.queued += 1
        return request_id

    def _shadow_then_queue(self, served: Served) -> None:
        if self.shadow is not None:
            self.shadow.score(served)
        self._queue.append(served)
        self.queued += 1

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
        """Process what is queued, complete the open log file, stop the thread (blocking)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("flywheel thread did not finish within %.0f s", timeout_s)
            self._thread = None
        elif self.writer is not None:
            self._drain()
            self.writer.close()

    def flush(self, timeout_s: float = 10.0, *, roll: bool = False) -> bool:
        """Wait until everything queued so far is processed and, with `roll`, the open log file
        is complete (for tests and tools; the thread does the work). False on timeout."""
        target = self.queued
        if roll:
            self._rolls_wanted += 1
        rolls = self._rolls_wanted
        until = time.monotonic() + timeout_s
        self._wake.set()
        while self._processed < target or self._rolls_done < rolls:
            if time.monotonic() >= until or self._thread is None:
                return False
            time.sleep(0.005)
        return True

    # ------------------------------------------------------------------ background thread

    def _run(self) -> None:
        try:
            while True:
                if not self._drain():
                    if self._closed:
                        break
                    self._wake.wait(self._poll_s)
                    self._wake.clear()
                wanted = self._rolls_wanted
                roll = wanted > self._rolls_done and not self._queue
                if self.writer is not None:
                    try:
                        self.writer.tick()
                        if roll:
                            self.writer.roll()
                    except Exception:
                        self._log_failure()
                if roll:
                    self._rolls_done = wanted
        finally:
            if self.writer is not None:
                try:
                    self.writer.close()
                except Exception:
                    self._log_failure()

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
        """Shadow-score, count drift, write: each step isolated from the others' failures."""
        self.batches += 1
        clock = time.thread_time
        t0 = clock()
        if self.shadow is not None:
            for served in batch:
                if served.shadow:
                    if not served.shadow_tried:
                        self.shadow.score(served)
                    self.shadow.finish(served)
        t1 = clock()
        try:
            self._count_drift(batch)
        except Exception:
            self.drift_errors += 1
            log.exception("drift counting failed")
        t2 = clock()
        if self.writer is not None:
            logged = [s for s in batch if s.log]
            if logged:
                try:
                    self.writer.write(logged)
                except Exception:
                    self._log_failure()
        t3 = clock()
        cpu = self.cpu_s
        cpu["shadow"] += t1 - t0
        cpu["drift"] += t2 - t1
        cpu["log"] += t3 - t2

    def _log_failure(self) -> None:
        self.log_errors += 1
        if self.log_errors == 1 or math.log2(self.log_errors).is_integer():
            log.exception("served-feature log write failed (%d failures)", self.log_errors)

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
            "flywheel_dropped": float(self.dropped),
            "flywheel_backlog": float(len(self._queue)),
        }
        for step, seconds in self.cpu_s.items():
            out[f"flywheel_cpu_s.{step}"] = seconds
        if self.writer is not None:
            out["log_rows"] = float(self.writer.rows_written)
            out["log_files"] = float(self.writer.files_written)
            out["log_errors"] = float(self.log_errors)
        if self.shadow is not None:
            out.update(self.shadow.metrics())
        for f in self.drift_report():
            out[f"drift_psi.{f.name}"] = f.psi
            out[f"drift_missing.{f.name}"] = f.missing_rate
        return out


def build_flywheel(
    settings: Settings, live_bundle: Bundle | None = None, worker: int = 0
) -> Flywheel | None:
    """The worker's flywheel for these settings, or None when nothing asks for one (blocking).

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
    writer = None
    if s.log_dir is not None:
        writer = LogWriter(
            s.log_dir,
            roll_s=s.log_roll_s,
            roll_rows=s.log_roll_rows,
            shadow=s.shadow_bundle is not None,
            worker=worker,
        )
    fly = Flywheel(
        writer=writer,
        log_sample=s.log_sample,
        shadow=shadow,
        shadow_sample=s.shadow_sample,
        drift_window_s=s.drift_window_s,
        drift_sample=s.drift_sample,
        queue_size=s.log_queue,
        worker=worker,
    )
    fly.start()
    return fly
