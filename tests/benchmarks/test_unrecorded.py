"""`benchmarks.unrecorded` serves like `ranking serve` and records nothing: the "metrics off"
side of the R200 overhead runs must answer the same calls, or its CPU figure means nothing."""

from __future__ import annotations

import grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from tests.conftest import SmallWorld
from tests.telemetry.servers import RankingProcess, running

CALLS = 6


def _requests_total(metrics: str) -> float:
    """Sum of ranking_requests_total over its labels (0 when no call was counted)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ranking_requests_total{")
    )


def _answers(server: RankingProcess) -> list[list[str]]:
    request = pb.RankRequest(
        user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(30)], top_k=5
    )
    with grpc.insecure_channel(server.target) as ch:
        stub = ranking_pb2_grpc.RankingServiceStub(ch)
        return [[it.id for it in stub.Rank(request, timeout=10).items] for _ in range(CALLS)]


def test_unrecorded_server_answers_alike_and_counts_nothing(small_world: SmallWorld) -> None:
    recorded = RankingProcess(small_world, "--workers", "1")
    unrecorded = RankingProcess(small_world, "--workers", "1", module="benchmarks.unrecorded")
    with running(recorded, unrecorded):
        recorded.wait_serving()
        unrecorded.wait_serving()
        want = _answers(recorded)
        assert len(want[0]) == 5
        assert _answers(unrecorded) == want
        # The state is published once a second; the stats row is read at every scrape.
        assert _requests_total(recorded.scrape()) == CALLS
        assert _requests_total(unrecorded.scrape()) == 0
