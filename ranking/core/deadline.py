"""The request's time left: the earlier of the caller's gRPC deadline and the server budget."""

from __future__ import annotations

import time

__all__ = ["Deadline"]


class Deadline:
    """An absolute point on the monotonic clock; checked before each stage, passed down."""

    __slots__ = ("_at", "started")

    def __init__(self, at_s: float, started_s: float) -> None:
        self._at = at_s
        self.started = started_s

    @classmethod
    def from_budget(cls, budget_s: float, caller_remaining_s: float | None) -> Deadline:
        """`caller_remaining_s` is what gRPC reports as time remaining (None: no deadline)."""
        now = time.monotonic()
        left = budget_s if caller_remaining_s is None else min(budget_s, caller_remaining_s)
        return cls(now + left, now)

    def remaining_s(self) -> float:
        return self._at - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self._at

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started
