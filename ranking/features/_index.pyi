"""Type stub for the feature cache's native index (ranking/features/_index.c).

Ids are passed as `list[str]` or as `(data, offsets)`: one UTF-8 buffer and int64 offsets of
length n + 1 (`ranking.ids.Ids`); offsets must start at 0, never decrease and stay inside data
(ValueError otherwise). Arrays must be C-contiguous with the dtypes named (TypeError otherwise);
lengths and column indices are checked before anything is written (ValueError / IndexError).
"""

import numpy as np
import numpy.typing as npt

Ids = list[str] | tuple[bytes, npt.NDArray[np.int64]]
Floats = npt.NDArray[np.float64] | npt.NDArray[np.float32]

class Index:
    """`capacity` slots of `width` float32 values each, indexed by id bytes.

    Raises ValueError unless 1 <= capacity <= 2**30 and 0 <= width <= 2**20; MemoryError.
    """

    capacity: int
    width: int
    def __init__(self, capacity: int, width: int) -> None: ...
    def __len__(self) -> int:
        """Ids holding a slot (fresh, expired or negative)."""
    def lookup(
        self,
        ids: Ids,
        now: float,
        state: npt.NDArray[np.int8],
        out: Floats | None = None,
        dst_cols: npt.NDArray[np.int64] | None = None,
        src_cols: npt.NDArray[np.int64] | None = None,
    ) -> tuple[int, int]:
        """Look every id up at time `now`; returns (found hits, negative hits).

        state[i] (len n): 1 fresh found, 2 fresh negative (the store said unknown), 0 a miss
        (absent or expired). Fresh entries get their reference bit set. For found ids,
        out[i, dst_cols] = row[src_cols] (out: (>= n, k) float64 or float32; dst_cols < k,
        src_cols < width). Other rows of out are not touched.
        """
    def stale(
        self,
        ids: Ids,
        positions: npt.NDArray[np.int64],
        now: float,
        stale_ttl_s: float,
        state: npt.NDArray[np.int8],
        out: Floats | None = None,
        dst_cols: npt.NDArray[np.int64] | None = None,
        src_cols: npt.NDArray[np.int64] | None = None,
    ) -> tuple[int, int]:
        """For ids at `positions`: entries with expires + stale_ttl_s > now are served like
        `lookup` serves fresh ones (state 1 or 2, rows gathered), without a reference bit.
        Other positions keep their state. Returns (found served, negative served)."""
    def insert(
        self,
        ids: Ids,
        rows: npt.NDArray[np.float32],
        found: npt.NDArray[np.bool_],
        unknown: npt.NDArray[np.bool_],
        now: float,
        ttl_s: float,
        negative_ttl_s: float,
    ) -> tuple[int, int]:
        """Cache id i when found[i] (rows[i], expiring at now + ttl_s) or unknown[i] (negative,
        now + negative_ttl_s); other ids are skipped. rows: (n, width). Existing ids are
        overwritten in place; new ones take never-used slots, then CLOCK victims, never a slot
        of this batch; new ids beyond the room left are dropped. Returns (inserted, evicted)."""
    def contains(self, entity_id: str | bytes) -> bool:
        """Whether the id holds a slot."""

def scatter(
    rows: npt.NDArray[np.float32],
    src_rows: npt.NDArray[np.int64],
    found: npt.NDArray[np.bool_],
    unknown: npt.NDArray[np.bool_],
    state: npt.NDArray[np.int8],
    out: Floats,
    dst_rows: npt.NDArray[np.int64],
    dst_cols: npt.NDArray[np.int64],
    src_cols: npt.NDArray[np.int64],
) -> int:
    """A store's answer into a request: for each q, with s = src_rows[q], d = dst_rows[q]:
    found[s] -> out[d, dst_cols] = rows[s, src_cols] and state[d] = 1; else state[d] = 2 when
    unknown[s], 0 otherwise. Every index is checked first. Returns the rows copied."""

def mget_command(parts: list[tuple[bytes, Ids]], buckets: int) -> bytes:
    """The RESP bytes of one MGET over every part's keys, in order. A key is
    prefix + b":" + id, or with buckets > 0 the Redis Cluster form
    b"{" + prefix + b":b" + str(crc32(id) % buckets).encode() + b"}:" + id
    (as `ranking.features.redis_store.KeyLayout.keys` spells them)."""

def decode_values(
    values: list[bytes | None],
    start: int,
    header: bytes,
    rows: npt.NDArray[np.float32],
    found: npt.NDArray[np.bool_],
    unknown: npt.NDArray[np.bool_],
) -> int:
    """values[start + i] for i < len(rows): None -> unknown[i]; bytes of length
    8 + 4 * width starting with `header` (8 bytes) -> rows[i] (little-endian float32) and
    found[i]; anything else is neither (a schema mismatch). Rows not found are filled with
    NaN, so `rows` may be uninitialised (`np.empty`). Returns the mismatches."""
