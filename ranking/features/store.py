"""The feature-store seam: every store, cache and hedged reader wears `FeatureStore`.

A store holds, per entity type ("user", "item"), one fixed-width numeric vector per entity id.
`fetch` takes every lookup of one request at once so that a remote store can answer them in a
single round trip (one MGET), and returns rows in the store's column order. Unknown ids are not
errors: `found` says which rows are real, `unknown` which ids the store answered as absent
(the rest it could not answer: an outage, a timeout, a schema mismatch), and the caller applies
the bundle's defaults to every row not found.

A store may also `gather` (the cache does): write found rows straight into the caller's matrix
in the model's column order (`Target`), so that the request path makes no intermediate row
block. `gather_into` calls it when the store has it and otherwise fetches and copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "FeatureStore",
    "FetchResult",
    "Gathered",
    "Gatherer",
    "Lookup",
    "Target",
    "columns_or_empty",
    "gather_into",
]

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Lookup:
    """The ids of one entity type wanted by a request (a list of str or `ranking.ids.Ids`)."""

    entity_type: str
    ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Rows for one `Lookup`, aligned with its ids.

    rows: shape (len(ids), len(columns)), float32 or float64; rows whose `found` is False hold
        no data (NaN) and must not be read.
    found: shape (len(ids),), bool.
    degraded: reasons this answer is not the fresh one (`ranking.degraded.Degraded`), e.g.
        STALE when a cache served entries past their TTL because the store was failing.
    unknown: shape (len(ids),), bool: ids the store answered as absent. None means "every id
        not found" (a store that always answers, like the in-process one).
    """

    rows: npt.NDArray[np.floating]
    found: BoolArray
    degraded: tuple[str, ...] = ()
    unknown: BoolArray | None = None

    def unknown_mask(self) -> BoolArray:
        """Ids the store answered as absent (never the ones it could not answer)."""
        return ~self.found if self.unknown is None else self.unknown


@dataclass(frozen=True, slots=True)
class Target:
    """Where gathered rows land: `out[i, dst_cols] = row_of_id_i[src_cols]` for found ids.

    out: (len(ids), k) float64 or float32, C-contiguous; rows of ids not found are left as
        they were (the caller pre-fills defaults). dst_cols, src_cols: int64, same length;
        src_cols index the store's columns.
    """

    out: npt.NDArray[np.floating]
    dst_cols: npt.NDArray[np.int64]
    src_cols: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Gathered:
    """The outcome of gathering one `Lookup` into its `Target` (see `FetchResult`)."""

    found: BoolArray
    unknown: BoolArray
    degraded: tuple[str, ...] = ()


@runtime_checkable
class FeatureStore(Protocol):
    """An online feature store. Implementations: memory, Redis, cache, hedged replicas."""

    def columns(self, entity_type: str) -> tuple[str, ...]:
        """Feature names of `entity_type`, in the column order of `FetchResult.rows`.

        Raises KeyError when the store holds no such entity type.
        """
        ...

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        """Fetch every lookup; one result per lookup, in order.

        Raises `ranking.errors.FeatureStoreUnavailable` when the store fails, and its subclass
        `FeatureStoreTimeout` when it cannot answer within `timeout_s` (None: the store's own
        timeout). Never raises for unknown ids.
        """
        ...

    async def close(self) -> None:
        """Release connections and background tasks. Idempotent."""
        ...


@runtime_checkable
class Gatherer(Protocol):
    """A store that writes rows straight into the caller's matrices."""

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        """Like `fetch`, but found rows are written into `targets` (one per lookup)."""
        ...


async def gather_into(
    store: FeatureStore,
    lookups: Sequence[Lookup],
    targets: Sequence[Target],
    *,
    timeout_s: float | None = None,
) -> list[Gathered]:
    """`store.gather` when the store has it, else `fetch` and copy the found rows."""
    if isinstance(store, Gatherer):
        return await store.gather(lookups, targets, timeout_s=timeout_s)
    results = await store.fetch(lookups, timeout_s=timeout_s)
    out = []
    for res, target in zip(results, targets, strict=True):
        rows = np.flatnonzero(res.found)
        if len(rows) and len(target.dst_cols):
            target.out[np.ix_(rows, target.dst_cols)] = res.rows[np.ix_(rows, target.src_cols)]
        out.append(Gathered(res.found, res.unknown_mask(), res.degraded))
    return out


def columns_or_empty(store: FeatureStore, entity_type: str) -> tuple[str, ...]:
    """The store's columns for `entity_type`, or () when it holds no such entity type."""
    try:
        return store.columns(entity_type)
    except KeyError:
        return ()
