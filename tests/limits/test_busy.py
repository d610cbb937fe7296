"""BusyGuard: sheds only inside a long busy period, with an injected clock."""

from __future__ import annotations

import pytest

from ranking.limits.busy import BusyGuard


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_back_to_back_work_past_the_limit_is_shed_then_recovers() -> None:
    clock = Clock()
    guard = BusyGuard(0.005, idle_gap_s=0.001, clock=clock)
    # Requests of 2 ms each, back to back: the busy period grows.
    admitted = 0
    for _ in range(5):
        if guard.admit():
            admitted += 1
            clock.t += 0.002
            guard.release()
    assert admitted == 3  # started at 0, 2 and 4 ms; at 6 ms the period is over 5 ms
    assert guard.shed == 2
    assert guard.busy_for_s() > 0.005
    # Refusals cost no time here; once the loop has had an idle gap, calls are admitted again.
    clock.t += 0.0015
    assert guard.busy_for_s() == 0.0
    assert guard.admit()
    guard.release()


def test_spaced_requests_are_never_shed() -> None:
    clock = Clock()
    guard = BusyGuard(0.005, idle_gap_s=0.001, clock=clock)
    for _ in range(100):
        assert guard.admit()
        clock.t += 0.003
        guard.release()
        clock.t += 0.002  # an idle gap after each
    assert guard.shed == 0


def test_concurrent_calls_keep_the_period_open() -> None:
    clock = Clock()
    guard = BusyGuard(0.005, idle_gap_s=0.001, clock=clock)
    assert guard.admit()  # a call awaiting I/O keeps the worker busy
    clock.t += 0.010
    assert not guard.admit()
    guard.release()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        BusyGuard(0)
