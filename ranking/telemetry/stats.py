"""Counters and stage timings of the request path, cheap enough for every request.

The hot path adds to plain numpy slots (no locks, no allocation); OpenTelemetry instruments
and the admin `GetStats` RPC read them. With several worker processes each worker writes its own
row of one memory-mapped file, so any worker can report the sum for the whole server.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["STAGES", "Stats"]

COUNTERS = (
    "requests",  # calls that reached the core
    "ok",
    "invalid",  # INVALID_ARGUMENT
    "shed",  # RESOURCE_EXHAUSTED by the limiter
    "deadline",  # refused or dropped for the deadline
    "unavailable",
    "internal",
    "cancelled",  # the caller cancelled or its deadline passed while the call ran
    "degraded",  # OK answers with at least one degraded reason
    "candidates",
    "scored_rows",
    "unscored_rows",
    "unknown_users",
    "unknown_items",
    "store_errors",
    "worker_restarts",  # workers that died and were restarted (written by the parent)
)
STAGES = ("convert", "fetch", "assemble", "score", "sort", "respond", "total")
# Per stage: wall time, and the event-loop thread's CPU time (they differ while a stage awaits
# Redis or a scoring thread, or when the process is preempted).
FIELDS = COUNTERS + tuple(f"{s}_ns" for s in STAGES) + tuple(f"{s}_cpu_ns" for s in STAGES)
INDEX = {name: i for i, name in enumerate(FIELDS)}


class Stats:
    """One row of counters per worker; `row` is this process's."""

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
        self.row = self._table[worker]
        self.path = path

    @staticmethod
    def create_shared(workers: int, folder: Path) -> Path:
        """Create the zeroed file the workers of one server share; returns its path."""
        path = folder / f"ranking-stats-{os.getpid()}.bin"
        np.memmap(path, dtype=np.float64, mode="w+", shape=(workers, len(FIELDS))).flush()
        return path

    def add(self, name: str, value: float = 1.0) -> None:
        self.row[INDEX[name]] += value

    def totals(self) -> dict[str, float]:
        summed = self._table.sum(axis=0)
        return {name: float(summed[i]) for i, name in enumerate(FIELDS)}

    def stage_means_us(self, kind: str = "ns") -> dict[str, float]:
        """Mean server time per OK request in each stage, in microseconds; `kind` "cpu_ns"
        gives the event-loop thread's CPU time instead of wall time."""
        totals = self.totals()
        done = max(totals["ok"], 1.0)
        return {s: totals[f"{s}_{kind}"] / done / 1e3 for s in STAGES}


# Index constants for the hot path (a dict lookup per add is avoidable work).
I_REQUESTS = INDEX["requests"]
I_OK = INDEX["ok"]
I_DEGRADED = INDEX["degraded"]
I_CANDIDATES = INDEX["candidates"]
I_SCORED = INDEX["scored_rows"]
I_UNSCORED = INDEX["unscored_rows"]
I_CONVERT = INDEX["convert_ns"]
I_FETCH = INDEX["fetch_ns"]
I_ASSEMBLE = INDEX["assemble_ns"]
I_SCORE = INDEX["score_ns"]
I_SORT = INDEX["sort_ns"]
I_RESPOND = INDEX["respond_ns"]
I_TOTAL = INDEX["total_ns"]
CPU_OFFSET = INDEX["fetch_cpu_ns"] - INDEX["fetch_ns"]  # stage wall index + this = its CPU index
