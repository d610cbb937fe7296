"""The FeatureStore contract check fails for each bug it names (and passes a correct store)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from ranking.features.store import FetchResult, Lookup
from tests.features.conftest import FakeStore, make_matrix
from tests.features.contract import check_feature_store

M = make_matrix(3)
DATA = {"item": {"a": M[0], "b": M[1]}, "user": {"u": M[2]}}
HELD = {"item": {"a": M[0], "b": M[1]}, "user": {"u": M[2]}}


class Reversed(FakeStore):
    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        return (await super().fetch(lookups, timeout_s=timeout_s))[::-1]


class AllFound(FakeStore):
    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        out = await super().fetch(lookups, timeout_s=timeout_s)
        return [dataclasses.replace(r, found=np.ones_like(r.found)) for r in out]


class WrongRows(FakeStore):
    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        out = await super().fetch(lookups, timeout_s=timeout_s)
        return [dataclasses.replace(r, rows=r.rows[:, ::-1].copy()) for r in out]


class IntRows(FakeStore):
    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        out = await super().fetch(lookups, timeout_s=timeout_s)
        return [dataclasses.replace(r, rows=np.nan_to_num(r.rows).astype(np.int32)) for r in out]


class AnyType(FakeStore):
    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._columns


async def test_a_correct_store_passes() -> None:
    store = FakeStore(DATA)
    await check_feature_store(store, HELD)
    assert store.closed


@pytest.mark.parametrize("broken", [Reversed, AllFound, WrongRows, IntRows, AnyType])
async def test_each_broken_store_fails(broken: type[FakeStore]) -> None:
    # A failed assert, or pytest.raises(KeyError) failing for a store that accepts any type.
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await check_feature_store(broken(DATA), HELD)
