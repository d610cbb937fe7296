"""/metrics of a one-worker server: counts by status, histograms, the features layer's counters,
and the same figures GetStats reports."""

from __future__ import annotations

import subprocess
import urllib.request

import grpc
import pytest

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore
from ranking.features.redis_loader import load_entities
from ranking.features.redis_store import RedisFeatureStore
from ranking.server.app import App
from ranking.telemetry.stats import STAGES
from tests.conftest import SmallWorld, free_port, small_settings, small_tables
from tests.redis_servers import RedisServer
from tests.telemetry.metrics_text import buckets, families, parse, value
from tests.telemetry.servers import binary


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


def promtool_accepts(text: str) -> None:
    """Prometheus's own linter accepts the exposition (run after the server is stopped)."""
    checked = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def request(n: int, unknown: int = 0) -> pb.RankRequest:
    ids = [f"i{k}" for k in range(n)] + [f"nope{k}" for k in range(unknown)]
    return pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=i) for i in ids])


async def test_counts_histograms_and_getstats_agree(small_world: SmallWorld) -> None:
    app = App(small_settings(small_world, metrics_port=free_port(), admin_port=0))
    await app.start()
    assert app.metrics is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for _ in range(7):
                await stub.Rank(request(30, unknown=1))
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Rank(pb.RankRequest(user_id="u1"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.admin}") as admin_ch:
            got = await admin_pb2_grpc.AdminServiceStub(admin_ch).GetStats(
                admin_pb2.GetStatsRequest()
            )
        text = scrape(app.metrics.port)
    finally:
        await app.stop(0.5)
    samples = parse(text)
    assert value(samples, "ranking_requests_total", code="OK") == 7
    assert value(samples, "ranking_requests_total", code="INVALID_ARGUMENT") == 2
    assert value(samples, "ranking_requests_total", code="INTERNAL") == 0
    assert value(samples, "ranking_request_duration_seconds_count") == 9
    assert value(samples, "ranking_requests_in_flight") == 0
    assert value(samples, "ranking_candidates_total") == 7 * 31
    assert value(samples, "ranking_degraded_total", reason="features.items_unknown") == 7
    assert value(samples, "ranking_unknown_items_total") == 7
    assert value(samples, "ranking_model_info", worker="0", model_version="small-v1",
                 engine=got.engine) == 1  # fmt: skip
    assert value(samples, "ranking_limiter_limit", worker="0") == got.concurrency_limit
    request_buckets = buckets(samples, "ranking_request_duration_seconds")
    assert request_buckets[-1] == (float("inf"), 9)
    counts = [c for _, c in request_buckets]
    assert counts == sorted(counts)  # cumulative
    dense = [le for le, _ in request_buckets if 0.0005 <= le <= 0.020]
    assert len(dense) >= 25  # p99 against 10 ms reads to within ~0.5 ms
    whole = value(samples, "ranking_request_duration_seconds_sum")
    staged = sum(value(samples, "ranking_stage_duration_seconds_sum", stage=s) for s in STAGES[:-1])
    assert 0 < staged <= whole  # contiguous stages inside the call
    for stage in ("fetch", "assemble", "score", "sort", "respond"):
        assert value(samples, "ranking_stage_duration_seconds_count", stage=stage) == 7
    # GetStats reads the same table.
    assert got.counters["ok"] == 7 and got.counters["invalid"] == 2
    assert got.counters["requests"] == 9
    assert got.counters["total_ns"] / 1e9 == pytest.approx(whole)
    assert set(got.stage_mean_us) == set(STAGES)
    assert got.stage_mean_us["score"] > 0
    promtool_accepts(text)


async def test_features_counters_from_redis_through_cache_and_hedger(
    small_world: SmallWorld, redis_replicas: list[RedisServer]
) -> None:
    for server in redis_replicas:
        for entity_type, table in small_tables(small_world).items():
            load_entities(
                server.url, "t", entity_type, table.ids, table.columns, table.matrix,
                progress=False,
            )  # fmt: skip
    settings = small_settings(
        small_world,
        features={},
        redis_urls=tuple(s.url for s in redis_replicas),
        redis_namespace="t",
        metrics_port=free_port(),
        admin_port=0,
    )
    app = App(settings)
    await app.start()
    assert app.metrics is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for _ in range(5):  # the first call misses, the others hit
                await stub.Rank(request(40, unknown=2))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.admin}") as admin_ch:
            got = await admin_pb2_grpc.AdminServiceStub(admin_ch).GetStats(
                admin_pb2.GetStatsRequest()
            )
        text = scrape(app.metrics.port)
        cache = app.store
        assert isinstance(cache, CachedFeatureStore)
        hedger = cache.inner
        assert isinstance(hedger, HedgedFeatureStore)
        replicas = [r for r in hedger.replicas if isinstance(r, RedisFeatureStore)]
        assert len(replicas) == 2
        cs, hs = cache.stats, hedger.stats
        redis_reads = {r.name: r.stats.fetches for r in replicas}
    finally:
        await app.stop(0.5)
    samples = parse(text)
    by_type = {
        (t, r): value(samples, "ranking_cache_lookups_total", entity_type=t, result=r)
        for t in ("user", "item")
        for r in ("hit", "negative", "stale", "miss")
    }
    lookups = {
        r: by_type[("user", r)] + by_type[("item", r)] for r in ("hit", "negative", "stale", "miss")
    }
    assert sum(lookups.values()) == 5 * 43  # 42 candidates + the user per call
    assert lookups["miss"] == 43  # the first call
    assert lookups["negative"] == 4 * 2  # the unknown ids, cached as unknown
    assert lookups["hit"] == cs.hits - cs.negative_hits == 4 * 41
    # Split by entity type: the user is one lookup per call, hit after the first.
    assert sum(v for (t, _), v in by_type.items() if t == "user") == 5
    assert by_type[("user", "miss")] == 1 and by_type[("user", "hit")] == 4
    assert by_type[("item", "miss")] == 42
    assert value(samples, "ranking_cache_inserts_total") == cs.inserts == 43
    assert value(samples, "ranking_hedge_reads_total") == hs.reads == 1
    assert value(samples, "ranking_hedges_sent_total") == hs.hedges_sent
    delay = value(samples, "ranking_hedge_delay_seconds", worker="0")
    assert settings.hedge.delay_floor_ms / 1e3 <= delay <= settings.hedge.delay_cap_ms / 1e3
    for name, reads in redis_reads.items():
        assert value(samples, "ranking_store_reads_total", replica=name) == reads
        assert value(samples, "ranking_store_errors_total", replica=name) == 0
    assert sum(redis_reads.values()) == 1 + hs.hedges_sent
    assert {"ranking_store_timeouts_total", "ranking_hedge_budget_exhausted_total"} <= families(
        text
    )
    assert got.counters["cache_hits"] == cs.hits
    assert got.counters["hedge_reads"] == 1
