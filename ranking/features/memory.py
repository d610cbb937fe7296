"""The in-process feature store: one numpy matrix per entity type and a dict from id to row.

The embedded default (no Redis needed). Per request the work is one dict lookup per id (a single
`map`) and one vectorised `take`; no per-candidate Python beyond that.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ranking.features.store import FetchResult, Lookup

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
        self._index: dict[str, dict[str, int]] = {}
        self._matrix: dict[str, npt.NDArray[np.float32]] = {}
        for entity_type, table in tables.items():
            index = {entity_id: row for row, entity_id in enumerate(table.ids)}
            if len(index) != len(table.ids):
                raise ValueError(f"{entity_type}: duplicate entity ids")
            # One extra all-NaN row at the end: unknown ids gather it, so `take` needs no mask.
            matrix = np.full((len(table.ids) + 1, len(table.columns)), np.nan, dtype=np.float32)
            matrix[:-1] = table.matrix
            self._columns[entity_type] = table.columns
            self._index[entity_type] = index
            self._matrix[entity_type] = matrix

    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._columns[entity_type]

    def entity_types(self) -> tuple[str, ...]:
        return tuple(self._columns)

    def size(self, entity_type: str) -> int:
        return len(self._index[entity_type])

    def fetch_now(self, lookups: Sequence[Lookup]) -> list[FetchResult]:
        """The synchronous body of `fetch`, for callers that are not async."""
        out = []
        for lookup in lookups:
            index = self._index.get(lookup.entity_type)
            if index is None:
                raise KeyError(lookup.entity_type)
            matrix = self._matrix[lookup.entity_type]
            missing = len(matrix) - 1
            rows = np.fromiter(
                map(index.get, lookup.ids, itertools.repeat(missing)),
                dtype=np.intp,
                count=len(lookup.ids),
            )
            out.append(FetchResult(matrix.take(rows, axis=0), rows != missing))
        return out

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        return self.fetch_now(lookups)

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
