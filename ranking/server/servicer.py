"""gRPC servicers: convert, call the core, convert back; the core counts and times the call.

`Rank` takes and returns raw bytes (`add_ranking_servicer` registers it without a protobuf
deserializer or serializer): the native codec decodes the request and encodes the response.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc

from ranking.api.v1 import admin_pb2, admin_pb2_grpc
from ranking.core.deadline import Deadline
from ranking.core.service import RankingService
from ranking.errors import BundleError
from ranking.server.converters import to_query, to_response
from ranking.server.errors import abort
from ranking.telemetry import stats as st

__all__ = ["AdminServicer", "RankingServicer", "add_ranking_servicer"]

log = logging.getLogger(__name__)

RANKING_SERVICE = "ranking.v1.RankingService"


class RankingServicer:
    """`Rank` over raw bytes; one code path whether tracing records or not (the call record
    makes the spans)."""

    def __init__(self, core: RankingService, budget_s: float) -> None:
        self._core = core
        self._budget_s = budget_s
        self._telemetry = core.telemetry
        #: Calls inside `Rank` now, and when the last one arrived (monotonic s): the drain
        #: before shutdown waits for both to go quiet.
        self.inflight = 0
        self.last_arrival_s = 0.0

    async def Rank(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        core = self._core
        call = core.begin_call(context.invocation_metadata)
        deadline = Deadline.from_budget(self._budget_s, context.time_remaining())
        self.last_arrival_s = deadline.started
        self.inflight += 1
        try:
            query = to_query(request, core.max_candidates, core.max_feature_names)
            call.lap(st.CONVERT)
            result = await core.rank(query, deadline, call)
            response = to_response(result, query.request_id)
            call.lap(st.RESPOND)
        except BaseException as exc:
            call.end(exc)
            await abort(context, exc)
        finally:
            self.inflight -= 1
        call.end(None)
        return response


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
            await context.abort(
                grpc.StatusCode[exc.status],
                f"bundle refused, old model still serving: {exc.message}",
            )
        return admin_pb2.ReloadModelResponse(model_version=model.version)

    async def GetStats(
        self, request: admin_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetStatsResponse:
        stats = self._core.telemetry.stats
        state = self._core.state()
        # Request counters are the whole server's (the shared table); the rest (limiter,
        # model, feature store) are the answering worker's own.
        counters = {**stats.totals(), **state.counters()}
        if self._core.flywheel is not None:  # log, drift (PSI per feature), shadow agreement
            counters.update(self._core.flywheel.metrics())
        return admin_pb2.GetStatsResponse(
            counters=counters,
            stage_mean_us=stats.stage_means_us(),
            stage_cpu_mean_us=stats.stage_means_us("cpu_ns"),
            model_version=state.model_version,
            engine=state.engine,
            workers=self._workers,
            concurrency_limit=int(state.limiter["limit"]),
        )
