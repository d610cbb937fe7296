"""Every request is traced: the caller's W3C context is the parent, one span per stage."""

from __future__ import annotations

import grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.server.app import App
from ranking.telemetry import Stats, build_telemetry
from tests.conftest import SmallWorld, small_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_spans_and_metrics(small_world: SmallWorld) -> None:
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    stats = Stats()
    telemetry = build_telemetry(stats, span_exporter=exporter, metric_reader=reader)
    app = App(small_settings(small_world), telemetry=telemetry, stats=stats)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            req = pb.RankRequest(
                user_id="u1", candidates=[pb.Candidate(id="i1"), pb.Candidate(id="zz")]
            )
            md = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
            await stub.Rank(req, metadata=md)
        telemetry.tracer_provider.force_flush()  # type: ignore[union-attr]
        spans = {s.name: s for s in exporter.get_finished_spans()}
        root = spans["ranking.v1.RankingService/Rank"]
        assert format(root.context.trace_id, "032x") == TRACE_ID
        assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
        for stage in ("fetch", "assemble", "score", "sort"):
            span = spans[f"rank.{stage}"]
            assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert root.attributes["ranking.candidates"] == 2
        assert root.attributes["ranking.model_version"] == "small-v1"
        assert "features.items_unknown" in root.attributes["ranking.degraded_reasons"]

        data = reader.get_metrics_data()
        values = {
            m.name: m.data.data_points[0].value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }
        assert values["ranking.ok"] == 1
        assert values["ranking.unknown_items"] == 1
        assert values["ranking.stage.score.time"] > 0
    finally:
        await app.stop(0.5)
