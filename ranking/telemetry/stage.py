"""Stage timing: wall and CPU time into the stats row, and a span when tracing records."""

from __future__ import annotations

import time

from ranking.telemetry import stats as st
from ranking.telemetry.providers import Telemetry

__all__ = ["Stage"]


class Stage:
    """Times a stage into the stats row and, when tracing records, wraps it in a span."""

    __slots__ = ("_cpu", "_index", "_row", "_span", "_start", "_tracer", "name")

    def __init__(self, telemetry: Telemetry, name: str, index: int, span: bool = True) -> None:
        self._tracer = telemetry.tracer if telemetry.recording and span else None
        self._row = telemetry.stats.row
        self._index = index
        self.name = name
        self._span: object = None
        self._start = self._cpu = 0

    def __enter__(self) -> Stage:
        if self._tracer is not None:
            self._span = self._tracer.start_as_current_span(f"rank.{self.name}")
            self._span.__enter__()  # type: ignore[attr-defined]
        self._cpu = time.thread_time_ns()
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        row = self._row
        row[self._index] += time.perf_counter_ns() - self._start
        row[self._index + st.CPU_OFFSET] += time.thread_time_ns() - self._cpu
        if self._span is not None:
            self._span.__exit__(*exc)  # type: ignore[attr-defined]
