"""Counting a finished call into a stats row (C; see _counting.c and call.count_call_py)."""

import numpy as np
import numpy.typing as npt

def count_call(
    row: memoryview[float],
    layout: npt.NDArray[np.int64],
    marks: list[int],
    start: int,
    now: int,
    outcome: int,
    candidates: int,
    scored: int,
    /,
) -> None:
    """Add one call to `row` (float64): its outcome counter, what it carried (`candidates` < 0:
    nothing was ranked), each stage that ran (a nonzero mark) and the whole call, as wall-time
    sums and histogram buckets laid out by `layout` (stats.COUNT_LAYOUT). Raises ValueError
    for an index outside the row, a truncated layout, or a marks list of the wrong length."""
