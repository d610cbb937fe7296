"""The shadow's gate on the live latency (`gate.py`): closed by a late event loop, held closed
while the loop stays late, reopened after `hold_s`; every skip counted by reason. The logic is
driven by an injected clock and lag feed (no timed asserts); a real server shows the skips in
GetStats."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ranking.core.models import build_serving_model
from ranking.flywheel.gate import LagGate
from ranking.flywheel.hook import Flywheel
from ranking.flywheel.served import Served
from ranking.flywheel.shadow import Shadow
from ranking.scoring.bundle import load_bundle
from tests.conftest import FEATURES, SmallWorld
from tests.flywheel.test_shadow import serve_and_send, shadow_bundle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gate_closes_on_a_late_loop_and_holds() -> None:
    clock = Clock()
    gate = LagGate(0.002, 1.0, clock=clock)
    assert gate.admit(0.0) and gate.admit(0.0019)  # on time: open
    assert not gate.admit(0.0021)  # late: closed (this one too)
    clock.now += 0.5
    assert not gate.admit(0.0)  # on time, but within the hold
    clock.now += 0.4
    assert not gate.admit(0.005)  # late again: the hold starts over
    clock.now += 0.99
    assert not gate.admit(0.001)
    clock.now += 0.02  # 1.01 s after the last late sample
    assert gate.admit(0.001)
    assert gate.late == 2 and gate.max_seen_s == 0.005


def test_gate_without_hold_only_skips_the_late_ones() -> None:
    clock = Clock()
    gate = LagGate(0.001, 0.0, clock=clock)
    assert [gate.admit(x) for x in (0.0, 0.002, 0.0, 0.0011, 0.0)] == [
        True, False, True, False, True,
    ]  # fmt: skip


def test_gate_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        LagGate(0.0, 1.0)
    with pytest.raises(ValueError):
        LagGate(0.001, -1.0)


def served(live_bundle: object, x: np.ndarray, scores: np.ndarray, lag_s: float) -> Served:
    rows = np.argsort(-scores, kind="stable").astype(np.intp)
    s = Served(
        time.time(), "r", "u1", live_bundle, x, [f"i{k}" for k in range(len(x))], rows,  # type: ignore[arg-type]
        scores[rows], 0, [], None, scores, False, True, False,
    )  # fmt: skip
    # As if the callback had been scheduled `lag_s` before now (the hook sets it).
    s.scheduled = time.perf_counter() - lag_s
    return s


def test_flywheel_counts_lag_skips_and_scores_once_reopened(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    """The hook's shadow step with a gate on an injected clock: a late callback is skipped
    (`shadow_skipped_lag`), so are on-time ones within the hold, then it scores again; the
    other reasons keep their own counters; the CPU bucket still applies."""
    shadow_bundle(tmp_path / "shadow")
    model = build_serving_model(load_bundle(tmp_path / "shadow"), (), ())
    fly = Flywheel(shadow=Shadow(model, cpu_share=1.0), shadow_sample=1.0)
    clock = Clock()
    fly.lag_gate = LagGate(0.002, 1.0, clock=clock)
    live = load_bundle(small_world.bundle)
    x = np.random.default_rng(0).normal(size=(6, len(FEATURES)))
    scores = small_world.booster.predict(x, raw_score=True)
    stats = fly.shadow_stats

    fly._shadow_then_queue(served(live, x, scores, 0.0))
    assert stats.scored == 1
    late = served(live, x, scores, 1.0)  # a second late: far over any limit
    fly._shadow_then_queue(late)
    assert stats.skipped_lag == 1 and stats.scored == 1
    assert late.shadow_tried and late.shadow_scores is None
    clock.now += 0.5
    fly._shadow_then_queue(served(live, x, scores, 0.0))  # within the hold
    assert stats.skipped_lag == 2 and stats.scored == 1
    clock.now += 0.6
    fly._shadow_then_queue(served(live, x, scores, 0.0))
    assert stats.skipped_lag == 2 and stats.scored == 2
    fly.busy = lambda: True  # a live call in flight: its own reason
    fly._shadow_then_queue(served(live, x, scores, 0.0))
    assert (stats.skipped_busy, stats.skipped_lag, stats.scored) == (1, 2, 2)
    fly.busy = None
    m = fly.metrics()
    assert m["shadow_skipped_lag"] == 2 and m["shadow_skipped_busy"] == 1
    assert m["shadow_skipped_idle"] == 0 and m["shadow_scored"] == 2


async def test_server_counts_lag_skips(small_world: SmallWorld, tmp_path: Path) -> None:
    """A real server with a lag limit no loop can meet (1 ns): every shadow-sampled request is
    skipped for lag, counted in GetStats, live answers untouched; with the gate off they are
    all scored."""
    shadow_bundle(tmp_path / "shadow")
    pairs, counters = await serve_and_send(
        small_world, 12, shadow_bundle=tmp_path / "shadow", shadow_sample=1.0,
        shadow_cpu_share=1.0, shadow_max_lag_ms=1e-6, shadow_lag_hold_s=0.0,
    )  # fmt: skip
    assert counters["shadow_skipped_lag"] == 12 and counters["shadow_scored"] == 0
    assert all(len(resp.items) == len(req.candidates) for req, resp in pairs)
    _, counters = await serve_and_send(
        small_world, 12, shadow_bundle=tmp_path / "shadow", shadow_sample=1.0,
        shadow_cpu_share=1.0, shadow_max_lag_ms=0.0,
    )  # fmt: skip
    assert counters["shadow_skipped_lag"] == 0 and counters["shadow_scored"] == 12
