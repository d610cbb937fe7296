"""A call's record: one clock read per stage boundary, every outcome counted once, CPU sampled.

Each test runs against the C record (`_counting`) and its Python reference (`reference.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ranking.errors import DeadlineExceeded, InvalidRequest, Overloaded, Unavailable
from ranking.telemetry import Stats, Telemetry, build_telemetry
from ranking.telemetry import stats as st
from ranking.telemetry.call import begin_call, new_recorder, outcome_of

NATIVE = [True, False]
try:
    import ranking.telemetry._counting  # noqa: F401
except ImportError:  # the Python reference only; test_counting.py says to build it
    NATIVE = [False]


class Clock:
    """A perf_counter_ns the test moves by hand; counts its reads."""

    def __init__(self) -> None:
        self.now = 1_000_000
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()


@pytest.fixture(params=NATIVE, ids=lambda n: "C" if n else "python")
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def telemetry(stats: Stats, native: bool, clock: Clock | None = None) -> Telemetry:
    tel = build_telemetry(stats)
    tel.recorder = new_recorder(stats, clock, native=native)
    return tel


def test_laps_time_contiguous_stages_into_sums_and_buckets(clock: Clock, native: bool) -> None:
    stats = Stats()
    call = begin_call(telemetry(stats, native, clock))
    for stage, us in ((st.CONVERT, 40), (st.ADMIT, 5), (st.FETCH, 1_200), (st.SCORE, 900)):
        clock.now += us * 1000
        call.lap(stage)
    clock.now += 60_000
    call.end(None)
    assert clock.reads == 6  # start, four laps, end: one read per boundary
    totals = stats.totals()
    assert totals["convert_ns"] == 40_000
    assert totals["fetch_ns"] == 1_200_000
    assert totals["assemble_ns"] == 0
    assert totals["total_ns"] == 2_205_000
    assert totals["ok"] == 1 and totals["requests"] == 1
    bounds, counts, sum_s = stats.histogram("fetch")
    # 1.2 ms lands in the (1.0, 1.25] ms bucket: counts are cumulative from there on.
    first = next(i for i, c in enumerate(counts) if c)
    assert bounds[first] == pytest.approx(1.25e-3)
    assert bounds[first - 1] == pytest.approx(1.0e-3)
    assert counts[-1] == 1 and sum_s == pytest.approx(1.2e-3)
    bounds, counts, _ = stats.histogram("total")
    first = next(i for i, c in enumerate(counts) if c)
    assert bounds[first] == pytest.approx(2.5e-3)  # 2.205 ms in (2.0, 2.5]


def test_a_value_on_a_bound_falls_in_that_bucket(clock: Clock, native: bool) -> None:
    stats = Stats()
    call = begin_call(telemetry(stats, native, clock))
    clock.now += 500_000  # exactly 0.5 ms: Prometheus buckets are "less than or equal"
    call.lap(st.SORT)
    assert stats.histogram("sort")[1][-1] == 0  # counted when the call ends
    call.end(None)
    bounds, counts, _ = stats.histogram("sort")
    first = next(i for i, c in enumerate(counts) if c)
    assert bounds[first] == pytest.approx(0.5e-3)


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (InvalidRequest("x"), "invalid"),
        (Overloaded("x", 5), "shed"),
        (DeadlineExceeded("x"), "deadline"),
        (Unavailable("x"), "unavailable"),
        (asyncio.CancelledError(), "cancelled"),
        (ValueError("a bug"), "internal"),
    ],
)
def test_each_outcome_is_counted_once(
    exc: BaseException | None, outcome: str, native: bool
) -> None:
    stats = Stats()
    call = begin_call(telemetry(stats, native))
    assert call.end(exc) == outcome
    call.end(None)  # a second end counts nothing
    totals = stats.totals()
    assert totals[outcome] == 1
    assert sum(totals[o] for o in st.OUTCOMES) == 1
    assert outcome_of(exc) == outcome


def test_cpu_is_read_for_one_call_in_n(native: bool) -> None:
    stats = Stats()
    tel = telemetry(stats, native)
    calls = 4 * st.CPU_SAMPLE_EVERY
    for _ in range(calls):
        call = begin_call(tel)
        sum(range(20_000))  # some CPU to measure
        call.lap(st.SCORE)
        call.end(None)
    totals = stats.totals()
    assert totals["cpu_sampled"] == 4
    assert totals["score_cpu_ns"] > 0
    means = stats.stage_means_us("cpu_ns")
    assert means["score"] == pytest.approx(totals["score_cpu_ns"] / 4 / 1e3)
    assert stats.stage_means_us()["score"] == pytest.approx(totals["score_ns"] / calls / 1e3)


def test_ranked_counts_candidates_and_each_degraded_reason(native: bool) -> None:
    stats = Stats()
    call = begin_call(telemetry(stats, native))
    call.ranked(200, 150, ["features.items_unknown", "budget.partial_scoring", "new.reason"], "v")
    call.end(None)
    totals = stats.totals()
    assert (totals["candidates"], totals["scored_rows"], totals["unscored_rows"]) == (200, 150, 50)
    assert totals["degraded"] == 1
    assert totals["degraded:features.items_unknown"] == 1
    assert totals["degraded:budget.partial_scoring"] == 1
    assert totals["degraded:other"] == 1
    assert totals["degraded:features.user_unknown"] == 0


def test_workers_rows_are_summed(tmp_path: object, native: bool) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    path = Stats.create_shared(2, folder)
    w0, w1 = Stats(2, path, 0), Stats(2, path, 1)
    for stats, n in ((w0, 3), (w1, 4)):
        tel = telemetry(stats, native)
        for _ in range(n):
            begin_call(tel).end(None)
    reader = Stats(2, path, 0)
    assert reader.totals()["ok"] == 7
    assert reader.histogram("total")[1][-1] == 7
