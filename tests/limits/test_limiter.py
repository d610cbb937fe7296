"""The admission limiter, with an injected clock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from ranking.limits import (
    LIMITER_KINDS,
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    Limit,
    Limiter,
    Token,
    VegasLimit,
    build_limit,
    build_limiter,
)

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000 * MS

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


@dataclass
class RecordingLimit:
    """A `Limit` that records its samples and holds a settable limit."""

    limit: int = 3
    samples: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def on_sample(self, start_ns: int, rtt_ns: int, inflight: int, dropped: bool) -> None:
        self.samples.append((start_ns, rtt_ns, inflight, dropped))


def acquire(limiter: Limiter) -> Token:
    token = limiter.try_acquire()
    assert token is not None
    return token


def test_rejects_at_the_limit_and_admits_again_after_a_release() -> None:
    limiter = Limiter(FixedLimit(2), clock=FakeClock())
    first, _second = acquire(limiter), acquire(limiter)
    assert limiter.try_acquire() is None
    assert limiter.try_acquire() is None
    first.success()
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None
    assert (limiter.accepted, limiter.rejected, limiter.inflight) == (3, 3, 2)


def test_feeds_the_limit_rtt_and_inflight_at_acquire_and_ignore_feeds_nothing() -> None:
    clock = FakeClock()
    algorithm = RecordingLimit(limit=5)
    limiter = Limiter(algorithm, clock=clock)
    a = acquire(limiter)
    clock.advance_ms(1)
    b = acquire(limiter)
    c = acquire(limiter)
    clock.advance_ms(4)
    a.success()
    clock.advance_ms(1)
    b.dropped()
    c.ignore()
    start = 1_000 * MS
    assert algorithm.samples == [
        (start, 5 * MS, 1, False),
        (start + 1 * MS, 5 * MS, 2, True),
    ]


def test_the_limiter_follows_the_limit_after_each_sample() -> None:
    algorithm = RecordingLimit(limit=1)
    limiter = Limiter(algorithm, clock=FakeClock())
    token = acquire(limiter)
    assert limiter.try_acquire() is None
    algorithm.limit = 3
    token.success()
    assert limiter.limit == 3
    acquire(limiter), acquire(limiter), acquire(limiter)
    assert limiter.try_acquire() is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("success", "success"),
        ("success", "dropped"),
        ("dropped", "ignore"),
        ("ignore", "success"),
        ("ignore", "ignore"),
    ],
)
def test_a_token_released_twice_counts_once(first: str, second: str) -> None:
    algorithm = RecordingLimit(limit=5)
    limiter = Limiter(algorithm, clock=FakeClock())
    token = acquire(limiter)
    acquire(limiter)
    getattr(token, first)()
    assert token.released
    getattr(token, second)()
    getattr(token, second)()
    assert limiter.inflight == 1
    assert limiter.succeeded + limiter.dropped + limiter.ignored == 1
    assert len(algorithm.samples) == (0 if first == "ignore" else 1)


def test_counters_add_up_over_a_random_mix_of_outcomes() -> None:
    clock = FakeClock()
    limiter = Limiter(AIMDLimit(initial_limit=8, min_limit=2, max_limit=32), clock=clock)
    rng = random.Random(3)
    held: list[Token] = []
    attempts = 0
    for _ in range(5000):
        clock.advance_ms(rng.random())
        if rng.random() < 0.55:
            attempts += 1
            token = limiter.try_acquire()
            if token is not None:
                held.append(token)
        elif held:
            token = held.pop(rng.randrange(len(held)))
            rng.choice([token.success, token.success, token.dropped, token.ignore])()
            if rng.random() < 0.2:
                token.success()  # a stray second release
    assert limiter.accepted + limiter.rejected == attempts
    assert limiter.rejected > 0 and limiter.dropped > 0 and limiter.ignored > 0
    assert limiter.inflight == len(held)
    assert limiter.accepted == (
        limiter.succeeded + limiter.dropped + limiter.ignored + limiter.inflight
    )


def test_a_burst_over_the_limit_is_shed_and_the_limit_recovers_after() -> None:
    clock = FakeClock()
    algorithm = Gradient2Limit(initial_limit=10, min_limit=2, max_limit=50)
    limiter = Limiter(algorithm, clock=clock)

    # Warm up at the no-load rtt with the limit in use: the limit climbs.
    for _ in range(10):
        tokens = [acquire(limiter) for _ in range(limiter.limit)]
        clock.advance_ms(2)
        for token in tokens:
            token.success()
    warm = limiter.limit
    assert warm > 10

    # A burst of 100 at once: exactly `limit` admitted, the rest shed without waiting; the
    # admitted ones queue on the cores, so their rtt grows with their place in the queue.
    for _ in range(5):
        before, rejected = limiter.limit, limiter.rejected
        admitted = [t for t in (limiter.try_acquire() for _ in range(100)) if t is not None]
        assert len(admitted) == before
        assert limiter.rejected - rejected == 100 - before
        for token in admitted:
            clock.advance_ms(2)
            token.success()
    assert limiter.limit < warm
    overloaded = limiter.limit

    # Latency back to normal: the limit climbs again.
    for _ in range(40):
        tokens = [acquire(limiter) for _ in range(limiter.limit)]
        clock.advance_ms(2)
        for token in tokens:
            token.success()
    assert limiter.limit >= warm > overloaded
    assert limiter.inflight == 0


async def test_concurrent_tasks_over_the_limit_are_rejected_at_once() -> None:
    limiter = Limiter(FixedLimit(5))
    outcomes: list[str] = []

    async def handle() -> None:
        token = limiter.try_acquire()
        if token is None:
            outcomes.append("shed")
            return
        try:
            await asyncio.sleep(0.01)
        finally:
            token.success()
        outcomes.append("served")

    await asyncio.gather(*(handle() for _ in range(20)))
    assert outcomes.count("served") == 5
    assert outcomes[:15] == ["shed"] * 15, "shed requests must not wait for the served ones"
    assert (limiter.inflight, limiter.accepted, limiter.rejected) == (0, 5, 15)
    await asyncio.gather(*(handle() for _ in range(3)))
    assert outcomes.count("served") == 8


def test_off_admits_everything_and_still_counts() -> None:
    limiter = build_limiter("off", clock=FakeClock())
    tokens = [acquire(limiter) for _ in range(10_000)]
    assert not limiter.enabled and limiter.limit == 0
    for token in tokens[:100]:
        token.dropped()
    assert (limiter.accepted, limiter.rejected, limiter.dropped, limiter.inflight) == (
        10_000,
        0,
        100,
        9_900,
    )


def test_retry_hint_follows_recent_rtt_within_its_bounds() -> None:
    clock = FakeClock()
    limiter = Limiter(FixedLimit(4), clock=clock, retry_after_min_ms=2, retry_after_max_ms=100)
    assert limiter.retry_after_ms() == 2  # nothing measured yet
    for _ in range(50):
        token = acquire(limiter)
        clock.advance_ms(10)
        token.success()
    assert limiter.smoothed_rtt_ns == 10 * MS
    assert limiter.retry_after_ms() == 20  # two rtts
    for _ in range(100):
        token = acquire(limiter)
        clock.advance_ms(500)
        token.dropped()
    assert limiter.retry_after_ms() == 100
    for _ in range(200):
        token = acquire(limiter)
        token.success()  # rtt 0
    assert limiter.retry_after_ms() == 2


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("fixed", FixedLimit),
        ("vegas", VegasLimit),
        ("gradient2", Gradient2Limit),
        ("aimd", AIMDLimit),
    ],
)
def test_build_limiter_builds_each_kind_with_its_parameters(
    kind: str, expected: type[Limit]
) -> None:
    params: dict[str, Any] = (
        {"limit": 7} if kind == "fixed" else {"initial_limit": 7, "max_limit": 9}
    )
    limiter = build_limiter(kind, **params)
    assert isinstance(limiter.algorithm, expected)
    assert limiter.limit == 7
    assert set(LIMITER_KINDS) == {"off", "fixed", "vegas", "gradient2", "aimd"}


def test_build_limit_rejects_bad_settings_at_build_time() -> None:
    with pytest.raises(ValueError, match="unknown limiter kind 'gradient3'"):
        build_limit("gradient3")
    with pytest.raises(ValueError, match="takes no parameters"):
        build_limit("off", initial_limit=3)
    with pytest.raises(TypeError):
        build_limit("vegas", queue_size=4)  # a Gradient2 parameter
    with pytest.raises(ValueError):
        build_limiter("aimd", retry_after_min_ms=10, retry_after_max_ms=5)
