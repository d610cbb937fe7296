"""Concurrency limit algorithms: how many requests may be in flight at once.

A `Limit` only estimates; it never admits or rejects anything. The `Limiter` (limiter.py) feeds
it one sample per finished request, `on_sample(start_ns, rtt_ns, inflight, dropped)`, and reads
`limit` back. The split follows Netflix's concurrency-limits, whose algorithms these port:

    FixedLimit       a static cap; the baseline to beat
    AIMDLimit        loss based: +1 while requests succeed, x backoff_ratio on a drop
    VegasLimit       delay based, TCP Vegas: queue estimate from the minimum ("no-load") rtt
    Gradient2Limit   delay based: ratio of a long-term average rtt to the latest rtt

The delay-based ones rest on Little's law: once the service's workers are busy, every extra
request in flight waits in a queue, so rtt grows with concurrency while throughput does not.
They raise the limit while rtt stays near its unloaded value and lower it when rtt grows.

Every algorithm here is deterministic: no wall clock and no hidden randomness, so a test can
replay samples and expect exact limits. `start_ns` is accepted for interface parity with
concurrency-limits (windowed limits use it) and is not read by these algorithms.

Not thread-safe: like the limiter, a limit belongs to one event loop thread.
"""

from __future__ import annotations

import math
import random
from typing import Protocol, runtime_checkable

__all__ = [
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "VegasLimit",
]


@runtime_checkable
class Limit(Protocol):
    """A concurrency limit estimator, fed one sample per completed request."""

    @property
    def limit(self) -> int:
        """The current limit: the number of requests that may be in flight (>= 1)."""
        ...

    def on_sample(self, start_ns: int, rtt_ns: int, inflight: int, dropped: bool) -> None:
        """Account for one finished request.

        start_ns: when it was admitted (the limiter's clock).
        rtt_ns: how long it was in flight.
        inflight: requests in flight when it was admitted, itself included.
        dropped: it failed in a way that signals overload (timed out, deadline exceeded).
        """
        ...


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    # bool is an int subclass; True as a limit is a bug at the call site, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f", {high}"
        raise ValueError(f"{name} must be in [{low}{upper}], got {value}")


def _check_float(name: str, value: float, low: float, high: float, *, open_low: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    too_low = value <= low if open_low else value < low
    if too_low or value > high or math.isnan(value):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


def _check_bounds(min_limit: int, initial_limit: int, max_limit: int) -> None:
    _check_int("min_limit", min_limit, 1)
    _check_int("max_limit", max_limit, 1)
    _check_int("initial_limit", initial_limit, 1)
    if not min_limit <= initial_limit <= max_limit:
        raise ValueError(
            "need min_limit <= initial_limit <= max_limit, got "
            f"{min_limit} <= {initial_limit} <= {max_limit}"
        )


class _LimitBase:
    """Shared plumbing: a float estimate clamped to [min_limit, max_limit] and an int view of
    it. Subclasses implement `_update` and return the new estimate."""

    __slots__ = ("_estimate", "_limit", "max_limit", "min_limit")

    def __init__(self, initial_limit: int, min_limit: int, max_limit: int) -> None:
        _check_bounds(min_limit, initial_limit, max_limit)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self._estimate = float(initial_limit)
        self._limit = initial_limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start_ns: int, rtt_ns: int, inflight: int, dropped: bool) -> None:
        # A coarse or fake clock can report 0; one nanosecond keeps the ratios finite.
        estimate = self._update(rtt_ns if rtt_ns > 0 else 1, inflight, dropped)
        if estimate < self.min_limit:
            estimate = float(self.min_limit)
        elif estimate > self.max_limit:
            estimate = float(self.max_limit)
        self._estimate = estimate
        self._limit = int(estimate)

    def _update(self, rtt_ns: int, inflight: int, dropped: bool) -> float:
        raise NotImplementedError


class FixedLimit(_LimitBase):
    """A static cap: `limit` never changes. The "fixed" setting, and the baseline the
    adaptive limits must beat in benchmarks."""

    __slots__ = ()

    def __init__(self, limit: int = 32) -> None:
        _check_int("limit", limit, 1)
        super().__init__(limit, limit, limit)

    def _update(self, rtt_ns: int, inflight: int, dropped: bool) -> float:
        return self._estimate

    def __repr__(self) -> str:
        return f"FixedLimit(limit={self._limit})"


class AIMDLimit(_LimitBase):
    """Loss-based additive increase, multiplicative decrease (TCP Reno's congestion window).

    On a drop, or a sample slower than `timeout_ms`, the limit becomes
    `floor(limit * backoff_ratio)`; otherwise, while at least half the limit is in use,
    it grows by one per sample. It ignores latency below the timeout, so it only reacts once
    requests already fail: simple and robust, but it lets queues (and latency) build up to the
    timeout before shedding. Useful when rtt is too noisy for the delay-based limits.

    The "half the limit in use" guard (from concurrency-limits) keeps a lightly loaded service
    from inflating its limit without ever testing it.
    """

    __slots__ = ("backoff_ratio", "timeout_ns")

    def __init__(
        self,
        *,
        initial_limit: int = 16,
        min_limit: int = 2,
        max_limit: int = 256,
        backoff_ratio: float = 0.9,
        timeout_ms: float = 1000.0,
    ) -> None:
        super().__init__(initial_limit, min_limit, max_limit)
        _check_float("backoff_ratio", backoff_ratio, 0.5, 1.0, open_low=False)
        if backoff_ratio >= 1.0:
            raise ValueError(f"backoff_ratio must be in [0.5, 1.0), got {backoff_ratio}")
        _check_float("timeout_ms", timeout_ms, 0.0, math.inf, open_low=True)
        self.backoff_ratio = float(backoff_ratio)
        self.timeout_ns = int(timeout_ms * 1_000_000)

    def _update(self, rtt_ns: int, inflight: int, dropped: bool) -> float:
        current = self._limit
        if dropped or rtt_ns > self.timeout_ns:
            # Floored, so always at least one less than before (backoff_ratio < 1).
            return float(int(current * self.backoff_ratio))
        if inflight * 2 >= current:
            return float(current + 1)
        return self._estimate

    def __repr__(self) -> str:
        return f"AIMDLimit(limit={self._limit}, backoff_ratio={self.backoff_ratio})"


def _log10_root(limit: int) -> int:
    """max(1, floor(log10(limit))): Vegas' step size, 1 below 100, 2 up to 999, and so on."""
    return max(1, int(math.log10(limit))) if limit > 0 else 1


class VegasLimit(_LimitBase):
    """Delay-based limit after TCP Vegas.

    It keeps `rtt_noload`, the smallest rtt seen (the service's latency with no queue), and
    estimates how many of the `limit` requests in flight are queued rather than served:

        queue = ceil(limit * (1 - rtt_noload / rtt))

    With `step = max(1, floor(log10(limit)))` (so steps grow slowly with the limit):

        queue <= threshold_factor * step   no queueing: grow fast,  limit += beta
        queue <  alpha_factor * step       little queueing: grow,   limit += step
        queue >  beta_factor * step        queueing: shrink,        limit -= step
        otherwise                          the sweet spot: keep the limit

    and a drop always shrinks by `step`. The new value is blended with the old one,
    `limit = (1 - smoothing) * limit + smoothing * new`.

    The minimum rtt only ever falls, so a changed service (a slower model) would look queued
    forever. Every `probe_multiplier * limit * jitter` samples Vegas therefore takes the next
    rtt as the new `rtt_noload` ("probing"); the following samples pull it down again if that
    one was not a quiet moment. `jitter` is drawn from `rng` in [0.5, 1) so that replicas do not
    probe in step; without an rng it is 0.75 and the schedule is fully deterministic.

    Like the other adaptive limits it holds the limit while fewer than half of it are in use:
    an idle service has no evidence that more concurrency would be fine.

    Strength: the minimum is a sharp baseline, so Vegas holds latency close to unloaded.
    Weakness: requests of very different sizes (10 vs 1000 candidates) make large ones look
    queued next to the minimum set by small ones. When typical rtt is k times the minimum for
    that reason alone, the limit settles near `beta / (1 - 1/k)`, about 7 with the defaults,
    whatever the host's capacity: right for 2 cores, too low for 16 (use Gradient2 there).
    """

    __slots__ = (
        "_jitter",
        "_probe_count",
        "_rng",
        "alpha_factor",
        "beta_factor",
        "probe_multiplier",
        "rtt_noload_ns",
        "smoothing",
        "threshold_factor",
    )

    def __init__(
        self,
        *,
        initial_limit: int = 16,
        min_limit: int = 2,
        max_limit: int = 256,
        smoothing: float = 1.0,
        alpha_factor: int = 3,
        beta_factor: int = 6,
        threshold_factor: int = 1,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(initial_limit, min_limit, max_limit)
        _check_float("smoothing", smoothing, 0.0, 1.0, open_low=True)
        _check_int("threshold_factor", threshold_factor, 0)
        _check_int("alpha_factor", alpha_factor, 1)
        _check_int("beta_factor", beta_factor, 1)
        if not threshold_factor <= alpha_factor <= beta_factor:
            raise ValueError(
                "need threshold_factor <= alpha_factor <= beta_factor, got "
                f"{threshold_factor} <= {alpha_factor} <= {beta_factor}"
            )
        _check_int("probe_multiplier", probe_multiplier, 1)
        self.smoothing = float(smoothing)
        self.alpha_factor = alpha_factor
        self.beta_factor = beta_factor
        self.threshold_factor = threshold_factor
        self.probe_multiplier = probe_multiplier
        self.rtt_noload_ns = 0
        self._rng = rng
        self._probe_count = 0
        self._jitter = self._next_jitter()

    def _next_jitter(self) -> float:
        return 0.75 if self._rng is None else self._rng.uniform(0.5, 1.0)

    def _update(self, rtt_ns: int, inflight: int, dropped: bool) -> float:
        estimate = self._estimate
        self._probe_count += 1
        if self._jitter * self.probe_multiplier * estimate <= self._probe_count:
            self._probe_count = 0
            self._jitter = self._next_jitter()
            self.rtt_noload_ns = rtt_ns
            return estimate
        if self.rtt_noload_ns == 0 or rtt_ns < self.rtt_noload_ns:
            self.rtt_noload_ns = rtt_ns
            return estimate

        step = _log10_root(int(estimate))
        if dropped:
            new = estimate - step
        elif inflight * 2 < estimate:
            return estimate
        else:
            queue = math.ceil(estimate * (1.0 - self.rtt_noload_ns / rtt_ns))
            if queue <= self.threshold_factor * step:
                new = estimate + self.beta_factor * step
            elif queue < self.alpha_factor * step:
                new = estimate + step
            elif queue > self.beta_factor * step:
                new = estimate - step
            else:
                return estimate
        # Clamp before blending (as the original does) so smoothing works toward a legal value.
        new = max(float(self.min_limit), min(float(self.max_limit), new))
        return (1.0 - self.smoothing) * estimate + self.smoothing * new

    def __repr__(self) -> str:
        return f"VegasLimit(limit={self._limit}, rtt_noload_ns={self.rtt_noload_ns})"


class Gradient2Limit(_LimitBase):
    """Delay-based limit from the gradient of a long-term rtt over the latest rtt.

    Each sample updates `long_rtt`, an exponential average over about `long_window` samples
    (a plain mean for the first 10), the service's usual latency. Then

        gradient = clamp(long_rtt / rtt, 0.5, 1.0)
        new      = limit * gradient + queue_size
        limit    = (1 - smoothing) * limit + smoothing * new

    At usual latency the gradient is 1 and the limit grows by `smoothing * queue_size` per
    sample; when requests queue, rtt rises above the average, the gradient falls and the limit
    shrinks (the gradient is floored at 0.5, so with smoothing 0.2 one outlier costs at most
    10% of the limit). It settles where
    `limit * (1 - gradient) == queue_size`: roughly "the concurrency the cores can serve plus
    `queue_size` waiting". If a service runs at 2 requests' worth of CPU and rtt grows in
    proportion to the queue, the limit settles near 2 + queue_size.

    Using an average rather than a minimum (Vegas) tolerates requests of mixed sizes. Its
    cost: under sustained overload `long_rtt` drifts up toward the loaded latency and the limit
    creeps up with it, so a long overload is shed a little less tightly over time. When rtt
    falls back below half of `long_rtt` (the overload ended), `long_rtt` is cut by 10% per
    sample so the limit recovers in a few dozen samples rather than a full window.

    It holds the limit while fewer than half of it are in use (an idle service learns nothing
    about its capacity), but keeps learning `long_rtt` from those samples.

    Unlike concurrency-limits' Gradient2, a dropped sample counts as the steepest gradient
    (0.5) and is kept out of `long_rtt`: see `_update` for why.
    """

    __slots__ = ("_long_rtt", "_samples", "long_window", "queue_size", "smoothing")

    #: Samples averaged plainly before the exponential average takes over.
    WARMUP_SAMPLES = 10

    def __init__(
        self,
        *,
        initial_limit: int = 16,
        min_limit: int = 2,
        max_limit: int = 256,
        smoothing: float = 0.2,
        queue_size: int = 4,
        long_window: int = 600,
    ) -> None:
        super().__init__(initial_limit, min_limit, max_limit)
        _check_float("smoothing", smoothing, 0.0, 1.0, open_low=True)
        _check_int("queue_size", queue_size, 0)
        _check_int("long_window", long_window, 1)
        self.smoothing = float(smoothing)
        self.queue_size = queue_size
        self.long_window = long_window
        self._long_rtt = 0.0
        self._samples = 0

    @property
    def long_rtt_ns(self) -> float:
        """The long-term average rtt the gradient compares against (0 before any sample)."""
        return self._long_rtt

    def _update(self, rtt_ns: int, inflight: int, dropped: bool) -> float:
        estimate = self._estimate
        if dropped:
            # Deviation from concurrency-limits, whose Gradient2 ignores drops: a drop's rtt is
            # censored at the deadline, so once the queue is longer than the deadline, rtt stops
            # rising, long_rtt catches up, the gradient returns to 1 and the limit runs away
            # (seen in simulation with a 30 ms deadline). So a drop never teaches long_rtt and
            # always counts as the steepest gradient.
            new = estimate * 0.5 + self.queue_size
            return estimate * (1.0 - self.smoothing) + new * self.smoothing
        rtt = float(rtt_ns)
        if self._samples < self.WARMUP_SAMPLES:
            self._samples += 1
            self._long_rtt += (rtt - self._long_rtt) / self._samples
        else:
            self._long_rtt += (rtt - self._long_rtt) * 2.0 / (self.long_window + 1)
        long_rtt = self._long_rtt
        if long_rtt > 2.0 * rtt:
            # Overload is over: pull the baseline down faster than the average would.
            long_rtt = self._long_rtt = long_rtt * 0.9

        if inflight * 2 < estimate:
            return estimate
        gradient = long_rtt / rtt
        if gradient > 1.0:
            gradient = 1.0
        elif gradient < 0.5:
            gradient = 0.5
        new = estimate * gradient + self.queue_size
        return estimate * (1.0 - self.smoothing) + new * self.smoothing

    def __repr__(self) -> str:
        return f"Gradient2Limit(limit={self._limit}, long_rtt_ns={self._long_rtt:.0f})"
