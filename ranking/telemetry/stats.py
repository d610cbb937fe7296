"""The request path's counters, stage sums and latency histograms: one row of numbers per worker.

The hot path adds to plain float64 slots through a memoryview (no locks, no allocation, ~60 ns
an add); `GetStats`, the OpenTelemetry instruments and the Prometheus endpoint read them. With
several worker processes each worker writes its own row of one memory-mapped file, so any
process (a worker, or the parent serving /metrics) can sum the whole server without asking the
workers anything.

A row holds, in this order:
    COUNTERS                        outcomes of calls and what they carried
    degraded:<reason>               answers that carried each degraded reason
    <stage>_ns, <stage>_cpu_ns      sums of wall time (every call) and of the event-loop thread's
                                    CPU time (sampled calls only), nanoseconds
    histogram buckets               per stage, counts of calls per latency bucket (not cumulative)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ranking.degraded import Degraded

__all__ = [
    "COUNTERS",
    "DEGRADED_REASONS",
    "OUTCOMES",
    "REQUEST_BUCKETS_S",
    "STAGES",
    "STAGE_BUCKETS_S",
    "Stats",
]

#: How a call ended, and the gRPC status its caller saw.
OUTCOMES = {
    "ok": "OK",
    "invalid": "INVALID_ARGUMENT",
    "shed": "RESOURCE_EXHAUSTED",  # refused by the concurrency limiter
    "deadline": "DEADLINE_EXCEEDED",  # the caller's deadline had passed (on arrival or meanwhile)
    "unavailable": "UNAVAILABLE",
    "internal": "INTERNAL",
    "cancelled": "CANCELLED",  # the caller went away while the call ran: nobody got an answer
}
COUNTERS = (
    "requests",  # calls the service began handling
    *OUTCOMES,
    "degraded",  # OK answers with at least one degraded reason
    "candidates",
    "scored_rows",
    "unscored_rows",
    "unknown_users",
    "unknown_items",
    "store_errors",  # answers that met a failing feature store (features.store_unavailable)
    "fetch_timeouts",  # answers whose fetch ran out of its time share (features.fetch_timeout)
    "cpu_sampled",  # OK calls whose stage CPU times were sampled
    "worker_restarts",  # workers that died and were restarted (written by the parent)
)
#: Reasons counted one by one (every `ranking.degraded.Degraded`); anything else is "other".
DEGRADED_REASONS = (*(r.value for r in Degraded), "other")
#: Contiguous stages of a call, each timed from the previous boundary to its own end; "total" is
#: the whole call (the request histogram).
STAGES = ("convert", "admit", "fetch", "assemble", "score", "sort", "respond", "total")

_MS = 1e-3
#: Request latency buckets (upper bounds, seconds): dense from 0.5 to 20 ms, so a p99 against a
#: 10 ms budget reads to within 0.5 ms.
REQUEST_BUCKETS_S = tuple(
    x * _MS
    for x in (
        *(0.1, 0.25),
        *(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5),
        *(7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 18.0, 20.0),
        *(25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0),
    )
)
#: Stage buckets: stages run from tens of microseconds (sort) to milliseconds (fetch, score).
STAGE_BUCKETS_S = tuple(
    x * _MS
    for x in (
        *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
        *(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0, 100.0),
        *(250.0, 1000.0),
    )
)


def _bounds_of(stage: str) -> tuple[float, ...]:
    return REQUEST_BUCKETS_S if stage == "total" else STAGE_BUCKETS_S


def _layout() -> tuple[tuple[str, ...], dict[str, int]]:
    names = [*COUNTERS, *(f"degraded:{r}" for r in DEGRADED_REASONS)]
    names += [f"{s}_ns" for s in STAGES] + [f"{s}_cpu_ns" for s in STAGES]
    for s in STAGES:
        names += [f"{s}_bucket{i}" for i in range(len(_bounds_of(s)) + 1)]  # the last is +Inf
    return tuple(names), {n: i for i, n in enumerate(names)}


FIELDS, INDEX = _layout()
#: Fields `totals()` reports (everything but the histogram buckets).
SUMMARY = FIELDS[: INDEX[f"{STAGES[-1]}_cpu_ns"] + 1]


class Stats:
    """One row of counters per worker; `row` is this process's, as a memoryview of float64."""

    def __init__(self, workers: int = 1, path: Path | None = None, worker: int = 0) -> None:
        shape = (workers, len(FIELDS))
        self._table: npt.NDArray[np.float64]
        if path is None:
            self._table = np.zeros(shape, dtype=np.float64)
        else:
            if path.exists():
                self._table = np.memmap(path, dtype=np.float64, mode="r+", shape=shape)
            else:
                self._table = np.memmap(path, dtype=np.float64, mode="w+", shape=shape)
        self.workers = workers
        self.worker = worker
        self.array = self._table[worker]
        #: The hot path's view: item access on a memoryview costs about half a numpy scalar's.
        self.row: memoryview[float] = memoryview(self.array).cast("B").cast("d")
        self.path = path

    @staticmethod
    def create_shared(workers: int, folder: Path) -> Path:
        """Create the zeroed file the workers of one server share; returns its path."""
        path = folder / f"ranking-stats-{os.getpid()}.bin"
        np.memmap(path, dtype=np.float64, mode="w+", shape=(workers, len(FIELDS))).flush()
        return path

    def add(self, name: str, value: float = 1.0) -> None:
        self.row[INDEX[name]] += value

    def running(self) -> float:
        """Calls this process began and has not ended."""
        row = self.row
        return row[INDEX["requests"]] - sum(row[INDEX[name]] for name in OUTCOMES)

    def summed(self) -> npt.NDArray[np.float64]:
        """Every field summed over the workers (a copy)."""
        return np.asarray(self._table.sum(axis=0), dtype=np.float64)

    def totals(self) -> dict[str, float]:
        """Counters and stage sums (no histogram buckets), summed over the workers."""
        summed = self.summed()
        return {name: float(summed[i]) for i, name in enumerate(SUMMARY)}

    def stage_means_us(self, kind: str = "ns") -> dict[str, float]:
        """Mean server time per OK request in each stage, in microseconds; `kind` "cpu_ns"
        gives the event-loop thread's CPU time instead of wall time (from the sampled calls)."""
        totals = self.totals()
        done = max(totals["ok" if kind == "ns" else "cpu_sampled"], 1.0)
        return {s: totals[f"{s}_{kind}"] / done / 1e3 for s in STAGES}

    def histogram(
        self, stage: str, summed: npt.NDArray[np.float64] | None = None
    ) -> tuple[tuple[float, ...], list[float], float]:
        """(upper bounds in seconds, cumulative counts per bound then +Inf, sum in seconds) of a
        stage's latency over the whole server; pass `summed()` to read many from one copy."""
        s = self.summed() if summed is None else summed
        bounds = _bounds_of(stage)
        first = INDEX[f"{stage}_bucket0"]
        counts = np.cumsum(s[first : first + len(bounds) + 1]).tolist()
        return bounds, counts, float(s[INDEX[f"{stage}_ns"]]) / 1e9


#: Read the CPU time of one call in this many (a thread-CPU clock read costs ~0.2 us).
CPU_SAMPLE_EVERY = 8

# Index constants for the hot path (a dict lookup per add is avoidable work).
I_REQUESTS = INDEX["requests"]
I_DEGRADED = INDEX["degraded"]
I_CANDIDATES = INDEX["candidates"]
I_SCORED = INDEX["scored_rows"]
I_UNSCORED = INDEX["unscored_rows"]
I_CPU_SAMPLED = INDEX["cpu_sampled"]
I_OUTCOME = {name: INDEX[name] for name in OUTCOMES}
I_REASON = {r: INDEX[f"degraded:{r}"] for r in DEGRADED_REASONS}
I_OTHER_REASON = I_REASON["other"]
# Stage numbers, in STAGES order.
CONVERT, ADMIT, FETCH, ASSEMBLE, SCORE, SORT, RESPOND, TOTAL = range(len(STAGES))
#: Per stage number: index of its wall sum, of its CPU sum, of its first bucket; its bounds (ns).
I_WALL = tuple(INDEX[f"{s}_ns"] for s in STAGES)
I_CPU = tuple(INDEX[f"{s}_cpu_ns"] for s in STAGES)
I_BUCKET = tuple(INDEX[f"{s}_bucket0"] for s in STAGES)
BOUNDS_NS = tuple(tuple(round(b * 1e9) for b in _bounds_of(s)) for s in STAGES)


def _count_layout() -> npt.NDArray[np.int64]:
    """The row layout `_counting.count_call` reads (see its header comment)."""
    out = [len(STAGES), I_CANDIDATES, I_SCORED, I_UNSCORED]
    for wall, bucket, bounds in zip(I_WALL, I_BUCKET, BOUNDS_NS, strict=True):
        out += [wall, bucket, len(bounds), *bounds]
    return np.asarray(out, dtype=np.int64)


COUNT_LAYOUT = _count_layout()
