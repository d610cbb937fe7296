"""Type stub for the core's native ranking helpers (ranking/core/_order.c)."""

import numpy as np
import numpy.typing as npt

def rank_order(
    scores: npt.NDArray[np.float64],
    priority: npt.NDArray[np.intp] | None,
    fit: int,
    top_k: int,
    n: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], int]:
    """Rank `n` candidates: returns (order, ranked_scores, unscored).

    `scores` are the scored rows' scores: of all n candidates when `priority` is None, else of
    `priority[:fit]` (partial scoring). `order` lists candidate rows best first, ties in the
    order of `scores` (a stable descending sort; NaN last; -0.0 ties with 0.0), at most `top_k`
    of them when 0 < top_k < n; with a priority, the unscored rows `priority[fit:]` follow in
    that order while top_k leaves room, and `unscored` says how many. `ranked_scores` holds the
    scores of the first `len(order) - unscored` rows. Partial selection: O(m log k).

    Raises ValueError when len(scores) > fit or fit > len(priority) (with a priority), or
    len(scores) > n (without one).
    """

def fill_rows(
    matrix: npt.NDArray[np.float64],
    user_pos: npt.NDArray[np.int64],
    user_found: bool,
    context_pos: npt.NDArray[np.int64],
    context_values: npt.NDArray[np.float64],
) -> None:
    """Complete an assembled (n, width) matrix in one pass over its rows: when `user_found`,
    row 0's values at `user_pos` are copied to every other row; every row gets
    `context_values[j]` at `context_pos[j]`.

    Raises ValueError when the matrix is not a writable C-contiguous 2-D float64 array, a
    position is outside [0, width), or the context arrays differ in length; nothing is written
    then.
    """

def check_ids(data: bytes, offsets: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(the index of the first id equal to an earlier one, the index of the first empty id),
    -1 for none; id i is `data[offsets[i]:offsets[i + 1]]`. Raises ValueError when offsets are
    empty, decreasing or past `data`."""
