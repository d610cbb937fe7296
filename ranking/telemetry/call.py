"""One call's record: stage times from one clock read per boundary, its outcome, its spans.

    call = core.begin_call(context.invocation_metadata)   # the clock starts
    query = decode(request);          call.lap(st.CONVERT)
    result = await core.rank(query, deadline, call)      # laps admit, fetch, ... sort
    response = encode(result);        call.lap(st.RESPOND)
    call.end(None)                    # or call.end(exc): counts the outcome, once

This is the one place a call's outcome is counted (ok, invalid, shed, deadline, unavailable,
internal, cancelled) and its latency observed, whichever layer the call ended in.

Cost: a stage boundary is one `perf_counter_ns` read, a bucket search and two adds into the
stats row (~0.3 us); the event-loop thread's CPU clock (~0.2 us a read) is read only for one
call in `CPU_SAMPLE_EVERY`. When tracing records, each lap also becomes a finished child span
`rank.<stage>` with the lap's own start and end times, so the traced and untraced paths are one.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
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
#: one tuple so a lap makes one lookup.
_STAGE = tuple(zip(st.I_WALL, st.I_BUCKET, st.BOUNDS_NS, st.I_CPU, strict=True))


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
        "_cpu_first",
        "_cpu_last",
        "_ctx",
        "_ended",
        "_epoch",
        "_last",
        "_row",
        "_span",
        "_start",
        "_tracer",
    )

    def __init__(self, telemetry: Telemetry, metadata: Metadata | None = None) -> None:
        stats = telemetry.stats
        row = self._row = stats.row
        row[st.I_REQUESTS] += 1
        stats.calls += 1
        self._ended = False
        self._span: trace.Span | None = None
        self._tracer = telemetry.tracer
        self._ctx: Any = None
        self._epoch = 0
        if telemetry.recording:
            self._begin_span(metadata)
        self._cpu_first = self._cpu_last = _cpu() if stats.calls % st.CPU_SAMPLE_EVERY == 0 else -1
        self._start = self._last = _perf()

    def lap(self, stage: int) -> None:
        """The stage `stage` (a `stats` stage number) ended now; it began at the last boundary."""
        now = _perf()
        dt = now - self._last
        self._last = now
        row = self._row
        wall, bucket, bounds, cpu_index = _STAGE[stage]
        row[wall] += dt
        row[bucket + bisect_left(bounds, dt)] += 1
        if self._cpu_last >= 0:
            cpu = _cpu()
            row[cpu_index] += cpu - self._cpu_last
            self._cpu_last = cpu
        if self._span is not None:
            self._stage_span(stage, now - dt, now)

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str
    ) -> None:
        """What an answered call carried (counted even if the answer is not delivered)."""
        row = self._row
        row[st.I_CANDIDATES] += candidates
        row[st.I_SCORED] += scored
        row[st.I_UNSCORED] += candidates - scored
        if degraded:
            row[st.I_DEGRADED] += 1
            for reason in degraded:
                row[st.I_REASON.get(reason, st.I_OTHER_REASON)] += 1
        span = self._span
        if span is not None:
            span.set_attribute("ranking.candidates", candidates)
            span.set_attribute("ranking.model_version", model_version)
            span.set_attribute("ranking.degraded_reasons", list(degraded))

    def end(self, exc: BaseException | None) -> str:
        """The call ended (answered if `exc` is None); counts its outcome and its whole time.
        Only the first call counts; returns the outcome."""
        outcome = outcome_of(exc)
        if self._ended:
            return outcome
        self._ended = True
        now = _perf()
        dt = now - self._start
        row = self._row
        row[st.I_OUTCOME[outcome]] += 1
        row[st.I_WALL[st.TOTAL]] += dt
        row[st.I_BUCKET[st.TOTAL] + bisect_left(st.BOUNDS_NS[st.TOTAL], dt)] += 1
        if self._cpu_first >= 0:
            row[st.I_CPU[st.TOTAL]] += _cpu() - self._cpu_first
            if outcome == "ok":
                row[st.I_CPU_SAMPLED] += 1
        span = self._span
        if span is not None:
            code = (
                exc.code if isinstance(exc, RankingError) else grpc.StatusCode[st.OUTCOMES[outcome]]
            )
            status = code.name
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, status))
            span.end(end_time=self._epoch + dt)
        return outcome

    def _begin_span(self, metadata: Metadata | None) -> None:
        carrier: dict[str, str] = {}
        if metadata is not None:
            carrier = {k: v for k, v in (metadata() or ()) if isinstance(v, str)}
        self._epoch = time.time_ns()
        span = self._tracer.start_span(
            SPAN_NAME,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            start_time=self._epoch,
            attributes={"rpc.system": "grpc"},
        )
        self._span = span
        self._ctx = trace.set_span_in_context(span)

    def _stage_span(self, stage: int, begin_ns: int, end_ns: int) -> None:
        span = self._tracer.start_span(
            f"rank.{st.STAGES[stage]}",
            context=self._ctx,
            start_time=self._epoch + (begin_ns - self._start),
        )
        span.end(end_time=self._epoch + (end_ns - self._start))
