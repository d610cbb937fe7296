"""One call's record: stage times from one clock read per boundary, its outcome, its spans.

    call = core.begin_call(context.invocation_metadata)   # the clock starts
    query = decode(request);          call.lap(st.CONVERT)
    result = await core.rank(query, deadline, call)      # laps admit, fetch, ... sort
    response = encode(result);        call.lap(st.RESPOND)
    call.end(None)                    # or call.end(exc): counts the outcome, once

This is the one place a call's outcome is counted (ok, invalid, shed, deadline, unavailable,
internal, cancelled) and its latency observed, whichever layer the call ended in.

Cost: a stage boundary is one `perf_counter_ns` read kept in a list; `end` then counts every
stage at once (a bucket search and two adds into the stats row each). The event-loop thread's
CPU clock (~0.2 us a read) is read only for one call in `CPU_SAMPLE_EVERY`. When tracing
records, `end` also emits a finished child span `rank.<stage>` per stage that ran, with the
stage's own start and end times, so the traced and untraced paths are one.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ranking.errors import (
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    RankingError,
    Unavailable,
)
from ranking.telemetry import stats as st
from ranking.telemetry.providers import Telemetry

__all__ = ["CallRecord", "outcome_of"]

_perf = time.perf_counter_ns
_cpu = time.thread_time_ns

#: Exception class -> outcome; the first match in this order wins.
_OUTCOME_OF: tuple[tuple[type[BaseException], str], ...] = (
    (asyncio.CancelledError, "cancelled"),
    (InvalidRequest, "invalid"),
    (Overloaded, "shed"),
    (DeadlineExceeded, "deadline"),
    (Unavailable, "unavailable"),
)

Metadata = Callable[[], Iterable[tuple[str, Any]] | None]

SPAN_NAME = "ranking.v1.RankingService/Rank"

#: Per stage number: (wall sum index, first bucket index, bucket bounds in ns, CPU sum index),
#: one tuple so a stage makes one lookup.
_STAGE = tuple(zip(st.I_WALL, st.I_BUCKET, st.BOUNDS_NS, st.I_CPU, strict=True))
I_OUTCOME = st.I_OUTCOME
I_REQUESTS = st.I_REQUESTS
N_STAGES = st.TOTAL  # stages lapped one by one; the whole call ("total") is timed by end()
LAYOUT = st.COUNT_LAYOUT


def count_call_py(
    row: memoryview[float],
    layout: npt.NDArray[np.int64],
    marks: list[int],
    start: int,
    now: int,
    outcome: int,
    candidates: int,
    scored: int,
) -> None:
    """`_counting.count_call` in Python: the reference its tests compare against, and the
    fallback when the extension is not built. `layout` is unused (the stats tables are read)."""
    row[outcome] += 1
    if candidates >= 0:
        row[st.I_CANDIDATES] += candidates
        row[st.I_SCORED] += scored
        row[st.I_UNSCORED] += candidates - scored
    prev = start
    for stage in range(st.TOTAL):  # stages run in order; the ones that did not are 0
        mark = marks[stage]
        if mark:
            wall, bucket, bounds, _ = _STAGE[stage]
            dt = mark - prev
            row[wall] += dt
            row[bucket + bisect_left(bounds, dt)] += 1
            prev = mark
    wall, bucket, bounds, _ = _STAGE[st.TOTAL]
    row[wall] += now - start
    row[bucket + bisect_left(bounds, now - start)] += 1


try:
    from ranking.telemetry._counting import count_call
except ImportError:  # not built (python setup.py build_ext --inplace): the same, slower
    count_call = count_call_py


def outcome_of(exc: BaseException | None) -> str:
    """The outcome a call ending with `exc` counts as (a key of `stats.OUTCOMES`)."""
    if exc is None:
        return "ok"
    for kind, name in _OUTCOME_OF:
        if isinstance(exc, kind):
            return name
    return "internal"


class CallRecord:
    """A call in flight; see the module docstring. Not thread-safe (one event loop)."""

    __slots__ = (
        "_cpu",
        "_ctx",
        "_ended",
        "_epoch",
        "_marks",
        "_ranked",
        "_row",
        "_span",
        "_start",
        "_tracer",
    )

    def __init__(self, telemetry: Telemetry, metadata: Metadata | None = None) -> None:
        stats = telemetry.stats
        row = self._row = stats.row
        row[I_REQUESTS] += 1
        calls = stats.calls = stats.calls + 1
        self._ended = False
        self._ranked: tuple[int, int, Sequence[str]] | None = None
        self._span: trace.Span | None = None
        if telemetry.recording:  # _tracer, _ctx and _epoch are set (and read) only then
            self._begin_span(telemetry.tracer, metadata)
        #: Clock reading at the end of each stage (0: the stage did not run).
        self._marks = [0] * N_STAGES
        #: The thread-CPU clock at the start and at each stage's end, for a sampled call.
        self._cpu: list[int] | None = None
        if calls % st.CPU_SAMPLE_EVERY == 0:
            cpu = self._cpu = [0] * (N_STAGES + 1)
            cpu[N_STAGES] = _cpu()
        self._start = _perf()

    def lap(self, stage: int) -> None:
        """The stage `stage` (a `stats` stage number) ended now; it began at the last boundary.

        Only the clock is read here; the stage is counted in `end`. Python work done between
        the native stages runs with cold caches, so the less of it per boundary the better
        (measured: counting at each lap cost ~4x its cost in a tight loop)."""
        self._marks[stage] = _perf()
        cpu = self._cpu
        if cpu is not None:
            cpu[stage] = _cpu()

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str
    ) -> None:
        """What an answered call carried (counted at `end`, even if the answer is not sent)."""
        self._ranked = (candidates, scored, degraded)
        span = self._span
        if span is not None:
            span.set_attribute("ranking.candidates", candidates)
            span.set_attribute("ranking.model_version", model_version)
            span.set_attribute("ranking.degraded_reasons", list(degraded))

    def end(self, exc: BaseException | None) -> str:
        """The call ended (answered if `exc` is None): counts its outcome, what it carried,
        each stage that ran and its whole time. Only the first call counts; returns the
        outcome."""
        outcome = "ok" if exc is None else outcome_of(exc)
        if self._ended:
            return outcome
        self._ended = True
        now = _perf()
        row = self._row
        ranked = self._ranked
        if ranked is None:
            count_call(row, LAYOUT, self._marks, self._start, now, I_OUTCOME[outcome], -1, 0)
        else:
            candidates, scored, degraded = ranked
            count_call(
                row, LAYOUT, self._marks, self._start, now, I_OUTCOME[outcome], candidates, scored
            )
            if degraded:
                row[st.I_DEGRADED] += 1
                for reason in degraded:
                    row[st.I_REASON.get(reason, st.I_OTHER_REASON)] += 1
        if self._cpu is not None:
            self._count_cpu(outcome == "ok")
        if self._span is not None:
            self._end_spans(exc, outcome, now - self._start)
        return outcome

    def _count_cpu(self, ok: bool) -> None:
        cpu, row = self._cpu, self._row
        assert cpu is not None
        prev = first = cpu[st.TOTAL]
        for stage in range(st.TOTAL):
            mark = cpu[stage]
            if mark:
                row[st.I_CPU[stage]] += mark - prev
                prev = mark
        row[st.I_CPU[st.TOTAL]] += _cpu() - first
        if ok:
            row[st.I_CPU_SAMPLED] += 1

    def _end_spans(self, exc: BaseException | None, outcome: str, total_ns: int) -> None:
        span = self._span
        assert span is not None
        prev = self._start
        for stage in range(st.TOTAL):
            mark = self._marks[stage]
            if mark:
                child = self._tracer.start_span(
                    f"rank.{st.STAGES[stage]}",
                    context=self._ctx,
                    start_time=self._epoch + (prev - self._start),
                )
                child.end(end_time=self._epoch + (mark - self._start))
                prev = mark
        code = exc.code if isinstance(exc, RankingError) else grpc.StatusCode[st.OUTCOMES[outcome]]
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end(end_time=self._epoch + total_ns)

    def _begin_span(self, tracer: trace.Tracer, metadata: Metadata | None) -> None:
        carrier: dict[str, str] = {}
        if metadata is not None:
            carrier = {k: v for k, v in (metadata() or ()) if isinstance(v, str)}
        self._tracer = tracer
        self._epoch = time.time_ns()
        span = tracer.start_span(
            SPAN_NAME,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            start_time=self._epoch,
            attributes={"rpc.system": "grpc"},
        )
        self._span = span
        self._ctx = trace.set_span_in_context(span)
