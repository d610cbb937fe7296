"""THE ORACLE: the pure-Python cache that ranking/features/cache.py replaced, kept verbatim (only
this paragraph is new) so tests/features/test_index_oracle.py can compare the native index
against it over random operation sequences. Not used by the service.

An in-process, vectorised read-through cache wearing `FeatureStore`.

Per entity type the cache is a table of preallocated numpy arrays, one slot per entity:
`rows` (capacity x columns, float32), `expires` (monotonic seconds), `negative` (the store said
the id is unknown) and `ref` (CLOCK reference bit), plus a dict id -> slot. A request does one
dict lookup per id (one comprehension) and everything else with numpy: freshness masks, one
fancy-index gather of the rows, one write of the reference bits. A per-key cache (`cachetools`)
costs about as much as the MGET it saves; this one gathers 200 rows in tens of microseconds.

Eviction is CLOCK (second chance) with a vectorised, bounded scan: a hit sets the slot's
reference bit; inserting k entries takes the first k slots from the hand whose bit is clear,
clearing the bits it passes. It costs O(k) numpy per insert batch (no per-hit bookkeeping
beyond one vectorised bit write, unlike LRU's list moves) and keeps hot entries better than
FIFO or random choice, which would evict a hot entity once per pass of the ring. Expired
entries are not hit, so their bits stay clear and they go first.

Misses are read through with single flight: the keys a request misses that no other request is
already reading go to the inner store in one batch (one task, so a requester that times out or
is cancelled does not cancel the read for the others); keys already in flight are joined, so
two concurrent requests missing the same key cause one inner read. The read fills the cache,
including negative entries for unknown ids (kept `negative_ttl_s`).

When the inner store raises `FeatureStoreUnavailable` (or does not answer within the caller's
timeout), entries that expired less than `stale_ttl_s` ago are served and the result is marked
"features.stale"; ids with no usable entry come back not found and the result is marked
"features.store_unavailable". Contract with the core: the cache does not raise for an
unavailable store unless built with `strict=True`; a strict *request* is the core's to enforce
by checking `"features.store_unavailable"` (or `"features.stale"`) in `FetchResult.degraded`.
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

from ranking.errors import FeatureStoreUnavailable
from ranking.features.store import FeatureStore, FetchResult, Lookup

__all__ = ["STALE", "STORE_UNAVAILABLE", "CacheStats", "CachedFeatureStore"]

logger = logging.getLogger(__name__)

STALE = "features.stale"
STORE_UNAVAILABLE = "features.store_unavailable"

IntArray = npt.NDArray[np.int64]
_Out = tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], set[str]]


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
    unavailable: int = 0  # misses answered not found because the store failed
    store_failures: int = 0  # inner reads that failed or timed out


class _Table:
    """The slots of one entity type."""

    def __init__(self, columns: tuple[str, ...], capacity: int) -> None:
        self.columns = columns
        self.capacity = capacity
        self.rows = np.full((capacity, len(columns)), np.nan, dtype=np.float32)
        self.expires = np.full(capacity, -np.inf, dtype=np.float64)
        self.negative = np.zeros(capacity, dtype=np.bool_)
        self.ref = np.zeros(capacity, dtype=np.bool_)
        self.ids = np.full(capacity, None, dtype=object)  # slot -> id
        self.index: dict[str, int] = {}
        self.used = 0
        self.hand = 0

    def slots_of(self, ids: Sequence[str]) -> IntArray:
        get = self.index.get
        return np.fromiter(map(get, ids, repeat(-1)), dtype=np.int64, count=len(ids))

    def take_slots(self, k: int, protect: IntArray) -> IntArray:
        """k distinct slots for new entries: never used ones first, then CLOCK victims."""
        fresh = np.arange(self.used, min(self.capacity, self.used + k), dtype=np.int64)
        self.used += len(fresh)
        need = k - len(fresh)
        if need <= 0:
            return fresh
        cap = self.capacity
        chosen = [fresh]
        # A short scan usually suffices; the full sweeps are bounded fallbacks: the first clears
        # every reference bit, so the second finds enough (k <= capacity - len(protect)).
        for scan in (min(cap, max(4 * need, 64)), cap, cap):
            window = (self.hand + np.arange(scan, dtype=np.int64)) % cap
            ok = ~self.ref[window]
            taken = np.concatenate([protect, *chosen])
            if len(taken):
                ok &= ~np.isin(window, taken)
            pos = np.flatnonzero(ok)[:need]
            end = int(pos[-1]) + 1 if len(pos) == need else scan
            self.ref[window[:end]] = False
            self.hand = (self.hand + end) % cap
            chosen.append(window[pos])
            need -= len(pos)
            if need == 0:
                break
        return np.concatenate(chosen)


class CachedFeatureStore:
    """Read-through cache in front of `inner`; see the module docstring.

    capacity: slots per entity type. ttl_s: freshness of found entries; negative_ttl_s: of
    unknown ids; stale_ttl_s: how long past expiry an entry may be served while the inner
    store fails. clock: monotonic seconds (injectable for tests). strict: raise
    `FeatureStoreUnavailable` instead of answering degraded.
    """

    def __init__(
        self,
        inner: FeatureStore,
        *,
        capacity: int = 100_000,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 10.0,
        stale_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        strict: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if ttl_s < 0 or negative_ttl_s < 0 or stale_ttl_s < 0:
            raise ValueError("ttl_s, negative_ttl_s and stale_ttl_s must be >= 0")
        self._inner = inner
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.stale_ttl_s = stale_ttl_s
        self._clock = clock
        self.strict = strict
        self.stats = CacheStats()
        self._tables: dict[str, _Table] = {}
        self._inflight: dict[str, dict[str, _Flight]] = {}  # entity type -> id -> flight
        self._flights: set[asyncio.Task[list[FetchResult] | None]] = set()
        self._closed = False

    @property
    def inner(self) -> FeatureStore:
        return self._inner

    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._inner.columns(entity_type)

    def _table(self, entity_type: str) -> _Table:
        columns = self._inner.columns(entity_type)
        table = self._tables.get(entity_type)
        if table is None or table.columns != columns:  # new type, or the schema changed
            table = self._tables[entity_type] = _Table(columns, self.capacity)
        return table

    def __len__(self) -> int:
        return sum(len(t.index) for t in self._tables.values())

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        now = self._clock()
        stats = self.stats
        outs: list[_Out] = []
        misses: list[tuple[int, IntArray]] = []
        for li, lk in enumerate(lookups):
            table = self._table(lk.entity_type)
            slots = table.slots_of(lk.ids)
            s = np.maximum(slots, 0)
            fresh = (slots >= 0) & (table.expires[s] > now)
            neg = table.negative[s]
            rows = table.rows[s]
            rows[~fresh] = np.nan
            table.ref[s[fresh]] = True
            n_fresh = int(fresh.sum())
            stats.hits += n_fresh
            stats.negative_hits += int((fresh & neg).sum())
            outs.append((rows, fresh & ~neg, set()))
            if n_fresh < len(slots):
                miss = np.flatnonzero(~fresh)
                stats.misses += len(miss)
                misses.append((li, miss))
        if misses:
            await self._read_through(lookups, misses, outs, timeout_s)
        return [FetchResult(rows, found, tuple(sorted(why))) for rows, found, why in outs]

    async def _read_through(
        self,
        lookups: Sequence[Lookup],
        misses: list[tuple[int, IntArray]],
        outs: list[_Out],
        timeout_s: float | None,
    ) -> None:
        # A plan says: rows `src` of result `fi` of `flight` answer positions `dst` of lookup `li`.
        plans: list[tuple[int, _Flight, int, IntArray, IntArray]] = []
        new: dict[str, dict[str, int]] = {}  # entity type -> id -> row in the new flight
        fresh_plans: list[tuple[int, str, IntArray, IntArray]] = []
        for li, miss in misses:
            et, ids = lookups[li].entity_type, lookups[li].ids
            miss_ids = list(map(ids.__getitem__, miss.tolist()))
            flying = self._inflight.get(et)
            if flying:
                owners = list(map(flying.get, miss_ids))
                joined = np.fromiter(map(is_not, owners, repeat(None)), np.bool_, len(owners))
                if joined.any():
                    plans.extend(self._join(li, et, miss, miss_ids, owners, joined))
                    miss = miss[~joined]
                    miss_ids = [i for i, o in zip(miss_ids, owners, strict=True) if o is None]
            if len(miss):
                rows_of = new.setdefault(et, {})
                # Number the ids this flight has not seen yet (dict.fromkeys drops duplicates,
                # keeping order), then look every miss up: C-level loops only.
                unseen = [i for i in dict.fromkeys(miss_ids) if i not in rows_of]
                rows_of.update(
                    zip(unseen, range(len(rows_of), len(rows_of) + len(unseen)), strict=True)
                )
                src = np.fromiter(map(rows_of.__getitem__, miss_ids), np.int64, len(miss))
                fresh_plans.append((li, et, miss, src))
        if new:
            flight = self._start_flight(new, timeout_s)
            plans.extend(
                (li, flight, flight.index[et], dst, src) for li, et, dst, src in fresh_plans
            )
        tasks = {plan[1].task for plan in plans}
        await asyncio.wait(tasks, timeout=timeout_s)
        failed: dict[int, list[IntArray]] = {}
        for li, flight, fi, dst, src in plans:
            results = flight.task.result() if flight.task.done() else None
            if results is None:
                failed.setdefault(li, []).append(dst)
                continue
            res = results[fi]
            rows, found, why = outs[li]
            rows[dst] = res.rows[src]
            found[dst] = res.found[src]
            why.update(res.degraded)
        if failed:
            self._serve_stale(lookups, failed, outs)

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

    def _start_flight(self, new: dict[str, dict[str, int]], timeout_s: float | None) -> _Flight:
        flight = _Flight([Lookup(et, list(rows_of)) for et, rows_of in new.items()], new)
        for et, rows_of in new.items():
            self._inflight.setdefault(et, {}).update(dict.fromkeys(rows_of, flight))
        flight.task = asyncio.create_task(self._run_flight(flight, timeout_s))
        self._flights.add(flight.task)
        flight.task.add_done_callback(self._flight_done)
        return flight

    def _flight_done(self, task: asyncio.Task[list[FetchResult] | None]) -> None:
        self._flights.discard(task)
        # Every requester may have stopped waiting (timeouts); log an unexpected error here
        # rather than leave it "never retrieved".
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("feature read failed", exc_info=exc)

    async def _run_flight(
        self, flight: _Flight, timeout_s: float | None
    ) -> list[FetchResult] | None:
        """Read the flight's keys and fill the cache; None when the store failed."""
        self.stats.inner_reads += 1
        try:
            results = await self._inner.fetch(flight.lookups, timeout_s=timeout_s)
        except FeatureStoreUnavailable:
            self.stats.store_failures += 1
            return None
        finally:
            # Only this flight can own its ids (a flight is started only for ids nobody
            # reads), so they are dropped without checking the owner.
            for sub in flight.lookups:
                pop = self._inflight.get(sub.entity_type, {}).pop
                deque(map(pop, sub.ids, repeat(None)), maxlen=0)
        now = self._clock()
        for sub, res in zip(flight.lookups, results, strict=True):
            # Rows of a schema-mismatched answer are not cached as unknown: they must be
            # read (and reported) again.
            cache_negative = "features.schema_mismatch" not in res.degraded
            self._insert(sub.entity_type, sub.ids, res, now, cache_negative)
        return results

    def _insert(
        self, entity_type: str, ids: Sequence[str], res: FetchResult, now: float, neg: bool
    ) -> None:
        table = self._table(entity_type)
        keep = np.ones(len(ids), dtype=np.bool_) if neg else res.found.copy()
        if not keep.any():
            return
        kept = np.flatnonzero(keep)
        kept_ids = list(ids) if len(kept) == len(ids) else list(map(ids.__getitem__, kept.tolist()))
        slots = table.slots_of(kept_ids)
        known = slots >= 0
        new = np.flatnonzero(~known)
        room = table.capacity - int(known.sum())
        if len(new) > room:  # a batch larger than the cache: keep what fits
            slots[new[room:]] = -1
            new = new[:room]
        if len(new):
            victims = table.take_slots(len(new), slots[known])
            index = table.index
            olds = table.ids[victims]
            if (olds != None).any():  # noqa: E711 (elementwise on an object array)
                for old, slot in zip(olds.tolist(), victims.tolist(), strict=True):
                    if old is not None and index.get(old) == slot:
                        del index[old]
                        self.stats.evictions += 1
            new_ids = list(map(kept_ids.__getitem__, new.tolist()))
            table.ids[victims] = new_ids
            index.update(zip(new_ids, victims.tolist(), strict=True))
            slots[new] = victims
        ok = slots >= 0
        dst = slots[ok]
        found = res.found[kept[ok]]
        table.rows[dst] = res.rows[kept[ok]]
        table.negative[dst] = ~found
        table.expires[dst] = now + np.where(found, self.ttl_s, self.negative_ttl_s)
        table.ref[dst] = False
        self.stats.inserts += len(dst)

    def _serve_stale(
        self, lookups: Sequence[Lookup], failed: dict[int, list[IntArray]], outs: list[_Out]
    ) -> None:
        """Answer positions whose read failed from entries expired less than stale_ttl_s ago."""
        now = self._clock()
        for li, parts in failed.items():
            lk = lookups[li]
            table = self._table(lk.entity_type)
            pos = np.concatenate(parts)
            slots = table.slots_of(list(map(lk.ids.__getitem__, pos.tolist())))
            s = np.maximum(slots, 0)
            usable = (slots >= 0) & (table.expires[s] + self.stale_ttl_s > now)
            stale = usable & ~table.negative[s]
            rows, found, why = outs[li]
            rows[pos[stale]] = table.rows[s[stale]]
            found[pos[stale]] = True
            n_stale = int(stale.sum())
            self.stats.stale_served += n_stale
            if n_stale:
                why.add(STALE)
            n_unavailable = len(pos) - int(usable.sum())
            self.stats.unavailable += n_unavailable
            if n_unavailable:
                why.add(STORE_UNAVAILABLE)
        if self.strict:
            raise FeatureStoreUnavailable("feature store unavailable")

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
    index: entity type -> position of its sub-lookup.
    """

    lookups: list[Lookup]
    rows: dict[str, dict[str, int]]
    index: dict[str, int] = field(init=False)
    task: asyncio.Task[list[FetchResult] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {lk.entity_type: fi for fi, lk in enumerate(self.lookups)}
