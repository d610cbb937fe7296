"""A real Prometheus scrapes a two-worker server's one /metrics: its counts are the calls sent."""

from __future__ import annotations

import bisect
import json
import time
from pathlib import Path

import grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.telemetry.stats import INDEX, REQUEST_BUCKETS_S, Stats
from tests.conftest import SmallWorld
from tests.telemetry.servers import DASHBOARD, Prometheus, RankingProcess, binary, running


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


CHANNELS = 20  # fresh connections: SO_REUSEPORT spreads them over both workers
CALLS_PER_CHANNEL = 5
INVALID = 3


def test_prometheus_counts_every_call_of_both_workers(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    binary("prometheus")
    shared = tmp_path / "server-tmp"  # where the parent puts the workers' shared stats file
    shared.mkdir()
    server = RankingProcess(small_world, "--workers", "2", env={"TMPDIR": str(shared)})
    prom = Prometheus(tmp_path, [f"127.0.0.1:{server.metrics_port}"])
    with running(server, prom):
        server.wait_serving()
        prom.wait_ready()
        # Scraped once before any call, so rate() below has a sample from before the calls.
        assert prom.wait_for('up{job="ranking"}', 1.0) == 1.0
        assert prom.wait_for("sum(ranking_requests_total)", 0.0) == 0.0

        slowest = 0.0
        request = pb.RankRequest(
            user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(50)], top_k=5
        )
        for _ in range(CHANNELS):
            with grpc.insecure_channel(
                server.target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                stub = ranking_pb2_grpc.RankingServiceStub(ch)
                for _ in range(CALLS_PER_CHANNEL):
                    started = time.perf_counter()
                    assert len(stub.Rank(request, timeout=10).items) == 5
                    slowest = max(slowest, time.perf_counter() - started)
        with grpc.insecure_channel(server.target) as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for _ in range(INVALID):
                try:
                    stub.Rank(pb.RankRequest(user_id="u1"), timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                else:
                    raise AssertionError("a request without candidates was answered")

        ok = CHANNELS * CALLS_PER_CHANNEL
        total = ok + INVALID
        assert prom.wait_for('ranking_requests_total{code="OK"}', ok) == ok
        assert prom.wait_for('ranking_requests_total{code="INVALID_ARGUMENT"}', INVALID) == INVALID
        assert prom.scalar("ranking_request_duration_seconds_count") == total
        # Both workers served some of them: the endpoint really sums two rows.
        (stats_file,) = shared.glob("ranking-*/ranking-stats-*.bin")
        per_worker = [Stats(2, stats_file, w).row[INDEX["requests"]] for w in range(2)]
        assert min(per_worker) > 0 and sum(per_worker) == total, per_worker
        assert prom.scalar('ranking_stage_duration_seconds_count{stage="score"}') == ok
        # Both workers publish their state (one model_info series each).
        assert prom.scalar("count(ranking_model_info)") == 2.0
        assert prom.scalar('count(ranking_model_info{model_version="small-v1"})') == 2.0
        assert prom.scalar("ranking_worker_restarts_total") == 0.0

        p99 = prom.scalar(
            "histogram_quantile(0.99, sum(rate(ranking_request_duration_seconds_bucket[1m]))"
            " by (le))"
        )
        assert p99 is not None
        # Within the histogram's range, and no later than the bucket the slowest call (as the
        # client saw it, so including the network) falls in.
        ceiling = REQUEST_BUCKETS_S[min(bisect.bisect_left(REQUEST_BUCKETS_S, slowest),
                                        len(REQUEST_BUCKETS_S) - 1)]  # fmt: skip
        assert 0.0 < p99 <= ceiling, (p99, slowest)
        p50 = prom.scalar(
            'histogram_quantile(0.5, sum(rate(ranking_stage_duration_seconds_bucket{stage="score"}'
            "[1m])) by (le))"
        )
        assert p50 is not None and 0.0 < p50 <= p99

        # Every dashboard query runs on this Prometheus; those for what this server has (no
        # cache or hedging: the in-process store) return data.
        answered = {}
        for title, expr in dashboard_queries():
            result = prom.query(expr.replace("$__rate_interval", "1m").replace("$job", "ranking"))
            answered[title] = answered.get(title, False) or bool(result)
        for title in (
            "Request rate by status",
            "Request latency p50 / p99 / p99.9 (server)",
            "p99 by stage",
            "p50 by stage",
            "Shed rate (share of calls)",
            "Concurrency limit and in flight",
            "Model version and engine",
        ):
            assert answered[title], title
    assert server.proc.returncode == 0
