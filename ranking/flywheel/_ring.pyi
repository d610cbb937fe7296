"""Type stub for the log ring's native copy (ranking/flywheel/_ring.c)."""

from typing import Any

import numpy as np
import numpy.typing as npt

class Copier:
    """The producer side of a log ring: requests are checked and queued on the caller's
    thread, copied into the ring by a native thread that owns its head."""

    def __init__(self, mapping: npt.NDArray[np.uint8]) -> None:
        """`mapping`: the whole shared mapping (64-byte header, then the records)."""
    def put_served(
        self,
        timestamp: float,
        schema_id: int,
        schema_json: bytes,
        matrix: npt.NDArray[np.float64],
        rows: npt.NDArray[np.intp],
        scores: Any,
        unscored: int,
        shadow: npt.NDArray[np.float64] | None,
        id_data: bytes,
        id_offsets: npt.NDArray[np.int64],
        request_id: str,
        user_id: str,
        degraded: list[str],
        shadow_version: str,
    ) -> bool:
        """Queue one served record (layout in ring.py): True; False when the queue was full
        and it was copied here instead (a burst the thread had not caught up with). Keeps
        references to the arrays until copied (the caller must not modify them); copies the
        degraded reasons at once. `rows` are the returned items' matrix rows in response order;
        `scores` the first len(rows) - unscored of their scores; `shadow` one score per
        returned row or None; id i is id_data[id_offsets[i]:id_offsets[i + 1]]; the schema's
        record is written before the first served record that refers to it.

        Raises ValueError when a row is outside the matrix, an id outside id_data, or the
        lengths disagree (nothing queued); TypeError for arguments of the wrong type.
        """
    def sync(self, timeout_s: float) -> bool:
        """Wait (GIL released) until everything queued is copied or dropped; False on
        timeout."""
    def reap(self) -> None:
        """Release the references of the requests already copied."""
    def close(self) -> None:
        """Copy what is queued, then stop the thread; put_served raises afterwards."""
    @property
    def head(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def cpu_s(self) -> float: ...
    @property
    def inline(self) -> int: ...
    @property
    def inline_cpu_s(self) -> float: ...
