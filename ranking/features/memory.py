"""The in-process feature store: per entity type, the native id index the cache uses.

The embedded default (no Redis needed). Each table lives in one `_index.Index` (id bytes ->
row, every entry found and never expiring), so a request's ids are looked up straight from the
decoder's buffer and `gather` writes the found rows into the model-order matrix in the same
native pass, as the cache does for its hits: no Python object per candidate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

import ranking.features._index as _index
from ranking.features.index import FOUND, index_keys
from ranking.features.store import FetchResult, Gathered, Lookup, Target

__all__ = ["EntityTable", "MemoryFeatureStore", "read_entity_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntityTable:
    """Feature vectors of one entity type: row i of `matrix` belongs to `ids[i]`."""

    ids: Sequence[str]
    columns: tuple[str, ...]
    matrix: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape != (len(self.ids), len(self.columns)):
            raise ValueError(
                f"matrix shape {self.matrix.shape} does not match "
                f"{len(self.ids)} ids x {len(self.columns)} columns"
            )


class MemoryFeatureStore:
    """`FeatureStore` over in-memory tables; `fetch` never suspends or fails."""

    def __init__(self, tables: Mapping[str, EntityTable]) -> None:
        self._columns: dict[str, tuple[str, ...]] = {}
        self._index: dict[str, _index.Index] = {}
        for entity_type, table in tables.items():
            n = len(table.ids)
            if len(set(table.ids)) != n:
                raise ValueError(f"{entity_type}: duplicate entity ids")
            index = _index.Index(max(n, 1), len(table.columns))
            rows = np.ascontiguousarray(table.matrix, dtype=np.float32)
            found = np.ones(n, dtype=np.bool_)
            # Found forever: inserted at time 0 with an infinite TTL, looked up at time 0.
            index.insert(list(table.ids), rows, found, ~found, 0.0, math.inf, math.inf)
            self._columns[entity_type] = table.columns
            self._index[entity_type] = index

    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._columns[entity_type]

    def entity_types(self) -> tuple[str, ...]:
        return tuple(self._columns)

    def size(self, entity_type: str) -> int:
        return len(self._index[entity_type])

    def _lookup(self, lookup: Lookup) -> _index.Index:
        index = self._index.get(lookup.entity_type)
        if index is None:
            raise KeyError(lookup.entity_type)
        return index

    def fetch_now(self, lookups: Sequence[Lookup]) -> list[FetchResult]:
        """The synchronous body of `fetch`, for callers that are not async."""
        out = []
        for lookup in lookups:
            index = self._lookup(lookup)
            n, width = len(lookup.ids), index.width
            rows = np.full((n, width), np.nan, dtype=np.float32)
            state = np.empty(n, dtype=np.int8)
            cols = np.arange(width, dtype=np.int64)
            index.lookup(index_keys(lookup.ids), 0.0, state, rows, cols, cols)
            out.append(FetchResult(rows, state == FOUND))
        return out

    def gather_now(self, lookups: Sequence[Lookup], targets: Sequence[Target]) -> list[Gathered]:
        """The synchronous body of `gather`: found rows go straight into each target."""
        out = []
        for lookup, t in zip(lookups, targets, strict=True):
            index = self._lookup(lookup)
            state = np.empty(len(lookup.ids), dtype=np.int8)
            index.lookup(index_keys(lookup.ids), 0.0, state, t.out, t.dst_cols, t.src_cols)
            found = state == FOUND
            out.append(Gathered(found, ~found))
        return out

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        return self.fetch_now(lookups)

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        return self.gather_now(lookups, targets)

    async def close(self) -> None:
        return None


def read_entity_file(
    path: str | Path, id_column: str = "id", *, progress: bool = False
) -> EntityTable:
    """Read an entity table from CSV or Parquet: an id column and numeric feature columns.

    Any of `ranking.tables.TABLE_SUFFIXES` (read by `ranking.tables.read_table`; ids stay
    strings). Empty cells become NaN (missing). Non-numeric feature columns are refused with a
    message naming them; so is an unsupported suffix (`ranking.tables.TableError`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from ranking.tables import read_table

    file = Path(path)
    table = read_table(file, string_columns=(id_column,))
    if id_column not in table.column_names:
        raise ValueError(f"{file}: no id column {id_column!r} (columns: {table.column_names[:8]})")
    ids = [str(x) for x in table.column(id_column).to_pylist()]
    columns = tuple(c for c in table.column_names if c != id_column)
    bad = [
        c
        for c in columns
        if not (
            pa.types.is_integer(table.schema.field(c).type)
            or pa.types.is_floating(table.schema.field(c).type)
            or pa.types.is_null(table.schema.field(c).type)
        )
    ]
    if bad:
        raise ValueError(f"{file}: non-numeric feature columns {bad}")
    matrix = np.empty((len(ids), len(columns)), dtype=np.float32)
    from tqdm import tqdm

    bar = tqdm(columns, desc=f"load {file.name}", unit="column", disable=not progress)
    for j, name in enumerate(bar):
        col = pc.cast(table.column(name), pa.float32())
        matrix[:, j] = col.to_numpy(zero_copy_only=False)
    log.info("read %d %s rows x %d columns", len(ids), file.name, len(columns))
    return EntityTable(ids, columns, matrix)
