"""The core's native top-k, id checks and row filling against the numpy / Python code they
replaced."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking.core._order import check_ids, fill_rows, rank_order
from ranking.ids import Ids


def reference_sort(
    n: int,
    scores: npt.NDArray[np.float64],
    priority: npt.NDArray[np.intp] | None,
    fit: int,
    top_k: int,
) -> tuple[list[int], list[float], int]:
    """RankingService._sort as it was before the native version (rows instead of ids)."""
    limit = top_k if 0 < top_k < n else n
    order = np.argsort(-scores, kind="stable")[:limit]
    out_scores = scores[order].tolist()
    rows = (order if priority is None else priority[order]).tolist()
    unscored = 0
    if priority is not None and len(rows) < limit:
        extra = priority[fit : fit + limit - len(rows)].tolist()
        rows += extra
        unscored = len(extra)
    return rows, out_scores, unscored


# Few distinct values, so ties (and NaN, -0.0 against 0.0) are common.
score_values = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, float("nan"), 1e300, -1e-300])


@settings(max_examples=500, deadline=None)
@given(
    st.lists(score_values | st.floats(allow_nan=True), min_size=0, max_size=60),
    st.integers(-2, 70),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_rank_order_is_the_stable_sort_it_replaced(
    values: list[float], top_k: int, partial: bool, rnd: object
) -> None:
    n = len(values)
    if partial and n:
        priority = np.arange(n, dtype=np.intp)
        rnd.shuffle(priority)  # type: ignore[attr-defined]
        fit = rnd.randint(0, n)  # type: ignore[attr-defined]
        scores = np.array(values[:fit], dtype=np.float64)
    else:
        priority, fit, scores = None, n, np.array(values, dtype=np.float64)
    rows, ranked, unscored = rank_order(scores, priority, fit, top_k, n)
    want_rows, want_scores, want_unscored = reference_sort(n, scores, priority, fit, top_k)
    assert rows.tolist() == want_rows
    assert unscored == want_unscored
    np.testing.assert_array_equal(ranked, want_scores)  # NaN equals NaN here
    assert [np.signbit(x) for x in ranked] == [np.signbit(x) for x in want_scores]


def test_rank_order_refuses_arrays_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="fit"):
        rank_order(np.zeros(3), np.arange(2, dtype=np.intp), 2, 0, 3)
    with pytest.raises(ValueError, match="more scores"):
        rank_order(np.zeros(3), None, 3, 0, 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=3), max_size=40))
def test_check_ids_finds_what_python_finds(ids: list[str]) -> None:
    packed = Ids.from_strs(ids)
    seen: set[str] = set()
    dup = next((i for i, c in enumerate(ids) if c in seen or seen.add(c)), -1)  # type: ignore[func-returns-value]
    empty = next((i for i, c in enumerate(ids) if not c), -1)
    assert check_ids(packed.data, packed.offsets) == (dup, empty)


def test_check_ids_refuses_bad_offsets() -> None:
    with pytest.raises(ValueError, match="out of range"):
        check_ids(b"ab", np.array([0, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        check_ids(b"ab", np.array([0, 2, 1], dtype=np.int64))


def reference_fill(
    matrix: npt.NDArray[np.float64],
    user_pos: npt.NDArray[np.int64],
    user_found: bool,
    context: dict[int, float],
) -> None:
    """MatrixPlan.finish's user and context steps as they were before the native version."""
    if user_found and len(matrix) > 1 and user_pos.size:
        matrix[1:, user_pos] = matrix[0, user_pos]
    for position, value in context.items():
        matrix[:, position] = value


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(0, 12),
    width=st.integers(1, 10),
    data=st.data(),
    user_found=st.booleans(),
)
def test_fill_rows_is_the_numpy_it_replaced(
    rows: int, width: int, data: st.DataObject, user_found: bool
) -> None:
    positions = st.lists(st.integers(0, width - 1), unique=True, max_size=width)
    user_pos = np.asarray(data.draw(positions), dtype=np.int64)
    context = data.draw(
        st.dictionaries(st.integers(0, width - 1), st.floats(allow_nan=True), max_size=width)
    )
    start = np.random.default_rng(rows * 31 + width).standard_normal((rows, width))
    want = start.copy()
    reference_fill(want, user_pos, user_found, context)
    got = start.copy()
    fill_rows(
        got,
        user_pos,
        user_found,
        np.asarray(list(context), dtype=np.int64),
        np.asarray(list(context.values()), dtype=np.float64),
    )
    np.testing.assert_array_equal(got, want)


def test_fill_rows_refuses_what_does_not_fit_and_writes_nothing() -> None:
    m = np.zeros((3, 4))
    none = np.empty(0, np.int64)
    nothing = np.empty(0, np.float64)
    bad = [
        (m, np.array([4]), True, none, nothing),  # user position past the width
        (m, none, False, np.array([-1]), np.array([1.0])),  # negative context position
        (m, none, False, np.array([0, 1]), np.array([1.0])),  # one value short
        (m.astype(np.float32), none, False, none, nothing),  # not float64
        (np.zeros((4, 3)).T, none, False, none, nothing),  # not C-contiguous
        (np.zeros(4), none, False, none, nothing),  # not 2-D
    ]
    for args in bad:
        with pytest.raises(ValueError):
            fill_rows(*args)
    frozen = np.zeros((2, 2))
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        fill_rows(frozen, none, False, np.array([0]), np.array([1.0]))
    assert not m.any() and not frozen.any()
