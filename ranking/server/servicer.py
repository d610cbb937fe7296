"""gRPC servicers: convert, call the core, convert back. Nothing else happens here."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate

from ranking.api.v1 import admin_pb2, admin_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc as pb_grpc
from ranking.core.deadline import Deadline
from ranking.core.service import RankingService
from ranking.errors import BundleError
from ranking.server.converters import to_query, to_response
from ranking.server.errors import abort
from ranking.telemetry import stats as st
from ranking.telemetry.stage import Stage

__all__ = ["AdminServicer", "RankingServicer"]

log = logging.getLogger(__name__)


class RankingServicer(pb_grpc.RankingServiceServicer):  # type: ignore[misc]
    def __init__(self, core: RankingService, budget_s: float) -> None:
        self._core = core
        self._budget_s = budget_s
        self._telemetry = core.telemetry
        #: Calls inside `Rank` now, and when the last one arrived (monotonic s): the drain
        #: before shutdown waits for both to go quiet.
        self.inflight = 0
        self.last_arrival_s = 0.0

    async def Rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankResponse:
        deadline = Deadline.from_budget(self._budget_s, context.time_remaining())
        self.last_arrival_s = deadline.started
        self.inflight += 1
        try:
            with Stage(self._telemetry, "total", st.I_TOTAL, span=False):
                if self._telemetry.recording:
                    return await self._traced(request, context, deadline)
                return await self._rank(request, context, deadline)
        finally:
            self.inflight -= 1

    async def _rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext, deadline: Deadline
    ) -> pb.RankResponse:
        tel = self._telemetry
        try:
            with Stage(tel, "convert", st.I_CONVERT):
                query = to_query(request)
            result = await self._core.rank(query, deadline)
            with Stage(tel, "respond", st.I_RESPOND):
                return to_response(result, request.request_id)
        except BaseException as exc:
            await abort(context, exc, tel.stats)

    async def _traced(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext, deadline: Deadline
    ) -> pb.RankResponse:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        token = otel_context.attach(propagate.extract(carrier))
        try:
            with self._telemetry.tracer.start_as_current_span(
                "ranking.v1.RankingService/Rank", kind=_SERVER
            ) as span:
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("ranking.candidates", len(request.candidates))
                try:
                    with Stage(self._telemetry, "convert", st.I_CONVERT):
                        query = to_query(request)
                    result = await self._core.rank(query, deadline)
                except BaseException as exc:
                    span.set_attribute(
                        "rpc.grpc.status_code", getattr(exc, "code", _INTERNAL).value[0]
                    )
                    await abort(context, exc, self._telemetry.stats)
                span.set_attribute("ranking.model_version", result.model_version)
                span.set_attribute("ranking.degraded_reasons", result.degraded)
                with Stage(self._telemetry, "respond", st.I_RESPOND):
                    return to_response(result, request.request_id)
        finally:
            otel_context.detach(token)


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
        if self._core.flywheel is not None:  # log, drift (PSI per feature), shadow agreement
            counters.update(self._core.flywheel.metrics())
        return admin_pb2.GetStatsResponse(
            counters=counters,
            stage_mean_us=stats.stage_means_us(),
            stage_cpu_mean_us=stats.stage_means_us("cpu_ns"),
            model_version=model.version,
            engine=model.scorer.name,
            workers=self._workers,
            concurrency_limit=self._core.limiter.limit,
        )


from opentelemetry.trace import SpanKind  # noqa: E402

_SERVER = SpanKind.SERVER
_INTERNAL = grpc.StatusCode.INTERNAL
