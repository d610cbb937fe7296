"""What every `FeatureStore` must do, checked by behaviour rather than by attribute names.

`isinstance(x, FeatureStore)` against the runtime-checkable Protocol only sees that methods
with the right names exist; `check_feature_store` calls them and fails for a store that answers
in the wrong order, with the wrong shape or dtype, misreports unknown ids, returns wrong rows,
accepts an unknown entity type, or cannot be closed twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest

from ranking.features.store import FeatureStore, FetchResult, Lookup

__all__ = ["check_feature_store"]


async def check_feature_store(
    store: FeatureStore,
    held: Mapping[str, Mapping[str, npt.NDArray[np.floating]]],
    *,
    close: bool = True,
) -> None:
    """Fail unless `store` keeps the FeatureStore contract for rows it is known to hold.

    held: entity type -> {id: the row the store must return for it, in its column order}.
    close: also check that `close()` may be called twice (the store is closed afterwards).
    """
    for entity_type in held:
        columns = store.columns(entity_type)
        assert isinstance(columns, tuple) and all(isinstance(c, str) for c in columns)
    with pytest.raises(KeyError):
        store.columns("no-such-entity-type")

    types = list(held)
    lookups = [Lookup(t, [*held[t], f"{t}-never-stored"]) for t in types]
    lookups.append(Lookup(types[0], []))
    for order in (lookups, lookups[::-1]):  # results follow the lookups' order
        results = await store.fetch(order, timeout_s=5.0)
        assert isinstance(results, list) and len(results) == len(order)
        for lookup, result in zip(order, results, strict=True):
            assert isinstance(result, FetchResult)
            width = len(store.columns(lookup.entity_type))
            n = len(lookup.ids)
            assert result.rows.shape == (n, width) and result.rows.dtype.kind == "f"
            assert result.found.shape == (n,) and result.found.dtype == np.bool_
            assert isinstance(result.degraded, tuple)
            if not n:
                continue
            assert result.found.tolist() == [True] * (n - 1) + [False]
            # the store answered "not there" for the last id: unknown, not merely not found
            assert result.unknown_mask().tolist() == [False] * (n - 1) + [True]
            if n == 1:
                continue
            want = np.stack([held[lookup.entity_type][i] for i in lookup.ids[:-1]])
            np.testing.assert_array_equal(result.rows[:-1], want)
    if close:
        await store.close()
        await store.close()
