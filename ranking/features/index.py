"""The Python face of the native id index (`_index.c`): the key form it reads and its states.

Both the cache and the in-process store look ids up in an `_index.Index`; this module is the one
place that says how a request's ids are handed to it and what its per-id states mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ranking.ids import Ids

__all__ = ["FOUND", "MISS", "UNKNOWN", "Keys", "index_keys"]

#: Per-id states `Index.lookup` writes: absent or expired, fresh found, fresh negative.
MISS, FOUND, UNKNOWN = 0, 1, 2

Keys = list[str] | tuple[bytes, npt.NDArray[np.int64]]


def index_keys(ids: Sequence[str]) -> Keys:
    """The ids in a form the native index reads without a Python object per id."""
    if isinstance(ids, Ids):
        return (ids.data, ids.offsets)
    return ids if type(ids) is list else list(ids)
