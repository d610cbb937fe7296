"""Tracer and meter providers, built once at start-up from the standard OTEL_* variables.

    OTEL_TRACES_EXPORTER   none (default) | console | otlp
    OTEL_METRICS_EXPORTER  none (default) | console | otlp
    OTEL_SERVICE_NAME      default "ranking"

With tracing off the tracer is OpenTelemetry's no-op tracer, so per-stage spans cost almost
nothing; with it on, the caller's W3C `traceparent` from gRPC metadata becomes the parent of
the request span. Tests build a `Telemetry` around an in-memory exporter instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from ranking.telemetry.stats import COUNTERS, STAGES, Stats

__all__ = ["Telemetry", "build_telemetry"]

log = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What the request path needs: a tracer (recording or not), the stats it counts in, and
    the recorder that begins its calls (`call.begin_call`) and counts them into `stats`."""

    tracer: trace.Tracer
    stats: Stats
    recording: bool = False
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    _closed: bool = field(default=False, repr=False)
    #: The `call.AnyRecorder` that begins the calls and counts them into `stats`; built by
    #: `call.begin_call` on first use (this module cannot import `call`: the C extension it
    #: loads is imported through this package).
    recorder: Any = field(default=None, repr=False)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _span_exporter(kind: str) -> SpanExporter | None:
    if kind in ("", "none"):
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise SystemExit(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'ranking[otlp]'"
            ) from exc
        return OTLPSpanExporter()  # type: ignore[no-any-return]
    raise SystemExit(f"OTEL_TRACES_EXPORTER={kind!r} is not supported (none, console, otlp)")


def _metric_exporter(kind: str) -> MetricExporter | None:
    if kind in ("", "none"):
        return None
    if kind == "console":
        return ConsoleMetricExporter()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter,
            )
        except ImportError as exc:
            raise SystemExit(
                "OTEL_METRICS_EXPORTER=otlp needs the OTLP exporter: pip install 'ranking[otlp]'"
            ) from exc
        return OTLPMetricExporter()  # type: ignore[no-any-return]
    raise SystemExit(f"OTEL_METRICS_EXPORTER={kind!r} is not supported (none, console, otlp)")


def register_metrics(meter: metrics.Meter, stats: Stats) -> None:
    """Expose the stats as observable instruments read at export time (nothing per request)."""

    def counter(name: str):  # type: ignore[no-untyped-def]
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(stats.totals()[name])

        return observe

    for name in COUNTERS:
        meter.create_observable_counter(f"ranking.{name}", callbacks=[counter(name)])
    for stage in STAGES:
        meter.create_observable_counter(
            f"ranking.stage.{stage}.time", callbacks=[counter(f"{stage}_ns")], unit="ns"
        )


def build_telemetry(
    stats: Stats,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Providers from OTEL_* variables, or from the exporter / reader given (tests)."""
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ranking")})
    exporter = span_exporter or _span_exporter(os.environ.get("OTEL_TRACES_EXPORTER", "none"))
    tracer_provider = None
    if exporter is not None:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer: trace.Tracer = tracer_provider.get_tracer("ranking")
    else:
        tracer = trace.NoOpTracer()
    reader = metric_reader
    if reader is None:
        mexp = _metric_exporter(os.environ.get("OTEL_METRICS_EXPORTER", "none"))
        if mexp is not None:
            reader = PeriodicExportingMetricReader(mexp)
    meter_provider = None
    if reader is not None:
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        register_metrics(meter_provider.get_meter("ranking"), stats)
    return Telemetry(tracer, stats, exporter is not None, tracer_provider, meter_provider)
