"""Where a cache miss's CPU goes, layer by layer: the Redis read path of one R200 request.

    python -m benchmarks.fetch_layers [--rounds 15] [--batch 300]

One process, one redis-server (started here on a free loopback port, stopped at the end) holding
R200-shaped users and items, the service's stack in front of it (`build_redis_store`:
cache(hedged(redis))), and requests of 200 cached candidates of which two are never-seen ids,
so every request reads Redis once for two keys: what R200's 1 % unknown ids cost at load, where
nearly every request carries one. Each layer is timed alone, from the bottom up, so that the
difference between two lines is what the upper layer adds:

- `bare protocol`: the same MGET bytes written on an `asyncio.Protocol` whose `data_received`
  feeds a `hiredis.Reader` and resolves a future: the syscalls and the event loop, no library
  (the floor of any Python reader);
- `pipe`: `_Pipe.call`, the store's own protocol on a connection redis-py opened (the bare
  protocol's work plus the read's timeout and the choice of connection);
- `replica`: `RedisFeatureStore.fetch` (command built natively, timeout, native decode);
- `hedged`: `HedgedFeatureStore.fetch` with its one replica (no race, policy bookkeeping);
- `cache, all hits` and `cache, 2 misses`: `CachedFeatureStore.gather` of the whole request
  into a model-order matrix (native index lookup, the flight task, insert, scatter).

The figure is the median over interleaved rounds of the event loop thread's CPU
(`time.thread_time`, so kernel time in the socket calls counts) per call; redis-server's own
CPU is not counted. Run it on a quiet machine: the ratios hold on a busy one, the absolute
figures do not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
import numpy as np

import ranking.features._index as _index
from benchmarks.fetch_cpu import (
    CONTEXT,
    ITEM_COLS,
    N_ITEMS,
    N_USERS,
    NS,
    USER_COLS,
    bundle,
)
from benchmarks.redis_server import start_redis
from ranking.core.assemble import MatrixPlan
from ranking.features.cache import CachedFeatureStore
from ranking.features.hedging import HedgedFeatureStore
from ranking.features.index import Keys
from ranking.features.redis_factory import build_redis_store
from ranking.features.redis_loader import load_entities
from ranking.features.redis_store import RedisFeatureStore
from ranking.features.store import Lookup
from ranking.ids import Ids

__all__ = ["BareProtocol", "main"]


class BareProtocol(asyncio.Protocol):
    """Replies in order, parsed by hiredis, each resolving the future of its command."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: list[asyncio.Future[Any]] = []
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._waiting.pop(0).set_result(reply)

    def call(self, command: bytes) -> asyncio.Future[Any]:
        assert self._transport is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(command)
        return future


async def _run(rounds: int, batch: int) -> None:
    redis_proc = start_redis(Path(tempfile.mkdtemp(prefix="fetch-layers-")))
    try:
        rng = np.random.default_rng(1)
        ucols = tuple(f"u{k}" for k in range(USER_COLS))
        icols = tuple(f"i{k}" for k in range(ITEM_COLS))
        for et, n, cols in (("user", N_USERS, ucols), ("item", N_ITEMS, icols)):
            rows = rng.standard_normal((n, len(cols))).astype(np.float32)
            ids = [f"{et[0]}{k}" for k in range(n)]
            load_entities(redis_proc.url, NS, et, ids, cols, rows, progress=False)
        store = await build_redis_store([redis_proc.url], namespace=NS, timeout_s=0.05)
        assert isinstance(store, CachedFeatureStore)
        hedged = store.inner
        assert isinstance(hedged, HedgedFeatureStore)
        replica = hedged.replicas[0]
        assert isinstance(replica, RedisFeatureStore) and replica._pipe is not None
        pipe = replica._pipe
        host, port = redis_proc.url.split("//")[1].split("/")[0].split(":")
        _, bare = await asyncio.get_running_loop().create_connection(BareProtocol, host, int(port))

        plan = MatrixPlan(bundle(), ucols, icols)
        context = {f"c{k}": 1.0 for k in range(CONTEXT)}
        known = Ids.from_strs([f"i{k}" for k in range(198)])
        counter = iter(range(1 << 62))

        def fresh_pair() -> list[str]:
            k = next(counter)
            return [f"never-{k}-a", f"never-{k}-b"]

        def lookups_of(items: list[str]) -> list[Lookup]:
            return [Lookup("item", Ids.from_strs(items)), Lookup("user", ["u1"])]

        def command_of(lookups: list[Lookup]) -> bytes:
            parts: list[tuple[bytes, Keys]] = []
            for lk in lookups:
                ids = Ids.from_strs(lk.ids)
                parts.append((replica.layout.prefix(lk.entity_type), (ids.data, ids.offsets)))
            return _index.mget_command(parts, 0)

        async def gather(ids: Ids) -> None:
            matrix = plan.new_matrix(len(ids))
            got = await store.gather(
                [Lookup("item", ids), Lookup("user", ["u1"])],
                [plan.item_target(matrix), plan.user_target(matrix)],
                timeout_s=0.004,
            )
            plan.finish(matrix, bool(got[1].found[0]), context)

        warm = Ids.from_strs([*known.tolist(), "i198", "i199"])
        await gather(warm)  # the 200 known ids and the user are now cached

        # Inputs are built before each timed batch, so only the layer's own work is timed.
        layers: dict[str, tuple[Callable[[], Any], Callable[[Any], Awaitable[Any]]]] = {
            "bare protocol": (lambda: command_of(lookups_of(fresh_pair())), bare.call),
            "pipe": (lambda: command_of(lookups_of(fresh_pair())), lambda c: pipe.call(c, 0.05)),
            "replica": (lambda: lookups_of(fresh_pair()), replica.fetch),
            "hedged": (lambda: lookups_of(fresh_pair()), hedged.fetch),
            "cache, all hits": (lambda: Ids(warm.data, warm.offsets), gather),
            "cache, 2 misses": (
                lambda: _packed([*known.tolist(), *fresh_pair()]),
                gather,
            ),
        }
        per: dict[str, list[float]] = {name: [] for name in layers}
        for _ in range(rounds):
            for name, (make, call) in layers.items():
                inputs = [make() for _ in range(batch)]
                t0 = time.thread_time_ns()
                for x in inputs:
                    await call(x)
                per[name].append((time.thread_time_ns() - t0) / batch / 1e3)
        print(
            f"A cache miss's CPU by layer: {rounds} interleaved rounds x {batch} calls, "
            "us per call (median over rounds), event loop thread"
        )
        #: What each line is compared with: the layer below it.
        below = {
            "pipe": "bare protocol",
            "replica": "pipe",
            "hedged": "replica",
            "cache, 2 misses": "cache, all hits",
        }
        med = {name: statistics.median(v) for name, v in per.items()}
        print("| layer | CPU us | over |")
        print("|---|---:|---|")
        for name, us in med.items():
            base = below.get(name)
            over = f"{us - med[base]:+.1f} us over {base}" if base else ""
            print(f"| {name} | {us:.1f} | {over} |")
        await store.close()
    finally:
        redis_proc.stop()


def _packed(items: list[str]) -> Ids:
    """An `Ids` without cached strings, the way the native request decoder builds one."""
    p = Ids.from_strs(items)
    return Ids(p.data, p.offsets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=300, help="calls per layer per round")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(args.rounds, args.batch))
    else:
        uvloop.run(_run(args.rounds, args.batch))


if __name__ == "__main__":
    main()
