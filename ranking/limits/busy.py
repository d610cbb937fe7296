"""Shed calls while a worker's event loop has been busy without a break for too long.

Why this exists beside the concurrency limit: grpc.aio hands a worker one new call per event-loop
iteration, so while the loop runs requests back to back (scoring is synchronous CPU work), the
calls that wait do so inside gRPC's core, where no in-flight count can see them. The limit
algorithms then observe one request in flight and a steady rtt, and never shed, while the
queue in front of them grows without bound.

A loop that has not been idle for `max_busy_s` is almost surely working through such a queue
(a standing queue, in CoDel's terms): new calls are then refused at once, which is cheap, so
the backlog drains quickly; as soon as the loop has been idle for `idle_gap_s` (or the refusals
have run that long) the busy period is over and calls are admitted again. Queueing delay is
therefore bounded by about `max_busy_s` plus one request, whatever the offered load.

Superseded: the cap on gRPC's own backlog (`RANKING_MAX_PENDING_CALLS`, see the README here)
bounds that queue where it forms, in C, without refusing calls that did not wait. Measured with
the cap in place, this guard (5 ms) still refused 15-19 % of calls at a sustainable 300 req/s,
so it stays off by default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["BusyGuard"]


class BusyGuard:
    """`admit()` before the work of a call, `release()` after it (when admitted).

    Single-threaded (one event loop); the clock is injectable for tests.
    """

    __slots__ = (
        "_busy_since",
        "_clock",
        "_last_end",
        "idle_gap_s",
        "inflight",
        "max_busy_s",
        "shed",
    )

    def __init__(
        self,
        max_busy_s: float,
        *,
        idle_gap_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_busy_s > 0 or not idle_gap_s >= 0:
            raise ValueError("need max_busy_s > 0 and idle_gap_s >= 0")
        self.max_busy_s = max_busy_s
        self.idle_gap_s = idle_gap_s
        self._clock = clock
        self._busy_since = 0.0
        self._last_end = -math.inf
        self.inflight = 0
        #: Calls refused because the loop had been busy too long.
        self.shed = 0

    def admit(self) -> bool:
        now = self._clock()
        if self.inflight == 0 and now - self._last_end > self.idle_gap_s:
            self._busy_since = now  # the loop was idle just before this call: a new busy period
        if now - self._busy_since > self.max_busy_s:
            self.shed += 1
            return False
        self.inflight += 1
        return True

    def release(self) -> None:
        self.inflight -= 1
        self._last_end = self._clock()

    def busy_for_s(self) -> float:
        """How long the current busy period has lasted (0 when idle)."""
        if self.inflight == 0 and self._clock() - self._last_end > self.idle_gap_s:
            return 0.0
        return self._clock() - self._busy_since
