"""The served distribution of each feature over a sliding window, against the reference.

`DriftMonitor` keeps bin counts in a ring of time buckets (the window split in `buckets`
slices); a bucket older than the window is zeroed when the ring comes round to it, so the
report always covers the last `window_s` seconds, give or take one slice. Updates come from
the flywheel's background thread, reports from the event loop (GetStats) or a metrics reader;
a lock keeps the two consistent and is never taken on the request path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ranking.flywheel.reference import Reference, bin_counts, psi

__all__ = ["DriftMonitor", "FeatureDrift"]


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    name: str
    psi: float  # NaN when nothing was served in the window
    missing_rate: float
    reference_missing_rate: float
    rows: int


class DriftMonitor:
    """Sliding-window served bin counts for one model's features."""

    def __init__(
        self,
        reference: Reference,
        window_s: float = 600.0,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self._slice_s = window_s / buckets
        self._clock = clock
        shape = (buckets, len(reference.names), reference.n_bins + 1)
        self._counts = np.zeros(shape, dtype=np.int64)
        self._slot_time = np.full(buckets, -1, dtype=np.int64)  # slice number each slot holds
        self._lock = threading.Lock()

    def _slot(self) -> int:
        now = int(self._clock() // self._slice_s)
        slot = now % len(self._slot_time)
        if self._slot_time[slot] != now:
            self._counts[slot] = 0
            self._slot_time[slot] = now
        return slot

    def update(self, matrix: npt.NDArray[np.float64]) -> None:
        """Count served rows (in the model's feature order) into the current slice."""
        counts = bin_counts(matrix, self.reference.edges)
        with self._lock:
            self._counts[self._slot()] += counts

    def window_counts(self) -> npt.NDArray[np.int64]:
        with self._lock:
            now = int(self._clock() // self._slice_s)
            live = self._slot_time > now - len(self._slot_time)
            return np.asarray(self._counts[live].sum(axis=0), dtype=np.int64)

    def report(self) -> list[FeatureDrift]:
        """One entry per feature, in model order."""
        counts = self.window_counts()
        return drift_report(counts, self.reference)


def drift_report(counts: npt.NDArray[np.int64], reference: Reference) -> list[FeatureDrift]:
    """Per-feature PSI and missing rates of served bin counts against `reference`."""
    values = psi(counts, reference)
    total = counts.sum(axis=1)
    missing = counts[:, -1] / np.maximum(total, 1)
    ref_missing = reference.missing_rate()
    return [
        FeatureDrift(
            name,
            float(values[j]),
            float(missing[j]) if total[j] else float("nan"),
            float(ref_missing[j]),
            int(total[j]),
        )
        for j, name in enumerate(reference.names)
    ]
