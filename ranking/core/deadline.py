"""The request's time left: the earlier of the caller's gRPC deadline and the server budget.

The two ends mean different things. The server's budget is soft: when it runs out the service
cuts corners (degrades) and still answers. The caller's deadline is hard: past it nobody is
waiting, so the request is dropped with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import math
import time

__all__ = ["Deadline"]


class Deadline:
    """Absolute points on the monotonic clock; checked before each stage, passed down."""

    __slots__ = ("_at", "_hard_at", "started")

    def __init__(self, at_s: float, started_s: float, hard_at_s: float = math.inf) -> None:
        self._at = min(at_s, hard_at_s)
        self._hard_at = hard_at_s
        self.started = started_s

    @classmethod
    def from_budget(cls, budget_s: float, caller_remaining_s: float | None) -> Deadline:
        """`caller_remaining_s` is what gRPC reports as time remaining (None: no deadline)."""
        now = time.monotonic()
        hard = math.inf if caller_remaining_s is None else now + caller_remaining_s
        return cls(now + budget_s, now, hard)

    def remaining_s(self) -> float:
        """Time left before the earlier of the budget and the caller's deadline."""
        return self._at - time.monotonic()

    def caller_gone(self, slack_s: float = 0.0) -> bool:
        """The caller's own deadline has passed (or passes within `slack_s`): stop working.

        The slack is for telling why a call was cancelled: the caller's client gives up at its
        deadline, which reaches the server a network hop before the server's copy of it
        (derived from the grpc-timeout the client sent) expires.
        """
        return time.monotonic() + slack_s >= self._hard_at
