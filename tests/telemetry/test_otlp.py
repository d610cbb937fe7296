"""Traces and counters end to end: the OTLP exporters reach a real OTLP/gRPC collector."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.telemetry.stats import STAGES
from tests.conftest import SmallWorld, free_port
from tests.telemetry.servers import RankingProcess, running

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the dev extras (opentelemetry-exporter-otlp-proto-grpc) are not installed",
)
from opentelemetry.proto.collector.metrics.v1 import (  # noqa: E402
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

OK_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BAD_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_hex: str) -> list[trace_pb2.Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_hex]


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    """Keeps the last value of every metric data point it is sent, by metric name."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.lock = threading.Lock()

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        with self.lock:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        for point in m.sum.data_points:
                            self.values[m.name] = point.as_double or float(point.as_int)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def wait(self, name: str, want: float, timeout_s: float = 20) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                got = self.values.get(name)
            if got == want:
                return got
            time.sleep(0.1)
        return got


def wait_spans(receiver: Receiver, trace_hex: str, count: int, timeout_s: float = 20) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = receiver.of_trace(trace_hex)
        if len(spans) >= count:
            return spans
        time.sleep(0.1)
    return receiver.of_trace(trace_hex)


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def test_spans_reach_an_otlp_receiver_with_the_callers_parent(small_world: SmallWorld) -> None:
    receiver = Receiver()
    metrics = MetricsReceiver()
    collector = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, collector)
    port = free_port()
    collector.add_insecure_port(f"127.0.0.1:{port}")
    collector.start()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_SERVICE_NAME": "ranking-under-test",
    }
    server = RankingProcess(small_world, "--workers", "1", env=env)
    try:
        with running(server):
            server.wait_serving()
            with grpc.insecure_channel(server.target) as ch:
                stub = ranking_pb2_grpc.RankingServiceStub(ch)
                ok = pb.RankRequest(
                    user_id="u1", candidates=[pb.Candidate(id="i1"), pb.Candidate(id="zz")]
                )
                stub.Rank(ok, metadata=(("traceparent", f"00-{OK_TRACE}-{PARENT}-01"),))
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Rank(
                        pb.RankRequest(user_id="u1"),  # no candidates: INVALID_ARGUMENT
                        metadata=(("traceparent", f"00-{BAD_TRACE}-{PARENT}-01"),),
                    )
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            stages = STAGES[:-1]  # every stage but "total", which is the request span itself
            spans = wait_spans(receiver, OK_TRACE, 1 + len(stages))
            by_name = {s.name: s for s in spans}
            root = by_name["ranking.v1.RankingService/Rank"]
            assert root.parent_span_id.hex() == PARENT
            assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER
            for stage in stages:
                child = by_name[f"rank.{stage}"]
                assert child.parent_span_id == root.span_id, stage
                assert root.start_time_unix_nano <= child.start_time_unix_nano
                assert child.end_time_unix_nano <= root.end_time_unix_nano
            starts = [by_name[f"rank.{s}"].start_time_unix_nano for s in stages]
            assert starts == sorted(starts)  # stages in order, one after the other
            attrs = attributes(root)
            assert attrs["rpc.grpc.status_code"] == 0
            assert attrs["ranking.model_version"] == "small-v1"
            assert attrs["ranking.candidates"] == 2
            assert root.status.code != trace_pb2.Status.STATUS_CODE_ERROR

            failed = wait_spans(receiver, BAD_TRACE, 2)
            bad_root = next(s for s in failed if s.name == "ranking.v1.RankingService/Rank")
            assert bad_root.parent_span_id.hex() == PARENT
            assert attributes(bad_root)["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
            assert bad_root.status.code == trace_pb2.Status.STATUS_CODE_ERROR
            assert "INVALID_ARGUMENT" in bad_root.status.message
            # It failed in validation (admit): the stage before it, convert, was lapped.
            assert {s.name for s in failed} == {bad_root.name, "rank.convert"}
            assert all(s.parent_span_id == bad_root.span_id for s in failed if s is not bad_root)

            # The counters reach the same collector through the OTLP metric exporter.
            assert metrics.wait("ranking.ok", 1.0) == 1.0
            assert metrics.wait("ranking.invalid", 1.0) == 1.0
        assert server.proc.returncode == 0
    finally:
        collector.stop(0)
