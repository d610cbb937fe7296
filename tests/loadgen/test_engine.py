"""The load generator against real gRPC servers on free ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from ranking.api.v1 import ranking_pb2, ranking_pb2_grpc
from ranking.loadgen import (
    CandidateCount,
    LoadConfig,
    LoadGenError,
    RankPayload,
    RequestMix,
    decode_histogram,
    run_load,
)
from ranking.loadgen._engine import Recorder
from ranking.loadgen._report import BulkHistogram, encode_histogram, new_histogram

SMALL = RankPayload(
    RequestMix(n_users=50, n_items=500, candidates=CandidateCount.fixed(20), pool_size=64)
)


async def test_open_loop_sends_the_schedule_and_counts_every_response(floor_target: str) -> None:
    cfg = LoadConfig(
        target=floor_target,
        payload=SMALL,
        rate_rps=200,
        arrivals="constant",
        duration_s=1.0,
        warmup_s=0.2,
        deadline_ms=2000,
    )
    report = await run_load(cfg)
    print(report.summary())
    assert report.sent == report.scheduled == 160
    assert report.warmup_sent == 40
    assert report.status_counts == {"OK": 160}
    assert report.latency.count == report.service_time.count == 160
    assert report.latency_histogram().get_total_count() == 160
    assert decode_histogram(report.histograms["send_lag"]).get_total_count() == 160
    # Timed from the earlier of intended and actual send: never shorter than service time.
    assert report.latency.max_ms >= report.service_time.max_ms
    d = report.as_dict()
    for key in (
        "latency",
        "service_time",
        "send_lag",
        "status_counts",
        "valid",
        "problems",
        "achieved_rps",
        "target_rps",
        "histograms",
        "config",
    ):
        assert key in d


async def test_max_requests_bounds_the_run(floor_target: str) -> None:
    cfg = LoadConfig(
        target=floor_target, payload=SMALL, rate_rps=500, duration_s=10.0, max_requests=30
    )
    started = time.monotonic()
    report = await run_load(cfg)
    assert report.sent == 30 and report.ok == 30
    assert time.monotonic() - started < 5


async def test_closed_loop_keeps_n_in_flight(floor_target: str) -> None:
    cfg = LoadConfig(
        target=floor_target,
        payload=SMALL,
        mode="closed",
        concurrency=4,
        duration_s=0.5,
        max_requests=200,
    )
    report = await run_load(cfg)
    print(report.summary())
    assert report.mode == "closed"
    assert report.sent == report.ok == 200
    assert report.throughput_rps > 0
    assert report.valid


async def test_unreachable_target_fails_fast() -> None:
    cfg = LoadConfig(target="127.0.0.1:1", payload=SMALL, duration_s=1, connect_timeout_s=0.3)
    with pytest.raises(LoadGenError):
        await run_load(cfg)


def test_recorder_times_from_the_intended_send() -> None:
    cfg = LoadConfig(payload=SMALL)
    rec = Recorder(cfg, t0=100.0)
    # Due at 100.0, sent 300 ms late (the client was held up), answered 1 ms after sending.
    rec.on_sent(100.0, 100.3)
    rec.on_done(100.0, 100.3, 100.301, "OK", ranking_pb2.RankResponse().SerializeToString())
    # Sent 0.5 ms early (timer slack): timed from the real, earlier send.
    rec.on_sent(101.0, 100.9995)
    rec.on_done(101.0, 100.9995, 101.0015, "OK", b"")
    sample = rec.sample(window_s=2.0, cpu_s=0.0)
    latency, service = decode_histogram(sample.latency), decode_histogram(sample.service)
    assert latency.get_max_value() == pytest.approx(301_000, rel=0.001)
    assert service.get_max_value() == pytest.approx(2_000, rel=0.001)
    assert latency.get_min_value() == pytest.approx(2_000, rel=0.001)
    assert decode_histogram(sample.send_lag).get_max_value() == pytest.approx(300_000, rel=0.001)


class _StallingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Answers at once, except one call made after `stall_after_s` that sleeps `stall_s`."""

    def __init__(self, stall_after_s: float, stall_s: float) -> None:
        self._start = time.monotonic()
        self._stall_after_s = stall_after_s
        self._stall_s = stall_s
        self._stalled = False

    def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.ServicerContext
    ) -> ranking_pb2.RankResponse:
        if not self._stalled and time.monotonic() - self._start > self._stall_after_s:
            self._stalled = True
            time.sleep(self._stall_s)
        return ranking_pb2.RankResponse(model_version="stall")


@pytest.fixture
def stalling_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(_StallingServicer(0.6, 0.3), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        done = server.stop(None)
        assert isinstance(done, threading.Event)
        done.wait(5)


async def test_stalled_server_is_not_hidden_by_coordinated_omission(stalling_target: str) -> None:
    """The classic trap: a client that waits for each answer before sending the next (here
    max_in_flight=1) sees one slow call when the server stalls for 300 ms, and its service
    times hide the stall; timing from the intended send charges the ~60 requests that were due
    during the stall with their wait, as users arriving on schedule would have felt it."""
    cfg = LoadConfig(
        target=stalling_target,
        payload=SMALL,
        rate_rps=200,
        arrivals="constant",
        duration_s=1.5,
        max_in_flight=1,
        deadline_ms=5000,
    )
    report = await run_load(cfg)
    print(report.summary())
    assert report.ok == report.sent == 300
    assert report.service_time.p90_ms < 50  # the stall shows in one service time only...
    assert report.service_time.max_ms > 250
    assert report.latency.p90_ms > 100  # ...but in every request that was due meanwhile
    assert report.send_lag.max_ms > 250
    assert not report.valid
    assert any("fell behind" in p for p in report.problems)


async def test_several_client_processes_merge_into_one_report(floor_target: str) -> None:
    cfg = LoadConfig(
        target=floor_target,
        payload=SMALL,
        rate_rps=100,
        arrivals="constant",
        duration_s=1.0,
        processes=2,
        channels_per_process=2,
        uvloop=False,
    )
    report = await run_load(cfg)
    print(report.summary())
    assert report.processes == 2
    assert report.sent == report.scheduled == 100
    assert report.ok == 100
    assert report.latency_histogram().get_total_count() == 100


def test_bulk_histogram_holds_what_per_value_recording_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Across flushes (a small FLUSH_AT forces several) and out-of-range values alike."""
    monkeypatch.setattr(BulkHistogram, "FLUSH_AT", 100)
    values = np.random.default_rng(0).lognormal(7, 2, 1234).astype(np.int64) + 1
    values[::97] = 500_000_000  # above the histogram's range: dropped by both
    bulk, one_by_one = BulkHistogram(), new_histogram()
    for v in values.tolist():
        bulk.add(v)
        one_by_one.record_value(v)
    assert encode_histogram(bulk.histogram()) == encode_histogram(one_by_one)
    assert bulk.histogram().get_total_count() == one_by_one.get_total_count() > 1000
