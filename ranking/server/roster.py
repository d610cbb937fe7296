"""Which workers of a multi-worker server are serving: one slot per worker in a small shared file.

A worker marks its slot ready once it listens with a model loaded and clears it when it starts
to drain; the parent clears the slot of a worker that died (a SIGKILLed worker cannot). Every
worker reports health SERVING only while every slot is ready, so a balancer or a Kubernetes
readiness probe sees NOT_SERVING while a worker is missing or restarting.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Roster"]

_READY, _PID = 0, 1


class Roster:
    """Ready flags (and pids) of `workers` slots; in memory when `path` is None."""

    def __init__(self, workers: int, path: Path | None = None) -> None:
        self.workers = workers
        self.path = path
        self._table: npt.NDArray[np.int64]
        if path is None:
            self._table = np.zeros((workers, 2), dtype=np.int64)
        else:
            self._table = np.memmap(path, dtype=np.int64, mode="r+", shape=(workers, 2))

    @staticmethod
    def create(workers: int, folder: Path) -> Path:
        """Create the zeroed file the workers of one server share; returns its path."""
        path = folder / f"ranking-roster-{os.getpid()}.bin"
        np.memmap(path, dtype=np.int64, mode="w+", shape=(workers, 2)).flush()
        return path

    def set_ready(self, worker: int, ready: bool) -> None:
        self._table[worker, _PID] = os.getpid() if ready else 0
        self._table[worker, _READY] = 1 if ready else 0

    def clear(self, worker: int) -> None:
        """Mark a slot not ready (the parent, for a worker that died)."""
        self._table[worker, _READY] = 0
        self._table[worker, _PID] = 0

    def ready(self, worker: int) -> bool:
        return bool(self._table[worker, _READY])

    def all_ready(self) -> bool:
        return bool(self._table[:, _READY].all())

    def pids(self) -> list[int]:
        """Pids of the ready workers (0 for a slot that is not)."""
        return [int(p) for p in self._table[:, _PID]]
