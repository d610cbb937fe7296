"""The shadow's gate on the live latency: it stands down while the worker's event loop is late.

A shadow score costs what a live one does (~0.4 ms for R200's model) and runs on the event
loop after the response went out. The other bounds (the sample, a CPU share, no live call in
flight, the machine's idle share) did not keep R200's live p99 within its 10 ms budget at
500 req/s with every request shadowed: near capacity, live calls queue on the loop and behind
the other processes before the CPUs are all busy. This gate measures the queueing itself: the
shadow's callback is scheduled (`call_soon`) when the live response is handed to gRPC, and the
time until the loop runs it is the loop's lag at that moment, i.e. how much live work (calls
being served, gRPC's own callbacks, the thread being descheduled) was ahead of it. A lag above
`max_lag_s` (`RANKING_SHADOW_MAX_LAG_MS`) closes the gate for `hold_s`
(`RANKING_SHADOW_LAG_HOLD_S`): every shadow-sampled request meanwhile is skipped, counted as
`shadow_skipped_lag`, and still measures the lag, so the gate stays closed while the loop stays
late and reopens `hold_s` after the last late sample. So a shadow at sample 1.0 under load
degrades to fewer shadowed requests instead of a missed live budget.

Measured on the running R200 server in ranking/flywheel/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LagGate"]


class LagGate:
    """Open (the shadow may score) unless a lag sample above `max_lag_s` came in the last
    `hold_s` seconds. Fed by `admit` (one sample per shadow-sampled request); the clock is
    injectable (tests)."""

    def __init__(
        self,
        max_lag_s: float,
        hold_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_lag_s <= 0 or hold_s < 0:
            raise ValueError("max_lag_s must be > 0 and hold_s >= 0")
        self.max_lag_s = max_lag_s
        self.hold_s = hold_s
        self._clock = clock
        self._closed_until = float("-inf")
        #: The largest lag seen (seconds), and how many samples were over the limit.
        self.max_seen_s = 0.0
        self.late = 0

    def admit(self, lag_s: float) -> bool:
        """Take one lag sample (seconds); True when the shadow may score now."""
        now = self._clock()
        if lag_s > self.max_seen_s:
            self.max_seen_s = lag_s
        if lag_s > self.max_lag_s:
            self.late += 1
            self._closed_until = now + self.hold_s
            return False
        return now >= self._closed_until
