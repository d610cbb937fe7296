"""Hedged reads across replicas of a feature store ("The Tail at Scale", Dean & Barroso 2013).

A read goes to one replica (round-robin over the replicas that are up). If it has not answered
within the hedge delay, the same read goes to the next replica and the first answer wins; the
loser is cancelled and awaited. Three parts, kept apart so each can be tested alone:

- `LatencyTracker`: the hedge delay is a high percentile (p95 by default) of the latencies of
  recent reads, from a ring buffer recomputed every few reads, clamped to [floor_ms, cap_ms].
  Reads cut short by a hedge are recorded at the time they were answered; that censors only
  values above the delay, so the percentile at the delay is still estimated correctly.
  Deferring the hedge to p95 bounds hedges to about 5% of reads when replicas are healthy.
- `HedgeBudget`: a token bucket; each read earns `ratio` tokens (up to `burst`), each hedge costs
  one. Extra reads are therefore at most `ratio * reads + burst`, whatever the latencies do, so
  hedging cannot amplify an overload of the replicas.
- Early and late hedges: by definition about 5% of reads outlast their p95, so p95 hedges alone
  would want the whole 5% budget and keep the bucket empty; a read hit by a real fault would
  then often find no token. So a hedge at the delay may only spend tokens above a small
  `reserve_tokens`; a read that finds none waits on to `late_factor` times the delay (capped
  at `cap_ms`) and may then spend the reserve. Reads still unanswered that late are the fault
  tail rather than scheduling noise, and they are few, so the reserve is there for them.
- Replica health: a replica whose read fails (`FeatureStoreUnavailable`) is failed over to the
  next one at once (not charged to the budget: the failed read cost the replicas nothing) and
  is marked down for `down_backoff_ms`; so is one that loses `slow_strikes` hedges in a row
  (paused or overloaded replicas answer nothing, so "slow" is the only signal they give). A
  replica that is down is not chosen as the primary while another is up, but stays a last
  resort for hedges and failovers. While every replica is down, one read at a time probes the
  replica whose back-off ends first and the others fail fast with `FeatureStoreUnavailable`
  (the cache then serves stale entries). A read that runs out of its time raises
  `FeatureStoreTimeout`: slow or tight is not evidence of an outage, so it marks nothing down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ranking.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from ranking.features.store import FeatureStore, FetchResult, Lookup
from ranking.settings import HedgeSettings

__all__ = ["HedgeBudget", "HedgePolicy", "HedgeStats", "HedgedFeatureStore", "LatencyTracker"]

logger = logging.getLogger(__name__)


_SETTINGS = HedgeSettings.defaults()  # the operator-facing defaults live in ranking.settings


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """Hedging settings; checked when built. `from_settings` makes one from `HedgeSettings`
    (whose defaults are these fields' defaults); the other fields are tuning for tests and
    benchmarks.

    enabled: False sends each read to one replica only (failover on error still happens).
    percentile: of recent read latencies, used as the hedge delay.
    floor_ms, cap_ms: clamp of the hedge delay; initial_ms until `min_samples` reads are seen.
    window: reads kept for the percentile; recomputed every `recompute_every` reads.
    budget_ratio, budget_burst: the hedge token bucket (see `HedgeBudget`).
    reserve_tokens, late_factor: tokens kept for late hedges, sent at `late_factor` x the delay
        (capped at cap_ms) to reads that found no token above the reserve at the delay.
        Both hedge times are also capped at half the read's timeout.
    max_hedges: extra reads per request (1: one hedge).
    down_backoff_ms: how long a failing or repeatedly slow replica is skipped.
    slow_strikes: lost hedges in a row that mark a replica down (0 disables).
    timeout_s: the read timeout when the caller gives none.
    """

    enabled: bool = _SETTINGS.enabled
    percentile: float = _SETTINGS.percentile
    floor_ms: float = _SETTINGS.delay_floor_ms
    cap_ms: float = _SETTINGS.delay_cap_ms
    initial_ms: float = 5.0
    window: int = 512
    min_samples: int = 32
    recompute_every: int = 16
    budget_ratio: float = _SETTINGS.budget_ratio
    budget_burst: float = 10.0
    reserve_tokens: float = 4.0
    late_factor: float = 2.0
    max_hedges: int = 1
    down_backoff_ms: float = 1000.0
    slow_strikes: int = 3
    timeout_s: float = 0.05

    @classmethod
    def from_settings(cls, settings: HedgeSettings, *, timeout_s: float) -> HedgePolicy:
        """The policy for these operator settings and a replica read timeout."""
        return cls(
            enabled=settings.enabled,
            percentile=settings.percentile,
            floor_ms=settings.delay_floor_ms,
            cap_ms=settings.delay_cap_ms,
            budget_ratio=settings.budget_ratio,
            timeout_s=timeout_s,
        )

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile < 100.0:
            raise ValueError("percentile must be in (0, 100)")
        if not 0.0 <= self.floor_ms <= self.cap_ms:
            raise ValueError("need 0 <= floor_ms <= cap_ms")
        if self.window < 1 or self.min_samples < 1 or self.recompute_every < 1:
            raise ValueError("window, min_samples and recompute_every must be >= 1")
        if self.budget_ratio < 0 or self.budget_burst < 0:
            raise ValueError("budget_ratio and budget_burst must be >= 0")
        if not 0 <= self.reserve_tokens <= self.budget_burst or self.late_factor < 1:
            raise ValueError("need 0 <= reserve_tokens <= budget_burst and late_factor >= 1")
        if self.max_hedges < 0 or self.slow_strikes < 0:
            raise ValueError("max_hedges and slow_strikes must be >= 0")
        if self.down_backoff_ms < 0 or self.timeout_s <= 0:
            raise ValueError("down_backoff_ms must be >= 0 and timeout_s > 0")


class LatencyTracker:
    """A percentile of the last `window` latencies, clamped; O(1) per sample amortised."""

    def __init__(self, policy: HedgePolicy) -> None:
        self._p = policy
        self._buf = np.zeros(policy.window, dtype=np.float64)
        self._n = 0
        self._pos = 0
        self._since = 0
        self._delay_ms = min(max(policy.initial_ms, policy.floor_ms), policy.cap_ms)

    def record(self, ms: float) -> None:
        self._buf[self._pos] = ms
        self._pos = (self._pos + 1) % len(self._buf)
        self._n = min(self._n + 1, len(self._buf))
        self._since += 1
        if self._n >= self._p.min_samples and self._since >= self._p.recompute_every:
            self._since = 0
            # The nearest-rank percentile by partial selection: O(window), without
            # np.percentile's interpolation machinery (~10x the cost, run on every 16th read).
            n = self._n
            k = min(n - 1, max(0, math.ceil(self._p.percentile / 100.0 * n) - 1))
            q = float(np.partition(self._buf[:n], k)[k])
            self._delay_ms = min(max(q, self._p.floor_ms), self._p.cap_ms)

    @property
    def delay_ms(self) -> float:
        return self._delay_ms


class HedgeBudget:
    """Token bucket: `earn()` per read adds `ratio` (capped at `burst`); a hedge spends 1."""

    def __init__(self, ratio: float, burst: float) -> None:
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst

    def earn(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self, reserve: float = 0.0) -> bool:
        """Spend one token if that leaves at least `reserve`."""
        if self.tokens >= 1.0 + reserve:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class HedgeStats:
    """Counters; per-replica lists are indexed like the replicas."""

    reads: int = 0
    hedges_sent: int = 0
    hedges_won: int = 0
    budget_exhausted: int = 0  # reads that wanted a hedge and found no token, early or late
    late_hedges: int = 0  # hedges sent from the reserve
    hedges_deferred: int = 0  # reads that found no token above the reserve at the delay
    failovers: int = 0
    fail_fast: int = 0
    replica_reads: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    marked_down: list[int] = field(default_factory=list)

    @property
    def extra_read_ratio(self) -> float:
        """Reads sent beyond one per request, over requests."""
        return (sum(self.replica_reads) - self.reads) / self.reads if self.reads else 0.0


class HedgedFeatureStore:
    """`FeatureStore` over replicas holding the same data; see the module docstring."""

    def __init__(
        self,
        replicas: Sequence[FeatureStore],
        *,
        policy: HedgePolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not replicas:
            raise ValueError("need at least one replica")
        self._replicas = tuple(replicas)
        self.policy = policy or HedgePolicy()
        self._clock = clock
        self.tracker = LatencyTracker(self.policy)
        self.budget = HedgeBudget(self.policy.budget_ratio, self.policy.budget_burst)
        n = len(self._replicas)
        self.stats = HedgeStats(replica_reads=[0] * n, errors=[0] * n, marked_down=[0] * n)
        self._down_until = [0.0] * n
        self._strikes = [0] * n
        self._rr = 0
        self._probing = False
        self._closed = False

    @property
    def replicas(self) -> tuple[FeatureStore, ...]:
        return self._replicas

    def columns(self, entity_type: str) -> tuple[str, ...]:
        for replica in self._replicas:
            try:
                return replica.columns(entity_type)
            except KeyError:
                continue
        raise KeyError(entity_type)

    def is_down(self, i: int) -> bool:
        return self._clock() < self._down_until[i]

    def _mark_down(self, i: int) -> None:
        self._down_until[i] = self._clock() + self.policy.down_backoff_ms / 1000.0
        self._strikes[i] = 0
        self.stats.marked_down[i] += 1

    def _order(self) -> tuple[list[int], list[int]]:
        """(replicas up, round-robin; replicas down, soonest back first)."""
        n = len(self._replicas)
        self._rr = (self._rr + 1) % n
        now = self._clock()
        up: list[int] = []
        down: list[int] = []
        for j in ((self._rr + k) % n for k in range(n)):
            (up if now >= self._down_until[j] else down).append(j)
        down.sort(key=self._down_until.__getitem__)
        return up, down

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        timeout = self.policy.timeout_s if timeout_s is None else timeout_s
        self.stats.reads += 1
        self.budget.earn()
        up, down = self._order()
        probe = False
        if up:
            # A replica that is down is never the primary, but is still a last resort for a
            # hedge or a failover: "down" may mean "slow lately", and a dead one fails fast.
            order = up + down
        elif self._probing:
            self.stats.fail_fast += 1
            raise FeatureStoreUnavailable("feature store unavailable")
        else:
            probe = self._probing = True
            order = down[:1]
        if len(order) == 1:  # nothing to hedge or fail over to: no race, no tasks
            try:
                return await self._single(order[0], lookups, timeout)
            finally:
                if probe:
                    self._probing = False
        tasks: dict[asyncio.Task[list[FetchResult]], tuple[int, bool]] = {}
        try:
            async with asyncio.timeout(timeout):
                return await self._race(lookups, timeout, deque(order), tasks)
        except TimeoutError as exc:
            raise FeatureStoreTimeout("feature store timed out") from exc
        finally:
            if probe:
                self._probing = False
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _single(
        self, i: int, lookups: Sequence[Lookup], timeout_s: float
    ) -> list[FetchResult]:
        """The read of a lone candidate, awaited directly (the replica enforces the timeout)."""
        start = self._clock()
        self.stats.replica_reads[i] += 1
        try:
            result = await self._replicas[i].fetch(lookups, timeout_s=timeout_s)
        except FeatureStoreTimeout:
            raise
        except FeatureStoreUnavailable:
            self.stats.errors[i] += 1
            self._mark_down(i)
            raise
        self._strikes[i] = 0
        self._down_until[i] = 0.0
        self.tracker.record((self._clock() - start) * 1000.0)
        return result

    async def _race(
        self,
        lookups: Sequence[Lookup],
        replica_timeout_s: float,
        candidates: deque[int],
        tasks: dict[asyncio.Task[list[FetchResult]], tuple[int, bool]],
    ) -> list[FetchResult]:
        start = self._clock()

        def launch(hedge: bool) -> None:
            i = candidates.popleft()
            self.stats.replica_reads[i] += 1
            coro = self._replicas[i].fetch(lookups, timeout_s=replica_timeout_s)
            tasks[asyncio.create_task(coro)] = (i, hedge)

        launch(False)
        policy = self.policy
        hedges_left = policy.max_hedges if policy.enabled else 0
        # Neither hedge may come later than half the read's timeout: a hedge that cannot
        # finish in time is no hedge (with an 8 ms request budget a read may get 4 ms).
        half = replica_timeout_s / 2
        delay_s = min(self.tracker.delay_ms / 1000.0, half)
        late_s = max(delay_s, min(policy.cap_ms / 1000.0, delay_s * policy.late_factor, half))
        hedge_at, late = start + delay_s, False
        while True:
            wait_s = None
            if hedges_left and candidates:
                wait_s = max(0.0, hedge_at - self._clock())
            done, _ = await asyncio.wait(
                tasks.keys(), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the (early or late) hedge time passed with no answer
                if self.budget.try_spend(0.0 if late else policy.reserve_tokens):
                    self.stats.hedges_sent += 1
                    self.stats.late_hedges += late
                    launch(True)
                    hedges_left -= 1
                    hedge_at, late = self._clock() + delay_s, False
                elif not late:
                    self.stats.hedges_deferred += 1
                    hedge_at, late = hedge_at - delay_s + late_s, True
                else:
                    self.stats.budget_exhausted += 1
                    hedges_left = 0
                continue
            for t in done:
                i, hedge = tasks.pop(t)
                exc = t.exception()
                if exc is None:
                    self._on_success(i, hedge, tasks)
                    self.tracker.record((self._clock() - start) * 1000.0)
                    return t.result()
                if not isinstance(exc, FeatureStoreUnavailable):
                    raise exc
                self.stats.errors[i] += 1
                self._mark_down(i)
                if candidates:
                    self.stats.failovers += 1
                    launch(False)
            if not tasks:
                raise FeatureStoreUnavailable("feature store unavailable")

    def _on_success(
        self, i: int, hedge: bool, losers: dict[asyncio.Task[list[FetchResult]], tuple[int, bool]]
    ) -> None:
        self._strikes[i] = 0
        self._down_until[i] = 0.0
        if not hedge:
            return
        self.stats.hedges_won += 1
        strikes = self.policy.slow_strikes
        for j, loser_hedge in losers.values():
            if loser_hedge:
                continue
            self._strikes[j] += 1
            if strikes and self._strikes[j] >= strikes:
                logger.info("replica %d lost %d hedges in a row; marked down", j, strikes)
                self._mark_down(j)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(r.close() for r in self._replicas), return_exceptions=True)
