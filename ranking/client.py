"""The command-line client: `ranking rank` (send a Rank request, print the ranked list as a
table) and `ranking health` (one gRPC health check, retried while the server is busy)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

import grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc as pb_grpc
from ranking.demo.sizes import DEMO

__all__ = ["build_request", "check_health", "demo_request", "rank_command"]


def build_request(
    user_id: str,
    candidate_ids: Sequence[str],
    context: dict[str, float] | None = None,
    top_k: int = 0,
    request_id: str = "",
) -> pb.RankRequest:
    return pb.RankRequest(
        request_id=request_id,
        user_id=user_id,
        candidates=[pb.Candidate(id=c) for c in candidate_ids],
        context=context or {},
        top_k=top_k,
    )


def demo_request(
    n_candidates: int,
    top_k: int,
    seed: int,
    n_users: int = DEMO.n_users,
    n_items: int = DEMO.n_items,
) -> pb.RankRequest:
    """A request for the demo world (same sizes as the server's): a user, items, a context."""
    from ranking.demo.world import example_request, make_world

    example = example_request(make_world(n_users, n_items), seed=seed, candidates=n_candidates)
    return build_request(example.user_id, example.candidate_ids, example.context, top_k)


def rank_command(
    target: str,
    request: pb.RankRequest,
    *,
    repeat: int = 1,
    deadline_ms: float = 1000.0,
    show: int = 20,
) -> int:
    """Send `request` (`repeat` times on one channel); print the list and the latency."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RankingServiceStub(channel)
        latencies = []
        response = None
        for _ in range(max(repeat, 1)):
            started = time.perf_counter()
            try:
                response = stub.Rank(request, timeout=deadline_ms / 1e3)
            except grpc.RpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 2
            latencies.append((time.perf_counter() - started) * 1e3)
    assert response is not None
    print(f"model {response.model_version}  items {len(response.items)}", end="")
    if response.degraded_reasons:
        print(f"  degraded: {', '.join(response.degraded_reasons)}", end="")
    print()
    print(f"{'rank':>4}  {'id':<24} {'score':>12}")
    for i, item in enumerate(response.items[:show], 1):
        score = "unscored" if item.unscored else f"{item.score:12.6f}"
        print(f"{i:>4}  {item.id:<24} {score:>12}")
    if len(response.items) > show:
        print(f"      ... {len(response.items) - show} more")
    if repeat > 1:
        warm = latencies[1:] if len(latencies) > 2 else latencies
        q = statistics.quantiles(warm, n=100) if len(warm) >= 2 else warm * 99
        print(
            f"{repeat} calls: median {statistics.median(warm):.3f} ms, "
            f"p90 {q[89]:.3f} ms, p99 {q[98]:.3f} ms (first call excluded)"
        )
    else:
        print(f"latency {latencies[0]:.3f} ms")
    return 0


def check_health(target: str, service: str, timeout_s: float) -> tuple[str, int | None]:
    """(status code name, serving status or None) of one health check within `timeout_s`.

    A busy server may refuse the probe (CANCELLED from gRPC's backlog cap, RESOURCE_EXHAUSTED
    from the limiter): that is retried on the same connection until the timeout, so a live but
    loaded worker passes and a wedged one, which never takes a call, fails.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    busy = (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=left)
                return "OK", int(response.status)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code not in busy or deadline - time.monotonic() <= pause:
                    return str(code.name), None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
