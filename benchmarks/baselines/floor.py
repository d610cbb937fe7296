"""The floor: a `grpc.aio` server whose Rank does nothing but answer a constant response.

It runs on the same stack as the service (grpc.aio, protobuf upb, uvloop when installed), so
the latency it shows is what gRPC, the kernel and the client cost before any ranking work.

    python -m benchmarks.baselines.floor --port 50061 [--response-items 200]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ranking.api.v1 import ranking_pb2, ranking_pb2_grpc

__all__ = ["FloorServicer", "main", "start_floor_server"]


class FloorServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Answers every Rank with one prebuilt response (echoing only the request id)."""

    def __init__(self, response_items: int = 0) -> None:
        self._response = ranking_pb2.RankResponse(model_version="floor")
        self._response.items.extend(
            ranking_pb2.RankedItem(id=f"i{j}", score=0.0) for j in range(response_items)
        )

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        if not request.request_id:
            return self._response
        response = ranking_pb2.RankResponse()
        response.CopyFrom(self._response)
        response.request_id = request.request_id
        return response


async def start_floor_server(
    port: int = 0, host: str = "127.0.0.1", response_items: int = 0
) -> tuple[grpc.aio.Server, int]:
    """Start the floor server in the running loop; returns it and the bound port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(FloorServicer(response_items), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound


async def _serve(port: int, host: str, response_items: int) -> None:
    server, bound = await start_floor_server(port, host, response_items)
    print(f"floor server listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baselines.floor", description=__doc__)
    p.add_argument("--port", type=int, default=50061)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--response-items", type=int, default=0, help="items in the constant answer")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    coro = _serve(args.port, args.host, args.response_items)
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.run(coro)
            return
        except ImportError:
            pass
    asyncio.run(coro)


if __name__ == "__main__":
    main()
