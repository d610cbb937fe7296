"""The command-line client: `ranking rank` (send a Rank request, print the ranked list as a
table) and `ranking health` (one gRPC health check, retried while the server is busy); the
channel they dial (`open_channel`: plaintext, or TLS with `ClientTls`) and the service config
for clients of several replicas (`SERVICE_CONFIG`)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc as pb_grpc
from ranking.demo.sizes import DEMO
from ranking.tls import ClientTls, TlsError, channel_credentials

__all__ = [
    "SERVICE_CONFIG",
    "balanced_options",
    "build_request",
    "check_health",
    "demo_request",
    "open_channel",
    "rank_command",
]

#: gRPC service config for a client of several replicas (README "Deploying it"): round_robin
#: over every address the target resolves to (a headless Service's DNS name lists every ready
#: pod), client-side health checking so a replica that starts draining (NOT_SERVING) gets no new
#: calls, and one retry, on another replica, of a call refused before it ran (UNAVAILABLE; or
#: CANCELLED by a busy worker's backlog cap), throttled so retries cannot pile onto an overload.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "ranking.v1.RankingService"},
    "methodConfig": [
        {
            "name": [{"service": "ranking.v1.RankingService"}],
            "retryPolicy": {
                "maxAttempts": 2,
                "initialBackoff": "0.001s",
                "maxBackoff": "0.005s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}


def balanced_options() -> list[tuple[str, Any]]:
    """Channel options that apply `SERVICE_CONFIG` (for a target such as
    `dns:///ranking-headless.NAMESPACE.svc.cluster.local:50051`)."""
    return [("grpc.service_config", json.dumps(SERVICE_CONFIG)), ("grpc.enable_retries", 1)]


def open_channel(
    target: str, tls: ClientTls | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to `target`: plaintext, or TLS with `tls` (raises TlsError naming a
    file it cannot read)."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    opts = [*options, *tls.channel_options()]
    return grpc.secure_channel(target, channel_credentials(tls), options=opts)


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
    tls: ClientTls | None = None,
) -> int:
    """Send `request` (`repeat` times on one channel); print the list and the latency."""
    try:
        channel = open_channel(target, tls)
    except TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with channel:
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


def check_health(
    target: str, service: str, timeout_s: float, tls: ClientTls | None = None
) -> tuple[str, int | None]:
    """(status code name, serving status or None) of one health check within `timeout_s`,
    over TLS when `tls` is given (an unreadable TLS file: its message and None).

    A busy server may refuse the probe (CANCELLED from gRPC's backlog cap, RESOURCE_EXHAUSTED
    from the limiter): that is retried on the same connection until the timeout, so a live but
    loaded worker passes and a wedged one, which never takes a call, fails.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = open_channel(target, tls)
    except TlsError as exc:
        return str(exc), None
    busy = (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    with channel:
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
