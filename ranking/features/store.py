"""The feature-store seam: every store, cache and hedged reader wears `FeatureStore`.

A store holds, per entity type ("user", "item"), one fixed-width numeric vector per entity id.
`fetch` takes every lookup of one request at once so that a remote store can answer them in a
single round trip (one MGET), and returns rows in the store's column order; the scoring layer
maps columns to the model's feature order. Unknown ids are not errors: `found` says which rows
are real, and the caller applies the bundle's defaults to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureStore", "FetchResult", "Lookup", "columns_or_empty"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """The ids of one entity type wanted by a request."""

    entity_type: str
    ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Rows for one `Lookup`, aligned with its ids.

    rows: shape (len(ids), len(columns)), float32 or float64; rows whose `found` is False hold
        no data (NaN) and must not be read.
    found: shape (len(ids),), bool.
    degraded: reasons this answer is not the fresh one (for example "features.stale" when a
        cache served entries past their TTL because the store was failing).
    """

    rows: npt.NDArray[np.floating]
    found: npt.NDArray[np.bool_]
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

        Raises `ranking.errors.FeatureStoreUnavailable` when the store cannot answer within
        `timeout_s` (None: the store's own timeout). Never raises for unknown ids.
        """
        ...

    async def close(self) -> None:
        """Release connections and background tasks. Idempotent."""
        ...


def columns_or_empty(store: FeatureStore, entity_type: str) -> tuple[str, ...]:
    """The store's columns for `entity_type`, or () when it holds no such entity type."""
    try:
        return store.columns(entity_type)
    except KeyError:
        return ()
