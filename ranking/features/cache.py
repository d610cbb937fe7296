"""An in-process read-through cache wearing `FeatureStore` (and `Gatherer`), indexed natively.

Per entity type the cache is one `ranking.features._index.Index` (C): a slot per entity with
its float32 row, an expiry (monotonic seconds), a negative flag (the store said the id is
unknown) and a CLOCK reference bit, found through an open-addressing hash table over the id
bytes. A request's lookup is one native call over its ids (`ranking.ids.Ids` buffers, or a list
of str) that gathers the fresh rows straight into the caller's matrix in the model's column
order (`gather`; `fetch` gathers into store-order rows). Python strings are made only for the
ids that miss. README.md in this folder says how the index is built and tested.

Eviction is CLOCK (second chance): a hit sets the slot's reference bit; a new entry takes a
never-used slot, else the first slot from the hand whose bit is clear, clearing the bits it
passes; slots of ids in the same insert batch are never taken. Expired entries are not hit, so
their bits stay clear and they go first. CLOCK keeps hot entries better than FIFO or random
choice, which would evict a hot entity once per pass of the ring, at no per-hit cost beyond a
bit write.

Misses are read through with single flight: the keys a request misses that no other request is
already reading go to the inner store in one batch (one task on the store's own timeout, so a
requester that times out or is cancelled does not cancel the read for the others, and the read
still fills the cache); keys already in flight are joined, so
two concurrent requests missing the same key cause one inner read. The read fills the cache,
including negative entries for ids the store answered as unknown (kept `negative_ttl_s`); ids
it could not answer (a schema mismatch) are not cached.

When the inner store fails (`FeatureStoreUnavailable`) or does not answer within the caller's
timeout, entries that expired less than `stale_ttl_s` ago are served; the result says why the
store did not answer (`Degraded.STORE_UNAVAILABLE`, or `Degraded.FETCH_TIMEOUT` for a timeout)
and `Degraded.STALE` when stale rows were served. Ids with no usable entry come back neither
found nor unknown. The cache never raises for an unavailable store: strict requests are the
core's to enforce (`ranking.degraded.OUTAGE`), through that one channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import is_not

import numpy as np
import numpy.typing as npt

import ranking.features._index as _index
from ranking.degraded import Degraded
from ranking.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from ranking.features.index import FOUND, MISS, UNKNOWN, Keys, index_keys
from ranking.features.store import FeatureStore, FetchResult, Gathered, Lookup, Target
from ranking.ids import Ids
from ranking.settings import CacheSettings

__all__ = ["CacheStats", "CachedFeatureStore", "TypeLookups"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class CacheStats:
    """Counters (keys unless named otherwise); read them, never reset them."""

    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    joined: int = 0  # misses that joined a read already in flight
    inner_reads: int = 0  # calls to the inner store
    inserts: int = 0
    evictions: int = 0
    stale_served: int = 0
    unavailable: int = 0  # misses answered not found because the store failed or timed out
    store_failures: int = 0  # inner reads that failed or timed out
    fetch_timeouts: int = 0  # requests whose wait for a read outlasted their time share


@dataclass(slots=True)
class TypeLookups:
    """Lookups (ids) of one entity type by result; `CacheStats` keeps the totals."""

    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    stale_served: int = 0


def _strs(ids: Sequence[str], positions: IntArray) -> list[str]:
    if isinstance(ids, Ids):
        return ids.take(positions)
    return list(map(ids.__getitem__, positions.tolist()))


class _Table:
    """The slots of one entity type (the native index) and its column count."""

    __slots__ = ("all_columns", "columns", "index")

    def __init__(self, columns: tuple[str, ...], capacity: int) -> None:
        self.columns = columns
        self.index = _index.Index(capacity, len(columns))
        self.all_columns = np.arange(len(columns), dtype=np.int64)


class CachedFeatureStore:
    """Read-through cache in front of `inner`; see the module docstring.

    settings: capacity (slots per entity type, >= 1 here: capacity 0 means "build no cache"),
    ttl_s (freshness of found entries), negative_ttl_s (of unknown ids), stale_ttl_s (how long
    past expiry an entry may serve while the inner store fails). clock: monotonic seconds
    (injectable for tests). entity_types: the types whose tables are built now, taking their
    whole memory (tens of MiB at the default capacity, tens of ms) before the first request
    rather than during it; any other type gets its table on first use.
    """

    def __init__(
        self,
        inner: FeatureStore,
        settings: CacheSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        entity_types: Sequence[str] = (),
    ) -> None:
        s = settings or CacheSettings.defaults()
        if s.capacity < 1:
            raise ValueError("capacity must be >= 1 (capacity 0 means: build no cache)")
        self._inner = inner
        self.settings = s
        self.capacity = s.capacity
        self.ttl_s = s.ttl_s
        self.negative_ttl_s = s.negative_ttl_s
        self.stale_ttl_s = s.stale_ttl_s
        self._clock = clock
        self.stats = CacheStats()
        #: The lookup counts of `stats`, split by entity type (for the metrics' labels).
        self.type_lookups: dict[str, TypeLookups] = {}
        self._tables: dict[str, _Table] = {}
        self._inflight: dict[str, dict[str, _Flight]] = {}  # entity type -> id -> flight
        self._flights: set[asyncio.Task[list[FetchResult] | None]] = set()
        self._closed = False
        for entity_type in entity_types:
            self._table(entity_type)

    @property
    def inner(self) -> FeatureStore:
        """The store behind the cache (telemetry/state.py reads its counters through it)."""
        return self._inner

    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._inner.columns(entity_type)

    def _type_lookups(self, entity_type: str) -> TypeLookups:
        counts = self.type_lookups.get(entity_type)
        if counts is None:
            counts = self.type_lookups[entity_type] = TypeLookups()
        return counts

    def _table(self, entity_type: str) -> _Table:
        columns = self._inner.columns(entity_type)
        table = self._tables.get(entity_type)
        if table is None or table.columns != columns:  # new type, or the schema changed
            table = self._tables[entity_type] = _Table(columns, self.capacity)
        return table

    def __len__(self) -> int:
        return sum(len(t.index) for t in self._tables.values())

    def contains(self, entity_type: str, entity_id: str) -> bool:
        """Whether `entity_id` holds a slot (fresh, expired or negative); for tests."""
        table = self._tables.get(entity_type)
        return table is not None and table.index.contains(entity_id)

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        """`gather` into fresh store-order float32 rows (NaN where nothing was found)."""
        targets = []
        for lk in lookups:
            table = self._table(lk.entity_type)
            rows = np.full((len(lk.ids), len(table.columns)), np.nan, dtype=np.float32)
            targets.append(Target(rows, table.all_columns, table.all_columns))
        got = await self.gather(lookups, targets, timeout_s=timeout_s)
        return [
            FetchResult(t.out, g.found, g.degraded, g.unknown)
            for t, g in zip(targets, got, strict=True)
        ]

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        """Hits are gathered natively into `targets`; misses are read through (single flight)
        and scattered in when the read answers within `timeout_s`, else served stale."""
        now = self._clock()
        stats = self.stats
        states: list[npt.NDArray[np.int8]] = []
        keys: list[Keys] = []
        misses: list[tuple[int, IntArray]] = []
        for li, (lk, t) in enumerate(zip(lookups, targets, strict=True)):
            table = self._table(lk.entity_type)
            k = index_keys(lk.ids)
            state = np.empty(len(lk.ids), dtype=np.int8)
            found, neg = table.index.lookup(k, now, state, t.out, t.dst_cols, t.src_cols)
            stats.hits += found + neg
            stats.negative_hits += neg
            by_type = self._type_lookups(lk.entity_type)
            by_type.hits += found + neg
            by_type.negative_hits += neg
            if found + neg < len(state):
                miss = np.flatnonzero(state == MISS)
                stats.misses += len(miss)
                by_type.misses += len(miss)
                misses.append((li, miss))
            states.append(state)
            keys.append(k)
        why: list[set[str]] = [set() for _ in lookups]
        if misses:
            await self._read_through(lookups, targets, keys, misses, states, why, timeout_s)
        return [
            Gathered(state == FOUND, state == UNKNOWN, tuple(sorted(w)))
            for state, w in zip(states, why, strict=True)
        ]

    async def _read_through(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        keys: list[Keys],
        misses: list[tuple[int, IntArray]],
        states: list[npt.NDArray[np.int8]],
        why: list[set[str]],
        timeout_s: float | None,
    ) -> None:
        # A plan says: rows `src` of result `fi` of `flight` answer positions `dst` of lookup `li`.
        plans: list[tuple[int, _Flight, int, IntArray, IntArray]] = []
        new: dict[str, dict[str, int]] = {}  # entity type -> id -> row in the new flight
        fresh_plans: list[tuple[int, str, IntArray, IntArray]] = []
        for li, miss in misses:
            et = lookups[li].entity_type
            miss_ids = _strs(lookups[li].ids, miss)
            flying = self._inflight.get(et)
            if flying:
                owners = list(map(flying.get, miss_ids))
                joined = np.fromiter(map(is_not, owners, repeat(None)), np.bool_, len(owners))
                if joined.any():
                    plans.extend(self._join(li, et, miss, miss_ids, owners, joined))
                    miss = miss[~joined]
                    miss_ids = [i for i, o in zip(miss_ids, owners, strict=True) if o is None]
            if len(miss):
                rows_of = new.get(et)
                if rows_of is None:  # the common case: number the misses in order
                    rows_of = new[et] = dict(zip(miss_ids, range(len(miss_ids)), strict=True))
                    if len(rows_of) == len(miss_ids):  # no duplicate ids
                        fresh_plans.append((li, et, miss, np.arange(len(miss), dtype=np.int64)))
                        continue
                    rows_of = new[et] = dict(zip(rows_of, range(len(rows_of)), strict=True))
                else:  # a second lookup of the same type: number only the unseen ids
                    unseen = [i for i in dict.fromkeys(miss_ids) if i not in rows_of]
                    rows_of.update(
                        zip(unseen, range(len(rows_of), len(rows_of) + len(unseen)), strict=True)
                    )
                src = np.fromiter(map(rows_of.__getitem__, miss_ids), np.int64, len(miss))
                fresh_plans.append((li, et, miss, src))
        if new:
            flight = self._start_flight(new)
            plans.extend(
                (li, flight, flight.index[et], dst, src) for li, et, dst, src in fresh_plans
            )
        await asyncio.wait({plan[1].task for plan in plans}, timeout=timeout_s)
        failed: dict[int, tuple[list[IntArray], set[str]]] = {}
        timed_out = False
        for li, flight, fi, dst, src in plans:
            if not flight.task.done():  # this request's share of time ran out first
                timed_out = True
                parts, reasons = failed.setdefault(li, ([], set()))
                parts.append(dst)
                reasons.add(Degraded.FETCH_TIMEOUT)
                continue
            results = flight.task.result()
            if results is None:
                parts, reasons = failed.setdefault(li, ([], set()))
                parts.append(dst)
                reasons.add(flight.failure)
                continue
            res = results[fi]
            t = targets[li]
            _index.scatter(
                np.ascontiguousarray(res.rows, dtype=np.float32),
                src,
                res.found,
                res.unknown_mask(),
                states[li],
                t.out,
                dst,
                t.dst_cols,
                t.src_cols,
            )
            if res.degraded:
                why[li].update(res.degraded)
        if timed_out:
            self.stats.fetch_timeouts += 1
        if failed:
            self._serve_stale(lookups, targets, keys, failed, states, why)

    def _join(
        self,
        li: int,
        et: str,
        miss: IntArray,
        miss_ids: list[str],
        owners: list[_Flight | None],
        joined: npt.NDArray[np.bool_],
    ) -> list[tuple[int, _Flight, int, IntArray, IntArray]]:
        """Plans for the misses already being read by other requests' flights."""
        groups: dict[_Flight, tuple[list[int], list[int]]] = {}
        for k in np.flatnonzero(joined).tolist():
            flight = owners[k]
            assert flight is not None
            dst, src = groups.setdefault(flight, ([], []))
            dst.append(int(miss[k]))
            src.append(flight.rows[et][miss_ids[k]])
        self.stats.joined += int(joined.sum())
        return [
            (li, f, f.index[et], np.asarray(d, np.int64), np.asarray(r, np.int64))
            for f, (d, r) in groups.items()
        ]

    def _start_flight(self, new: dict[str, dict[str, int]]) -> _Flight:
        flight = _Flight([Lookup(et, list(rows_of)) for et, rows_of in new.items()], new)
        for et, rows_of in new.items():
            self._inflight.setdefault(et, {}).update(dict.fromkeys(rows_of, flight))
        flight.task = asyncio.create_task(self._run_flight(flight))
        self._flights.add(flight.task)
        flight.task.add_done_callback(self._flight_done)
        return flight

    def _flight_done(self, task: asyncio.Task[list[FetchResult] | None]) -> None:
        self._flights.discard(task)
        # Every requester may have stopped waiting (timeouts); log an unexpected error here
        # rather than leave it "never retrieved".
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("feature read failed", exc_info=exc)

    async def _run_flight(self, flight: _Flight) -> list[FetchResult] | None:
        """Read the flight's keys and fill the cache; None when the store failed.

        The read runs on the inner store's own timeout, not the first requester's share of its
        budget: a requester that stops waiting leaves the read to finish and fill the cache
        for the next request, and a Redis connection is not torn down (and reconnected) for
        every read that outlasts a tight budget.
        """
        self.stats.inner_reads += 1
        try:
            results = await self._inner.fetch(flight.lookups)
        except FeatureStoreUnavailable as exc:
            self.stats.store_failures += 1
            if isinstance(exc, FeatureStoreTimeout):
                flight.failure = Degraded.FETCH_TIMEOUT
            return None
        finally:
            # Only this flight can own its ids (a flight is started only for ids nobody
            # reads), so they are dropped without checking the owner.
            for sub in flight.lookups:
                pop = self._inflight.get(sub.entity_type, {}).pop
                deque(map(pop, sub.ids, repeat(None)), maxlen=0)
        now = self._clock()
        for sub, res in zip(flight.lookups, results, strict=True):
            index = self._table(sub.entity_type).index
            rows = np.ascontiguousarray(res.rows, dtype=np.float32)
            inserted, evicted = index.insert(
                index_keys(sub.ids),
                rows,
                res.found,
                res.unknown_mask(),
                now,
                self.ttl_s,
                self.negative_ttl_s,
            )
            self.stats.inserts += inserted
            self.stats.evictions += evicted
        return results

    def _serve_stale(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        keys: list[Keys],
        failed: dict[int, tuple[list[IntArray], set[str]]],
        states: list[npt.NDArray[np.int8]],
        why: list[set[str]],
    ) -> None:
        """Answer positions whose read failed from entries expired less than stale_ttl_s ago."""
        now = self._clock()
        for li, (parts, reasons) in failed.items():
            index = self._table(lookups[li].entity_type).index
            pos = np.concatenate(parts)
            t = targets[li]
            found, neg = index.stale(
                keys[li], pos, now, self.stale_ttl_s, states[li], t.out, t.dst_cols, t.src_cols
            )
            self.stats.stale_served += found
            self._type_lookups(lookups[li].entity_type).stale_served += found
            self.stats.unavailable += len(pos) - found - neg
            if found:
                why[li].add(Degraded.STALE)
            why[li].update(reasons)

    async def close(self) -> None:
        """Cancel reads in flight, then close the inner store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        flights = list(self._flights)
        for t in flights:
            t.cancel()
        if flights:
            await asyncio.gather(*flights, return_exceptions=True)
        await self._inner.close()


@dataclass(eq=False, slots=True)
class _Flight:
    """One inner read shared by every request that missed one of its keys.

    lookups: one sub-lookup per entity type; rows: entity type -> id -> row in its result;
    index: entity type -> position of its sub-lookup; failure: why it failed, when it did.
    """

    lookups: list[Lookup]
    rows: dict[str, dict[str, int]]
    index: dict[str, int] = field(init=False)
    task: asyncio.Task[list[FetchResult] | None] = field(init=False)
    failure: Degraded = Degraded.STORE_UNAVAILABLE

    def __post_init__(self) -> None:
        self.index = {lk.entity_type: fi for fi, lk in enumerate(self.lookups)}
