"""The limit algorithms, fed synthetic samples: no clock, no limiter."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from ranking.limits import AIMDLimit, FixedLimit, Gradient2Limit, Limit, VegasLimit

MS = 1_000_000
BASE_RTT = 2 * MS


def saturated(limit: Limit, rtt_ns: int, samples: int) -> list[int]:
    """Feed `samples` samples with the limit fully in use; return the limit after each."""
    seen = []
    for _ in range(samples):
        limit.on_sample(0, rtt_ns, limit.limit, False)
        seen.append(limit.limit)
    return seen


DELAY_BASED: list[Callable[[], Limit]] = [
    lambda: VegasLimit(initial_limit=10, min_limit=2, max_limit=100),
    lambda: Gradient2Limit(initial_limit=10, min_limit=2, max_limit=100),
]
DELAY_IDS = ["vegas", "gradient2"]


@pytest.mark.parametrize("make", DELAY_BASED, ids=DELAY_IDS)
def test_delay_based_limit_grows_to_max_while_rtt_stays_at_no_load(
    make: Callable[[], Limit],
) -> None:
    limit = make()
    seen = saturated(limit, BASE_RTT, 400)
    assert seen[-1] == 100
    assert seen == sorted(seen), "the limit must never fall while rtt is flat"


@pytest.mark.parametrize("make", DELAY_BASED, ids=DELAY_IDS)
def test_delay_based_limit_shrinks_when_rtt_rises(make: Callable[[], Limit]) -> None:
    limit = make()
    saturated(limit, BASE_RTT, 40)
    grown = limit.limit
    assert grown > 10
    seen = saturated(limit, 4 * BASE_RTT, 100)
    assert seen[-1] <= grown / 2
    assert seen == sorted(seen, reverse=True), "queueing must never raise the limit"


@pytest.mark.parametrize("make", DELAY_BASED, ids=DELAY_IDS)
def test_delay_based_limit_holds_while_mostly_idle(make: Callable[[], Limit]) -> None:
    limit = make()
    for _ in range(200):
        limit.on_sample(0, BASE_RTT, 4, False)  # 4 in flight < half of 10
    assert limit.limit == 10


def test_gradient2_settles_near_cores_plus_queue_size_on_a_two_core_queue() -> None:
    # Two cores and a FIFO: with `inflight` requests in flight, rtt = base * inflight / 2.
    # The baseline is learned unloaded, then the service is saturated.
    limit = Gradient2Limit(initial_limit=4, min_limit=1, max_limit=100, queue_size=4)
    for _ in range(20):
        limit.on_sample(0, BASE_RTT, 1, False)
    seen = []
    for _ in range(100):
        inflight = limit.limit
        limit.on_sample(0, BASE_RTT * max(2, inflight) // 2, inflight, False)
        seen.append(limit.limit)
    # Little's law: 2 served + 4 queued; the long-term average drifts up only slowly.
    assert set(seen[-50:]) <= set(range(5, 9))


def test_gradient2_recovers_quickly_once_an_overload_ends() -> None:
    limit = Gradient2Limit(initial_limit=20, min_limit=2, max_limit=100)
    saturated(limit, BASE_RTT, 50)
    saturated(limit, 10 * BASE_RTT, 300)  # overload: long_rtt drifts toward 20 ms
    assert limit.long_rtt_ns > 5 * BASE_RTT
    shrunk = limit.limit
    assert shrunk <= 15
    saturated(limit, BASE_RTT, 60)
    # Without the 10% cut, an average over 600 samples would need hundreds of samples.
    assert limit.long_rtt_ns < 2 * BASE_RTT
    assert limit.limit >= shrunk + 30


def test_gradient2_takes_a_lasting_rtt_rise_as_the_new_normal() -> None:
    # By design (and unlike Vegas): the baseline is an average over ~long_window samples, so
    # latency that stays high for that long stops counting as queueing. A slower model is
    # accepted; so, after about a window, is a sustained overload whose rtt is pinned.
    limit = Gradient2Limit(initial_limit=20, min_limit=2, max_limit=100, long_window=600)
    saturated(limit, BASE_RTT, 50)
    seen = saturated(limit, 10 * BASE_RTT, 1500)
    assert min(seen) <= 10
    assert seen[-1] == 100


def test_gradient2_backs_off_on_drops_and_keeps_them_out_of_the_baseline() -> None:
    limit = Gradient2Limit(initial_limit=50, min_limit=2, max_limit=100)
    saturated(limit, BASE_RTT, 20)
    baseline = limit.long_rtt_ns
    before = limit.limit
    for _ in range(10):
        limit.on_sample(0, 50 * BASE_RTT, limit.limit, True)  # timed out at a deadline
    assert limit.long_rtt_ns == baseline
    assert limit.limit < before * 0.75


def test_vegas_backs_off_on_a_drop_even_at_no_load_rtt() -> None:
    limit = VegasLimit(initial_limit=50, min_limit=2, max_limit=100)
    limit.on_sample(0, BASE_RTT, 50, False)  # learns rtt_noload
    limit.on_sample(0, BASE_RTT, 50, True)
    assert limit.limit == 49


def test_vegas_probe_relearns_a_slower_no_load_rtt() -> None:
    # The model got slower for good: without probing, the old minimum would make every
    # request look queued and pin the limit at min_limit.
    limit = VegasLimit(initial_limit=10, min_limit=2, max_limit=100, probe_multiplier=5)
    saturated(limit, BASE_RTT, 3)
    seen = saturated(limit, 3 * BASE_RTT, 300)
    assert min(seen) < 10
    assert limit.rtt_noload_ns == 3 * BASE_RTT
    assert seen[-1] == 100


def test_vegas_is_deterministic_for_a_given_rng_seed() -> None:
    def run(seed: int) -> list[int]:
        limit = VegasLimit(initial_limit=10, probe_multiplier=2, rng=random.Random(seed))
        samples = random.Random(99)
        out = []
        for _ in range(500):
            limit.on_sample(0, samples.randint(MS, 5 * MS), limit.limit, False)
            out.append(limit.limit)
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)  # the jitter really moves the probes


def test_aimd_adds_one_per_sample_and_backs_off_multiplicatively_on_drops() -> None:
    limit = AIMDLimit(initial_limit=20, min_limit=2, max_limit=100, backoff_ratio=0.9)
    limit.on_sample(0, BASE_RTT, 20, False)
    assert limit.limit == 21
    limit.on_sample(0, BASE_RTT, 5, False)  # mostly idle: no evidence for more
    assert limit.limit == 21
    limit.on_sample(0, BASE_RTT, 21, True)
    assert limit.limit == 18  # floor(21 * 0.9)
    limit.on_sample(0, BASE_RTT, 18, True)
    assert limit.limit == 16


def test_aimd_treats_a_sample_over_the_timeout_as_a_drop() -> None:
    limit = AIMDLimit(initial_limit=20, min_limit=2, max_limit=100, timeout_ms=50)
    limit.on_sample(0, 50 * MS, 20, False)
    assert limit.limit == 21
    limit.on_sample(0, 50 * MS + 1, 21, False)
    assert limit.limit == 18


def test_aimd_recovers_linearly_after_backing_off_to_its_floor() -> None:
    limit = AIMDLimit(initial_limit=20, min_limit=3, max_limit=100)
    for _ in range(50):
        limit.on_sample(0, BASE_RTT, limit.limit, True)
    assert limit.limit == 3
    saturated(limit, BASE_RTT, 10)
    assert limit.limit == 13


def test_fixed_limit_never_moves() -> None:
    limit = FixedLimit(7)
    limit.on_sample(0, 100 * BASE_RTT, 7, True)
    saturated(limit, 1, 50)
    assert limit.limit == 7


ALL: list[Callable[[], Limit]] = [
    lambda: VegasLimit(initial_limit=10, min_limit=3, max_limit=40),
    lambda: Gradient2Limit(initial_limit=10, min_limit=3, max_limit=40),
    lambda: AIMDLimit(initial_limit=10, min_limit=3, max_limit=40),
]


@pytest.mark.parametrize("make", ALL, ids=["vegas", "gradient2", "aimd"])
def test_limit_stays_within_bounds_under_erratic_samples(make: Callable[[], Limit]) -> None:
    limit = make()
    rng = random.Random(7)
    seen = set()
    for _ in range(5000):
        rtt = rng.choice([0, 1, MS, 2 * MS, 50 * MS, 10**12])
        limit.on_sample(0, rtt, rng.randint(0, 60), rng.random() < 0.1)
        seen.add(limit.limit)
    assert min(seen) >= 3 and max(seen) <= 40
    assert {3, 40} & seen, "erratic samples should push the limit to a bound at least once"


def test_integer_limit_follows_each_sample_within_bounds() -> None:
    limit = AIMDLimit(initial_limit=10, min_limit=2, max_limit=12)
    seen = [limit.limit, *saturated(limit, BASE_RTT, 5)]  # 11, 12, then held at max
    limit.on_sample(0, BASE_RTT, 12, True)
    seen.append(limit.limit)
    assert seen == [10, 11, 12, 12, 12, 12, 10]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: FixedLimit(0), ValueError),
        (lambda: FixedLimit(True), TypeError),
        (lambda: VegasLimit(initial_limit=1, min_limit=2), ValueError),
        (lambda: VegasLimit(max_limit=0), ValueError),
        (lambda: VegasLimit(smoothing=0.0), ValueError),
        (lambda: VegasLimit(smoothing=1.5), ValueError),
        (lambda: VegasLimit(alpha_factor=7, beta_factor=6), ValueError),
        (lambda: VegasLimit(probe_multiplier=0), ValueError),
        (lambda: Gradient2Limit(initial_limit=300, max_limit=256), ValueError),
        (lambda: Gradient2Limit(queue_size=-1), ValueError),
        (lambda: Gradient2Limit(long_window=0), ValueError),
        (lambda: Gradient2Limit(smoothing=float("nan")), ValueError),
        (lambda: Gradient2Limit(initial_limit=2.5), TypeError),  # type: ignore[arg-type]
        (lambda: AIMDLimit(backoff_ratio=1.0), ValueError),
        (lambda: AIMDLimit(backoff_ratio=0.4), ValueError),
        (lambda: AIMDLimit(timeout_ms=0), ValueError),
    ],
)
def test_constructors_reject_out_of_range_parameters(
    make: Callable[[], Limit], error: type[Exception]
) -> None:
    with pytest.raises(error):
        make()


def test_every_algorithm_keeps_the_limit_protocol() -> None:
    """By behaviour, not attribute names: `limit` is an int >= 1 that a drop never raises, and
    `on_sample` takes the protocol's four arguments by keyword."""
    for limit in (FixedLimit(), AIMDLimit(), VegasLimit(), Gradient2Limit()):
        before = limit.limit
        assert isinstance(before, int) and not isinstance(before, bool) and before >= 1
        limit.on_sample(start_ns=0, rtt_ns=BASE_RTT, inflight=before, dropped=True)
        assert isinstance(limit.limit, int) and 1 <= limit.limit <= before
        saturated(limit, BASE_RTT, 50)
        assert isinstance(limit.limit, int) and limit.limit >= 1
    fixed = FixedLimit(7)
    saturated(fixed, BASE_RTT, 10)
    fixed.on_sample(0, 50 * BASE_RTT, 7, True)
    assert fixed.limit == 7
