"""`_counting.Recorder` and its calls in Python: the reference the C is tested against, and the
fallback when the extension is not built (`python setup.py build_ext --inplace`).

Same constructor, same methods, same counts; see `_counting.c` for what each argument means.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["PyCall", "PyRecorder"]

Clock = Callable[[], int]
Outcome = tuple[str, int, type[BaseException] | None]


class PyRecorder:
    """Begins calls that count into one stats row."""

    def __init__(
        self,
        row: memoryview[float],
        layout: npt.NDArray[np.int64],
        cpu_index: tuple[int, ...],
        outcomes: tuple[Outcome, ...],
        reasons: dict[str, int],
        other: str,
        requests: int,
        degraded: int,
        cpu_sampled: int,
        cpu_every: int,
        clock: Clock | None = None,
        cpu_clock: Clock | None = None,
    ) -> None:
        n = len(row)
        lay = [int(x) for x in layout]
        stages = lay[0]
        self.i_cand, self.i_scored, self.i_unscored = lay[1:4]
        #: Per stage: (wall index, first bucket index, bounds ns).
        self.stages: list[tuple[int, int, list[int]]] = []
        pos = 4
        for _ in range(stages):
            wall, bucket, nb = lay[pos : pos + 3]
            if nb < 0 or pos + 3 + nb > len(lay):
                raise ValueError("Recorder: layout truncated")
            self.stages.append((wall, bucket, lay[pos + 3 : pos + 3 + nb]))
            pos += 3 + nb
        if len(cpu_index) != stages:
            raise ValueError("Recorder: one CPU index per stage expected")
        if other not in reasons:
            raise ValueError("Recorder: the reasons must include `other`")
        indices = [self.i_cand, self.i_scored, self.i_unscored, requests, degraded, cpu_sampled]
        indices += [i for w, b, bounds in self.stages for i in (w, b, b + len(bounds))]
        indices += [*cpu_index, *(o[1] for o in outcomes), *reasons.values()]
        if any(i < 0 or i >= n for i in indices):
            raise ValueError("Recorder: index outside the stats row")
        if cpu_every < 1:
            raise ValueError("Recorder: cpu_every must be >= 1")
        self.row = row
        self.cpu_index = cpu_index
        self.outcomes = outcomes
        self.reasons = reasons
        self.other = reasons[other]
        self.requests, self.degraded, self.cpu_sampled = requests, degraded, cpu_sampled
        self.cpu_every = cpu_every
        self.clock = clock or time.perf_counter_ns
        self.cpu_clock = cpu_clock or time.thread_time_ns
        self.calls = 0

    def begin(self) -> PyCall:
        """Begin a call: count it, start its clock."""
        self.calls += 1
        self.row[self.requests] += 1
        return PyCall(self, self.calls % self.cpu_every == 0)

    def outcome_of(self, exc: BaseException | None) -> int:
        if exc is None:
            return 0
        for i, (_, _, kind) in enumerate(self.outcomes[1:-1], 1):
            assert kind is not None
            if isinstance(exc, kind):
                return i
        return len(self.outcomes) - 1


class PyCall:
    """One call in flight."""

    def __init__(self, rec: PyRecorder, sampled: bool) -> None:
        self._rec = rec
        n = len(rec.stages) - 1
        self._marks = [0] * n
        self._cpu = [0] * n if sampled else None
        self._cpu0 = rec.cpu_clock() if sampled else 0
        self._ranked: tuple[int, int, list[int]] | None = None
        self._ended = False
        self._end = 0
        self._start = rec.clock()

    def lap(self, stage: int) -> None:
        """The stage `stage` ended now."""
        if not 0 <= stage < len(self._marks):
            raise ValueError("lap: no such stage")
        self._marks[stage] = self._rec.clock()
        if self._cpu is not None:
            self._cpu[stage] = self._rec.cpu_clock()

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str
    ) -> None:
        """What an answered call carried (counted at end)."""
        rec = self._rec
        self._ranked = (candidates, scored, [rec.reasons.get(r, rec.other) for r in degraded])

    def end(self, exc: BaseException | None) -> str:
        """The call ended: count it (once); returns the outcome's name."""
        rec = self._rec
        o = rec.outcome_of(exc)
        if self._ended:
            return rec.outcomes[o][0]
        now = rec.clock()
        cpu_now = rec.cpu_clock() if self._cpu is not None else 0
        self._ended = True
        self._end = now
        row = rec.row
        row[rec.outcomes[o][1]] += 1
        if self._ranked is not None:
            candidates, scored, reasons = self._ranked
            row[rec.i_cand] += candidates
            row[rec.i_scored] += scored
            row[rec.i_unscored] += candidates - scored
            if reasons:
                row[rec.degraded] += 1
                for i in reasons:
                    row[i] += 1
        prev, prev_cpu = self._start, self._cpu0
        for s, mark in enumerate(self._marks):
            if mark:
                wall, bucket, bounds = rec.stages[s]
                row[wall] += mark - prev
                row[bucket + bisect_left(bounds, mark - prev)] += 1
                prev = mark
                if self._cpu is not None:
                    row[rec.cpu_index[s]] += self._cpu[s] - prev_cpu
                    prev_cpu = self._cpu[s]
        wall, bucket, bounds = rec.stages[-1]
        row[wall] += now - self._start
        row[bucket + bisect_left(bounds, now - self._start)] += 1
        if self._cpu is not None:
            row[rec.cpu_index[-1]] += cpu_now - self._cpu0
            if o == 0:
                row[rec.cpu_sampled] += 1
        return rec.outcomes[o][0]

    def timeline(self) -> tuple[int, ...]:
        """(start, end or 0, stage marks...)."""
        return (self._start, self._end, *self._marks)
