"""gRPC servicers: convert, call the core, convert back. Nothing else happens here."""

from __future__ import annotations

import contextlib
import hmac
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind, Tracer

from ranking.api.v1 import admin_pb2, admin_pb2_grpc
from ranking.core.deadline import Deadline
from ranking.core.service import RankingService
from ranking.errors import BundleError
from ranking.server.converters import to_query, to_response
from ranking.server.errors import abort, status_of
from ranking.telemetry import stats as st
from ranking.telemetry.stage import Stage

__all__ = ["AdminServicer", "RankingServicer", "add_ranking_servicer"]

log = logging.getLogger(__name__)

RANKING_SERVICE = "ranking.v1.RankingService"

#: The traced and the untraced call run the same code; untraced, the span is None.
_UNTRACED: contextlib.nullcontext[None] = contextlib.nullcontext()


class _RootSpan:
    """The call's server span, a child of the caller's W3C trace context when it sent one."""

    __slots__ = ("_cm", "_grpc", "_token", "_tracer")

    def __init__(self, tracer: Tracer, context: grpc.aio.ServicerContext) -> None:
        self._tracer = tracer
        self._grpc = context
        self._token: object = None
        self._cm: Any = None

    def __enter__(self) -> Span:
        metadata = self._grpc.invocation_metadata() or ()
        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        self._token = otel_context.attach(propagate.extract(carrier))
        self._cm = self._tracer.start_as_current_span(
            "ranking.v1.RankingService/Rank", kind=SpanKind.SERVER
        )
        span: Span = self._cm.__enter__()
        span.set_attribute("rpc.system", "grpc")
        return span

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._cm.__exit__(et, e, tb)
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]


class RankingServicer:
    """`Rank` over raw bytes: the native codec decodes the request and encodes the response
    (see `add_ranking_servicer`), so no protobuf message is built on the request path."""

    def __init__(self, core: RankingService, budget_s: float) -> None:
        self._core = core
        self._budget_s = budget_s
        self._telemetry = core.telemetry
        #: Calls inside `Rank` now, and when the last one arrived (monotonic s): the drain
        #: before shutdown waits for both to go quiet.
        self.inflight = 0
        self.last_arrival_s = 0.0

    async def Rank(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        deadline = Deadline.from_budget(self._budget_s, context.time_remaining())
        self.last_arrival_s = deadline.started
        self.inflight += 1
        tel, core = self._telemetry, self._core
        try:
            with (
                Stage(tel, "total", st.I_TOTAL, span=False),
                _RootSpan(tel.tracer, context) if tel.recording else _UNTRACED as span,
            ):
                try:
                    with Stage(tel, "convert", st.I_CONVERT):
                        query = to_query(request, core.max_candidates, core.max_feature_names)
                    if span is not None:
                        span.set_attribute("ranking.candidates", len(query.candidate_ids))
                    result = await core.rank(query, deadline)
                    with Stage(tel, "respond", st.I_RESPOND):
                        body = to_response(result, query.request_id)
                except BaseException as exc:
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", status_of(exc).value[0])
                    await abort(context, exc, tel.stats)
                if span is not None:
                    span.set_attribute("ranking.model_version", result.model_version)
                    span.set_attribute("ranking.degraded_reasons", result.degraded)
                return body
        finally:
            self.inflight -= 1


def add_ranking_servicer(servicer: RankingServicer, server: grpc.aio.Server) -> None:
    """Serve `ranking.v1.RankingService` from `servicer` with bytes in and bytes out: no
    request deserializer, no response serializer (reflection still describes the messages)."""
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(
            servicer.Rank, request_deserializer=None, response_serializer=None
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(RANKING_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(RANKING_SERVICE, handlers)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, core: RankingService, admin_token: str | None, workers: int) -> None:
        self._core = core
        self._token = admin_token
        self._workers = workers

    async def ReloadModel(
        self, request: admin_pb2.ReloadModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadModelResponse:
        if not self._token:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "reload RPC disabled: the server has no admin token"
            )
        sent = dict(context.invocation_metadata() or ()).get("x-admin-token", "")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, self._token or ""):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "bad or missing x-admin-token")
        if not request.bundle_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle_path: required")
        try:
            model = await self._core.models.reload(Path(request.bundle_path))
        except BundleError as exc:
            await context.abort(exc.code, f"bundle refused, old model still serving: {exc.message}")
        return admin_pb2.ReloadModelResponse(model_version=model.version)

    async def GetStats(
        self, request: admin_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetStatsResponse:
        stats = self._core.telemetry.stats
        model = self._core.models.current
        limiter = self._core.limiter
        counters = stats.totals()
        # The limiter's own counters are this worker's (each worker admits for itself).
        for name in ("accepted", "rejected", "dropped", "ignored", "inflight"):
            counters[f"limiter_{name}"] = float(getattr(limiter, name))
        return admin_pb2.GetStatsResponse(
            counters=counters,
            stage_mean_us=stats.stage_means_us(),
            stage_cpu_mean_us=stats.stage_means_us("cpu_ns"),
            model_version=model.version,
            engine=model.scorer.name,
            workers=self._workers,
            concurrency_limit=self._core.limiter.limit,
        )
