"""One call's record: stage times from one clock read per boundary, its outcome, its spans.

    call = core.begin_call(context.invocation_metadata)   # the clock starts
    query = decode(request);          call.lap(st.CONVERT)
    result = await core.rank(query, deadline, call)      # laps admit, fetch, ... sort
    response = encode(result);        call.lap(st.RESPOND)
    call.end(None)                    # or call.end(exc): counts the outcome, once

This is the one place a call's outcome is counted (ok, invalid, shed, deadline, unavailable,
internal, cancelled) and its latency observed, whichever layer the call ended in.

Cost: the record is a C object (`_counting.Call`, begun by the worker's `_counting.Recorder`);
a stage boundary is one C method call that reads the monotonic clock into a C array, `ranked`
keeps two integers and the reasons' slots, and `end` counts every stage (a bucket search and
two adds each), the outcome and what the call carried straight into the shared stats row. No
Python frame runs per stage. The event-loop thread's CPU clock is read only for one call in
`CPU_SAMPLE_EVERY`. When tracing records, `begin_call` wraps the C record in a `TracedCall`,
which also emits the request span and a finished child span `rank.<stage>` per stage that ran
from the same clock readings, so the traced and untraced paths count alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

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
from ranking.telemetry.reference import PyRecorder

if TYPE_CHECKING:
    from ranking.telemetry.stats import Stats

__all__ = ["AnyRecorder", "CallRecord", "TracedCall", "begin_call", "new_recorder", "outcome_of"]

try:
    from ranking.telemetry._counting import Recorder
except ImportError:  # not built (python setup.py build_ext --inplace): the same, slower
    Recorder = PyRecorder  # type: ignore[assignment,misc]

#: The C recorder, or its Python reference.
AnyRecorder = Recorder | PyRecorder

#: Exception class -> outcome; the first match in this order wins.
_OUTCOME_OF: tuple[tuple[type[BaseException], str], ...] = (
    (asyncio.CancelledError, "cancelled"),
    (InvalidRequest, "invalid"),
    (Overloaded, "shed"),
    (DeadlineExceeded, "deadline"),
    (Unavailable, "unavailable"),
)
#: The recorder's outcome table: ok first (no exception), internal last (any other exception).
OUTCOMES: tuple[tuple[str, int, type[BaseException] | None], ...] = (
    ("ok", st.I_OUTCOME["ok"], None),
    *((name, st.I_OUTCOME[name], kind) for kind, name in _OUTCOME_OF),
    ("internal", st.I_OUTCOME["internal"], None),
)

Metadata = Callable[[], Iterable[tuple[str, Any]] | None]

SPAN_NAME = "ranking.v1.RankingService/Rank"


def outcome_of(exc: BaseException | None) -> str:
    """The outcome a call ending with `exc` counts as (a key of `stats.OUTCOMES`)."""
    if exc is None:
        return "ok"
    for kind, name in _OUTCOME_OF:
        if isinstance(exc, kind):
            return name
    return "internal"


class CallRecord(Protocol):
    """A call in flight (`_counting.Call`, or a `TracedCall` around one); see the module
    docstring. Not thread-safe (one event loop)."""

    def lap(self, stage: int, /) -> None:
        """The stage `stage` (a `stats` stage number) ended now; it began at the last boundary."""

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str, /
    ) -> None:
        """What an answered call carried (counted at `end`, even if the answer is not sent)."""

    def end(self, exc: BaseException | None, /) -> str:
        """The call ended (answered if `exc` is None): counts its outcome, what it carried,
        each stage that ran and its whole time. Only the first call counts; returns the
        outcome."""
        ...


def new_recorder(
    stats: Stats,
    clock: Callable[[], int] | None = None,
    cpu_clock: Callable[[], int] | None = None,
    *,
    native: bool = True,
    cpu_every: int | None = None,
) -> AnyRecorder:
    """The recorder that begins this worker's calls and counts them into `stats.row`.
    `clock` / `cpu_clock` replace the monotonic and thread-CPU clocks (tests); `native`
    False gives the Python reference; `cpu_every` defaults to `stats.CPU_SAMPLE_EVERY`."""
    kind = Recorder if native else PyRecorder
    return kind(
        stats.row,
        st.COUNT_LAYOUT,
        st.I_CPU,
        OUTCOMES,
        st.I_REASON,
        "other",
        st.I_REQUESTS,
        st.I_DEGRADED,
        st.I_CPU_SAMPLED,
        st.CPU_SAMPLE_EVERY if cpu_every is None else cpu_every,
        clock,
        cpu_clock,
    )


class Recording(Protocol):
    """What `begin_call` uses of a `providers.Telemetry` (named structurally, so that this
    module does not import providers)."""

    recorder: AnyRecorder | None
    stats: Stats
    recording: bool
    tracer: trace.Tracer


def begin_call(telemetry: Recording, metadata: Metadata | None = None) -> CallRecord:
    """Start recording a call (the transport does this first thing). `metadata` is called for
    the caller's W3C trace context only when tracing records."""
    recorder = telemetry.recorder
    if recorder is None:  # the first call
        recorder = telemetry.recorder = new_recorder(telemetry.stats)
    call = recorder.begin()
    if telemetry.recording:
        return TracedCall(call, telemetry.tracer, metadata)
    return call


class TracedCall:
    """A call's record when tracing records: counts through the C record it wraps, and emits
    the request span and one child span per stage from that record's clock readings."""

    __slots__ = ("_call", "_ctx", "_ended", "_epoch", "_span", "_tracer")

    def __init__(self, call: Any, tracer: trace.Tracer, metadata: Metadata | None) -> None:
        self._call = call
        self._ended = False
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

    def lap(self, stage: int) -> None:
        self._call.lap(stage)

    def ranked(
        self, candidates: int, scored: int, degraded: Sequence[str], model_version: str
    ) -> None:
        self._call.ranked(candidates, scored, degraded, model_version)
        span = self._span
        span.set_attribute("ranking.candidates", candidates)
        span.set_attribute("ranking.model_version", model_version)
        span.set_attribute("ranking.degraded_reasons", list(degraded))

    def end(self, exc: BaseException | None) -> str:
        outcome: str = self._call.end(exc)
        if not self._ended:
            self._ended = True
            self._end_spans(exc, outcome)
        return outcome

    def _end_spans(self, exc: BaseException | None, outcome: str) -> None:
        start, end, *marks = self._call.timeline()
        span, epoch = self._span, self._epoch
        prev = start
        for stage, mark in enumerate(marks):
            if mark:
                child = self._tracer.start_span(
                    f"rank.{st.STAGES[stage]}",
                    context=self._ctx,
                    start_time=epoch + (prev - start),
                )
                child.end(end_time=epoch + (mark - start))
                prev = mark
        name = exc.status if isinstance(exc, RankingError) else st.OUTCOMES[outcome]
        code = grpc.StatusCode[name]
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end(end_time=epoch + (end - start))
