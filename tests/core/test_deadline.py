"""Deadline: the soft budget and the caller's hard deadline."""

from __future__ import annotations

import time

from ranking.core.deadline import Deadline


def test_budget_is_the_earlier_end_and_only_the_caller_deadline_is_hard() -> None:
    d = Deadline.from_budget(0.008, caller_remaining_s=60.0)
    assert 0.0 < d.remaining_s() <= 0.008
    assert not d.caller_gone()
    late = Deadline.from_budget(60.0, caller_remaining_s=0.0)
    assert late.remaining_s() <= 0.0 and late.caller_gone()
    assert not Deadline.from_budget(0.0, caller_remaining_s=None).caller_gone()


def test_caller_gone_with_slack_counts_a_deadline_about_to_pass() -> None:
    now = time.monotonic()
    d = Deadline(now + 60.0, now, hard_at_s=now + 0.5)
    assert not d.caller_gone()
    assert d.caller_gone(slack_s=1.0)
    assert not d.caller_gone(slack_s=0.1)
