"""The native cache against the Python cache it replaced (tests/features/py_cache_oracle.py).

A hypothesis state machine drives both through the same random operations (fetches of random
id lists with duplicates and unknown ids, clock jumps past TTLs and stale windows, store outages,
ids appearing in the store, small capacities that force CLOCK evictions) with an injected
clock, and after every step compares what callers and the store see: rows, found, the ids each
cache read from its store, and every counter. The one intended difference: when the store fails,
the native cache always says so (the oracle only did when some id had no stale copy).
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ranking.degraded import Degraded
from ranking.features.cache import CachedFeatureStore
from ranking.features.store import Lookup
from ranking.ids import Ids
from ranking.settings import CacheSettings
from tests.features import py_cache_oracle
from tests.features.conftest import FakeStore, make_matrix

KNOWN = [f"e{k}" for k in range(24)]
LATER = [f"n{k}" for k in range(6)]  # unknown until `appear` adds them
NEVER = [f"x{k}" for k in range(4)]
POOL = KNOWN + LATER + NEVER
MATRIX = make_matrix(len(POOL), seed=3)
COUNTERS = (
    "hits",
    "negative_hits",
    "misses",
    "joined",
    "inner_reads",
    "inserts",
    "evictions",
    "stale_served",
    "unavailable",
    "store_failures",
)


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


class Recording(FakeStore):
    """A FakeStore that remembers the ids of every read."""

    def __init__(self, data: dict[str, dict[str, npt.NDArray[np.float32]]]) -> None:
        super().__init__(data)
        self.reads: list[list[tuple[str, list[str]]]] = []

    async def fetch(self, lookups, *, timeout_s=None):  # type: ignore[no-untyped-def]
        self.reads.append([(lk.entity_type, list(lk.ids)) for lk in lookups])
        return await super().fetch(lookups, timeout_s=timeout_s)


ids_strategy = st.lists(st.sampled_from(POOL), min_size=0, max_size=12)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        item = {i: MATRIX[k] for k, i in enumerate(KNOWN)}
        self.data = {"item": item, "user": {i: MATRIX[k] for k, i in enumerate(KNOWN[:8])}}

    @initialize(
        capacity=st.integers(1, 10),
        ttl=st.sampled_from([0.0, 3.0, 10.0]),
        neg_ttl=st.sampled_from([0.0, 1.0, 5.0]),
        stale=st.sampled_from([0.0, 4.0, 30.0]),
    )
    def build(self, capacity: int, ttl: float, neg_ttl: float, stale: float) -> None:
        self.inner_new = Recording(self.data)
        self.inner_old = Recording(self.data)
        self.new = CachedFeatureStore(
            self.inner_new,
            CacheSettings.defaults(
                capacity=capacity, ttl_s=ttl, negative_ttl_s=neg_ttl, stale_ttl_s=stale
            ),
            clock=self.clock,
        )
        self.old = py_cache_oracle.CachedFeatureStore(
            self.inner_old,
            capacity=capacity,
            ttl_s=ttl,
            negative_ttl_s=neg_ttl,
            stale_ttl_s=stale,
            clock=self.clock,
        )

    def _compare(self, lookups_old: list[Lookup], lookups_new: list[Lookup]) -> None:
        got_old = self.loop.run_until_complete(self.old.fetch(lookups_old))
        got_new = self.loop.run_until_complete(self.new.fetch(lookups_new))
        failed = self.inner_new.fail
        for o, n in zip(got_old, got_new, strict=True):
            assert n.found.tolist() == o.found.tolist()
            np.testing.assert_array_equal(n.rows, o.rows)
            assert set(o.degraded) <= set(n.degraded)
            extra = set(n.degraded) - set(o.degraded)
            assert extra <= {Degraded.STORE_UNAVAILABLE}
            if extra:
                assert failed
            # unknown only where the store (now or within the negative TTL) said so
            assert not (n.unknown_mask() & n.found).any()
            if not failed:
                assert (n.unknown_mask() == ~n.found).all()
        assert self.inner_new.reads == self.inner_old.reads

    @rule(ids=ids_strategy, as_ids=st.booleans())
    def fetch_items(self, ids: list[str], as_ids: bool) -> None:
        new_ids = Ids.from_strs(ids) if as_ids else list(ids)
        if as_ids:  # the native path must not need the decoded strings
            new_ids = Ids(new_ids.data, new_ids.offsets)
        self._compare([Lookup("item", list(ids))], [Lookup("item", new_ids)])

    @rule(user=st.sampled_from(POOL), ids=ids_strategy)
    def fetch_user_and_items(self, user: str, ids: list[str]) -> None:
        lookups = [Lookup("user", [user]), Lookup("item", list(ids))]
        self._compare(lookups, [Lookup("user", [user]), Lookup("item", Ids.from_strs(ids))])

    @rule(dt=st.sampled_from([0.5, 1.5, 3.5, 6.0, 12.0, 40.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule()
    def toggle_outage(self) -> None:
        self.inner_new.fail = self.inner_old.fail = not self.inner_new.fail

    @precondition(lambda self: any(i not in self.data["item"] for i in LATER))
    @rule(k=st.integers(0, len(LATER) - 1))
    def appear(self, k: int) -> None:
        self.data["item"][LATER[k]] = MATRIX[len(KNOWN) + k]

    @invariant()
    def same_counters_and_size(self) -> None:
        if not hasattr(self, "new"):
            return
        assert len(self.new) == len(self.old)
        for name in COUNTERS:
            assert getattr(self.new.stats, name) == getattr(self.old.stats, name), name

    def teardown(self) -> None:
        if hasattr(self, "new"):
            self.loop.run_until_complete(self.new.close())
            self.loop.run_until_complete(self.old.close())
        self.loop.close()


CacheMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_native_cache_matches_python_oracle = CacheMachine.TestCase
