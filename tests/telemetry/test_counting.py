"""The C record of a call counts exactly what its Python reference counts, and refuses a bad
layout or an index outside the row when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ranking.errors import DeadlineExceeded, InvalidRequest, Overloaded, Unavailable
from ranking.telemetry import stats as st
from ranking.telemetry.call import OUTCOMES, new_recorder
from ranking.telemetry.reference import PyRecorder
from ranking.telemetry.stats import Stats

_counting = pytest.importorskip(
    "ranking.telemetry._counting", reason="build it: python setup.py build_ext --inplace"
)
FIELDS = len(st.FIELDS)


class Ticks:
    """A clock that returns the values it is given, in order."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def __call__(self) -> int:
        return self.values.pop(0)


@dataclass
class Script:
    """One call: stage durations (None: not lapped), the tail, what it answered, how it ended."""

    gaps: list[int | None]
    tail: int
    ranked: tuple[int, int, list[str]] | None
    exc: BaseException | None
    cpu_gaps: list[int]


def recorder(kind: Any, clock: Ticks | None, cpu: Ticks | None, every: int) -> tuple[Any, Any]:
    """A recorder of `kind` built as the service builds its own (`new_recorder`), and the
    numpy row it counts into."""
    stats = Stats()
    rec = new_recorder(stats, clock, cpu, native=kind is not PyRecorder, cpu_every=every)
    assert type(rec) is kind
    return rec, stats.array


def play(rec: Any, clock: Ticks, cpu: Ticks, script: Script, now: int, every: int) -> str:
    """Run one call through `rec` (sampling CPU one call in `every`) with its clocks fed from
    the script, so the C and the Python record read the same times."""
    sampled = (rec.calls + 1) % every == 0
    t, c = now, 10**9
    clock.values.append(t)
    if sampled:
        cpu.values.append(c)
    call = rec.begin()
    for stage, (gap, cgap) in enumerate(zip(script.gaps, script.cpu_gaps, strict=True)):
        if gap is None:
            continue
        t += gap
        c += cgap
        clock.values.append(t)
        if sampled:
            cpu.values.append(c)
        call.lap(stage)
    if script.ranked is not None:
        call.ranked(*script.ranked, "v1")
    clock.values.append(t + script.tail)
    if sampled:
        cpu.values.append(c + 7)
    outcome: str = call.end(script.exc)
    assert call.end(None) == "ok"  # the outcome of its argument; counts nothing more
    assert not clock.values and not cpu.values  # one read per boundary, no more
    return outcome


gap = hs.one_of(
    hs.none(),
    hs.integers(0, 3_000_000_000),
    hs.sampled_from([b for bounds in st.BOUNDS_NS for b in bounds]),  # exactly on a bound
)
reasons = hs.lists(hs.sampled_from([*st.DEGRADED_REASONS[:-1], "new.reason", "x"]), max_size=5)
excs = hs.sampled_from(
    [
        None,
        InvalidRequest("x"),
        Overloaded("x", 5),
        DeadlineExceeded("x"),
        Unavailable("x"),
        ValueError("a bug"),
    ]
)
scripts = hs.builds(
    Script,
    gaps=hs.lists(gap, min_size=st.TOTAL, max_size=st.TOTAL),
    tail=hs.integers(0, 10_000_000),
    ranked=hs.one_of(hs.none(), hs.tuples(hs.integers(0, 10_000), hs.integers(0, 10_000), reasons)),
    exc=excs,
    cpu_gaps=hs.lists(hs.integers(0, 10**7), min_size=st.TOTAL, max_size=st.TOTAL),
)


@settings(max_examples=200, deadline=None)
@given(calls=hs.lists(scripts, min_size=1, max_size=8), start=hs.integers(1, 2**50))
def test_c_equals_the_python_reference(calls: list[Script], start: int) -> None:
    c_clock, c_cpu, py_clock, py_cpu = Ticks(), Ticks(), Ticks(), Ticks()
    c_rec, c_row = recorder(_counting.Recorder, c_clock, c_cpu, 3)
    py_rec, py_row = recorder(PyRecorder, py_clock, py_cpu, 3)
    for script in calls:
        got = play(c_rec, c_clock, c_cpu, script, start, 3)
        assert play(py_rec, py_clock, py_cpu, script, start, 3) == got
    assert np.array_equal(c_row, py_row)
    assert c_row[st.I_REQUESTS] == len(calls) == sum(c_row[i] for i in st.I_OUTCOME.values())
    assert c_rec.calls == py_rec.calls == len(calls)


def test_counts_add_up_over_calls() -> None:
    clock, cpu = Ticks(), Ticks()
    rec, row = recorder(_counting.Recorder, clock, cpu, 10**9)
    script = Script([10, 20, 1_200_000, 0, 900_000, 30, 40], 5, (200, 150, []), None, [0] * 7)
    for _ in range(3):
        play(rec, clock, cpu, script, 1000, 10**9)
    assert row[st.I_OUTCOME["ok"]] == 3
    assert row[st.I_CANDIDATES] == 600 and row[st.I_UNSCORED] == 150
    assert row[st.I_WALL[st.FETCH]] == 3 * 1_200_000
    assert row[st.I_WALL[st.ASSEMBLE]] == 3 * 0  # a zero-length stage still counts
    first = st.I_BUCKET[st.FETCH]
    assert row[first : first + len(st.BOUNDS_NS[st.FETCH]) + 1].sum() == 3
    assert row[st.I_DEGRADED] == 0 and row[st.I_CPU_SAMPLED] == 0


def test_the_timeline_is_the_clock_readings() -> None:
    clock = Ticks()
    rec, _ = recorder(_counting.Recorder, clock, Ticks(), 10**9)
    clock.values = [100, 150, 400, 450]
    call = rec.begin()
    call.lap(st.CONVERT)
    call.lap(st.FETCH)
    assert call.timeline() == (100, 0, 150, 0, 400, 0, 0, 0, 0)
    call.end(None)
    assert call.timeline() == (100, 450, 150, 0, 400, 0, 0, 0, 0)


def test_bad_calls_raise_and_count_nothing() -> None:
    rec, row = recorder(_counting.Recorder, None, None, 1)
    call = rec.begin()
    with pytest.raises(ValueError, match="no such stage"):
        call.lap(st.TOTAL)  # the whole call is timed by end, not lapped
    with pytest.raises(ValueError, match="no such stage"):
        call.lap(-1)
    with pytest.raises(TypeError):
        call.ranked(1, 1, [["unhashable"]], "v")
    with pytest.raises(TypeError):
        call.ranked(1, 1, ())  # type: ignore[call-arg]
    assert row[st.I_CANDIDATES] == 0
    with pytest.raises(TypeError):
        _counting.Call()  # only a recorder begins calls


def test_refuses_indices_outside_the_row_and_bad_layouts() -> None:
    row = np.zeros(FIELDS)

    def build(**changes: Any) -> Any:
        args: dict[str, Any] = {
            "row": memoryview(row),
            "layout": st.COUNT_LAYOUT,
            "cpu_index": st.I_CPU,
            "outcomes": OUTCOMES,
            "reasons": st.I_REASON,
            "other": "other",
            "requests": st.I_REQUESTS,
            "degraded": st.I_DEGRADED,
            "cpu_sampled": st.I_CPU_SAMPLED,
            "cpu_every": 8,
        }
        args.update(changes)
        return _counting.Recorder(**args)

    build()  # the service's own arguments are fine
    with pytest.raises(ValueError, match="outside"):
        build(requests=FIELDS)
    with pytest.raises(ValueError, match="outside"):
        build(row=memoryview(row[:10]))
    with pytest.raises(ValueError, match="outside"):
        build(cpu_index=(*st.I_CPU[:-1], -1))
    with pytest.raises(ValueError, match="outside"):
        build(reasons={**st.I_REASON, "big": FIELDS})
    with pytest.raises(ValueError, match="outside"):
        build(outcomes=(("ok", FIELDS, None), OUTCOMES[-1]))
    with pytest.raises(ValueError, match="truncated"):
        build(layout=st.COUNT_LAYOUT[:40])
    bad = st.COUNT_LAYOUT.copy()
    bad[6] = 10**9  # the first stage claims more bounds than the layout holds
    with pytest.raises(ValueError, match="truncated"):
        build(layout=bad)
    bad = st.COUNT_LAYOUT.copy()
    bad[4 + 1] = FIELDS - 3  # the first stage's buckets would run past the row
    with pytest.raises(ValueError, match="outside"):
        build(layout=bad)
    with pytest.raises(ValueError, match="one CPU index per stage"):
        build(cpu_index=st.I_CPU[:-1])
    with pytest.raises(ValueError, match="include `other`"):
        build(other="missing")
    with pytest.raises(ValueError, match="first and last"):
        build(outcomes=(OUTCOMES[1], *OUTCOMES[1:]))
    with pytest.raises(ValueError, match="cpu_every"):
        build(cpu_every=0)
    with pytest.raises(ValueError, match="8-byte"):
        build(row=memoryview(np.zeros(4, np.float32)))
    with pytest.raises(TypeError):
        build(row=memoryview(row).toreadonly())
    with pytest.raises(TypeError):
        build(cpu_index=list(st.I_CPU))
    assert not row.any()  # nothing was written by any of them
