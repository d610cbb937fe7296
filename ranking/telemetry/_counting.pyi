"""A call's record, counted into a stats row, in C (see _counting.c; reference.py is the same in
Python)."""

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

class Call:
    """One call in flight (`Recorder.begin`); not thread-safe: one event loop."""

    def lap(self, stage: int, /) -> None:
        """The stage `stage` ended now (it began at the previous boundary). ValueError for a
        stage number out of range."""

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str, /
    ) -> None:
        """What an answered call carried (counted at `end`)."""

    def end(self, exc: BaseException | None, /) -> str:
        """The call ended: counts the outcome, what it carried, each stage that ran and the
        whole call, once; returns the outcome's name."""

    def timeline(self) -> tuple[int, ...]:
        """(start, end or 0 before `end`, the clock at each stage's end or 0 if it did not run)."""

class Recorder:
    """Begins calls that count into one stats row; every index is checked against the row once,
    here (ValueError), and the row's buffer is held for the recorder's lifetime."""

    def __init__(
        self,
        row: memoryview[float],
        layout: npt.NDArray[np.int64],
        cpu_index: tuple[int, ...],
        outcomes: tuple[tuple[str, int, type[BaseException] | None], ...],
        reasons: dict[str, int],
        other: str,
        requests: int,
        degraded: int,
        cpu_sampled: int,
        cpu_every: int,
        clock: Callable[[], int] | None = None,
        cpu_clock: Callable[[], int] | None = None,
    ) -> None: ...
    @property
    def calls(self) -> int:
        """Calls begun."""

    def begin(self) -> Call:
        """Count a request and start its clock (and, one call in `cpu_every`, its CPU clock)."""
