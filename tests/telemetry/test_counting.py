"""The C counting of a finished call equals its Python reference, and refuses a bad layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ranking.telemetry import stats as st
from ranking.telemetry.call import count_call_py

_counting = pytest.importorskip(
    "ranking.telemetry._counting", reason="build it: python setup.py build_ext --inplace"
)
FIELDS = len(st.FIELDS)


def rows() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(FIELDS), np.zeros(FIELDS)


def marks_from(start: int, gaps: list[int | None]) -> list[int]:
    """Marks for stages that ran (a gap in ns) or did not (None), in order from `start`."""
    out, t = [], start
    for gap in gaps:
        if gap is None:
            out.append(0)
        else:
            t += gap
            out.append(t)
    return out


gap = hs.one_of(
    hs.none(),
    hs.integers(0, 3_000_000_000),
    hs.sampled_from([b for bounds in st.BOUNDS_NS for b in bounds]),  # exactly on a bound
)


@settings(max_examples=300, deadline=None)
@given(
    start=hs.integers(1, 2**50),
    gaps=hs.lists(gap, min_size=st.TOTAL, max_size=st.TOTAL),
    tail=hs.integers(0, 10_000_000),
    outcome=hs.sampled_from(sorted(st.I_OUTCOME.values())),
    ranked=hs.one_of(hs.none(), hs.tuples(hs.integers(0, 10_000), hs.integers(0, 10_000))),
)
def test_c_equals_the_python_reference(
    start: int,
    gaps: list[int | None],
    tail: int,
    outcome: int,
    ranked: tuple[int, int] | None,
) -> None:
    marks = marks_from(start, gaps)
    now = max([start, *marks]) + tail
    candidates, scored = ranked if ranked else (-1, 0)
    c_row, py_row = rows()
    args = (marks, start, now, outcome, candidates, scored)
    _counting.count_call(memoryview(c_row), st.COUNT_LAYOUT, *args)
    count_call_py(memoryview(py_row), st.COUNT_LAYOUT, *args)
    assert np.array_equal(c_row, py_row)
    assert c_row[outcome] == 1


def test_counts_add_up_over_calls() -> None:
    row = np.zeros(FIELDS)
    for _ in range(3):
        marks = marks_from(1000, [10, 20, 1_200_000, 0, 900_000, 30, 40])
        _counting.count_call(memoryview(row), st.COUNT_LAYOUT, marks, 1000, marks[-1] + 5,
                             st.I_OUTCOME["ok"], 200, 150)  # fmt: skip
    assert row[st.I_OUTCOME["ok"]] == 3
    assert row[st.I_CANDIDATES] == 600 and row[st.I_UNSCORED] == 150
    assert row[st.I_WALL[st.FETCH]] == 3 * 1_200_000
    assert row[st.I_WALL[st.ASSEMBLE]] == 3 * 0  # a zero-length stage still counts
    first = st.I_BUCKET[st.FETCH]
    assert row[first : first + len(st.BOUNDS_NS[st.FETCH]) + 1].sum() == 3


def test_refuses_indices_outside_the_row_and_bad_layouts() -> None:
    row = np.zeros(FIELDS)
    marks = [0] * st.TOTAL
    with pytest.raises(ValueError, match="outside"):
        _counting.count_call(memoryview(row), st.COUNT_LAYOUT, marks, 1, 2, FIELDS, -1, 0)
    with pytest.raises(ValueError, match="outside"):
        _counting.count_call(memoryview(row[:10]), st.COUNT_LAYOUT, marks, 1, 2, 0, -1, 0)
    with pytest.raises(ValueError, match="truncated"):
        _counting.count_call(memoryview(row), st.COUNT_LAYOUT[:40], marks, 1, 2, 0, -1, 0)
    with pytest.raises(ValueError, match="one mark per stage"):
        _counting.count_call(memoryview(row), st.COUNT_LAYOUT, marks[:-1], 1, 2, 0, -1, 0)
    bad = st.COUNT_LAYOUT.copy()
    bad[6] = 10**9  # the first stage claims more bounds than the layout holds
    with pytest.raises(ValueError, match="truncated"):
        _counting.count_call(memoryview(row), bad, marks, 1, 2, 0, -1, 0)
    with pytest.raises(ValueError, match="8-byte"):
        _counting.count_call(memoryview(np.zeros(4, np.float32)), st.COUNT_LAYOUT, marks, 1, 2,
                             0, -1, 0)  # fmt: skip
    with pytest.raises(TypeError):
        _counting.count_call(memoryview(row), st.COUNT_LAYOUT, tuple(marks), 1, 2, 0, -1, 0)
    readonly = memoryview(row).toreadonly()
    with pytest.raises(TypeError):
        _counting.count_call(readonly, st.COUNT_LAYOUT, marks, 1, 2, 0, -1, 0)
