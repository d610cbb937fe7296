"""Fixtures of the feature-store tests: a fake inner store and data.

The Redis server fixtures come from the `tests.redis_servers` plugin (registered in
tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from ranking.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from ranking.features.store import FetchResult, Lookup

COLUMNS = tuple(f"f{i}" for i in range(8))


def make_matrix(n: int, width: int = len(COLUMNS), seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


class FakeStore:
    """An inner store with a delay, a failure switch and counters: what the cache and hedging
    tests need to control, which the in-process store (`MemoryFeatureStore`) does not offer."""

    def __init__(
        self,
        data: dict[str, dict[str, npt.NDArray[np.float32]]],
        columns: Sequence[str] = COLUMNS,
        *,
        delay_s: float = 0.0,
    ) -> None:
        self.data = data
        self._columns = tuple(columns)
        self.delay_s = delay_s
        self.fail = False
        self.calls = 0
        self.keys = 0
        self.closed = False

    def columns(self, entity_type: str) -> tuple[str, ...]:
        if entity_type not in self.data:
            raise KeyError(entity_type)
        return self._columns

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        self.calls += 1
        self.keys += sum(len(lk.ids) for lk in lookups)
        if self.delay_s:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.sleep(self.delay_s)
            except TimeoutError as exc:
                raise FeatureStoreTimeout("timed out") from exc
        if self.fail:
            raise FeatureStoreUnavailable("down")
        out = []
        for lk in lookups:
            table = self.data[lk.entity_type]
            rows = np.full((len(lk.ids), len(self._columns)), np.nan, dtype=np.float32)
            found = np.zeros(len(lk.ids), dtype=np.bool_)
            for j, i in enumerate(lk.ids):
                if i in table:
                    rows[j] = table[i]
                    found[j] = True
            out.append(FetchResult(rows, found))
        return out

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def item_data() -> dict[str, dict[str, npt.NDArray[np.float32]]]:
    m = make_matrix(50)
    return {"item": {f"i{k}": m[k] for k in range(50)}, "user": {"u1": m[0]}}
