"""CPU per request of the feature fetch (and assembly), R200-shaped, before and after a change.

    python -m benchmarks.fetch_cpu                      # baseline: the code at git ref `main`
    python -m benchmarks.fetch_cpu --baseline 7eb82eb --rounds 40

One process, one redis-server (started here on a free loopback port, stopped at the end), two
stacks in front of it: the baseline's cache(hedged(redis)) and matrix assembly, imported from
the baseline's source files (`git show`), and this tree's. Requests are R200's: one Zipf user of
10,000 and 200 distinct Zipf candidates of 50,000 (s = 1.1), each id replaced by a never-seen
unknown one with probability 1 % (so nearly every request misses a couple of ids and reads
Redis once), 24 user and 32 item float32 columns scattered over a 64-feature model order.
Both stacks are warmed with the same requests first (the benchmark runner's warm-up), then
measured in interleaved rounds of `--batch` sequential requests each; the figure is the median
over rounds of the event-loop thread's CPU (`time.thread_time`) per request, Redis's own CPU
excluded. "fetch" is what the service's fetch stage does (store read + degraded reasons),
"fetch+assemble" adds building the model-order matrix.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.baseline_build import interleaved_parser
from benchmarks.redis_server import start_redis
from ranking.core.assemble import MatrixPlan
from ranking.degraded import Degraded
from ranking.features.redis_factory import build_redis_store
from ranking.features.redis_loader import load_entities
from ranking.features.store import FetchResult, Gatherer, Lookup
from ranking.ids import Ids
from ranking.loadgen._mix import RequestMix
from ranking.scoring.bundle import Bundle, FeatureSpec
from ranking.settings import CacheSettings

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, USER_COLS, ITEM_COLS, CONTEXT = 10_000, 50_000, 24, 32, 8
NS = "fcpu"


def old_module(ref: str, path: str, name: str, folder: Path) -> ModuleType:
    """A module of the baseline, from its source at `ref` (its imports resolve to this tree)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    file = folder / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bundle() -> Bundle:
    rng = np.random.default_rng(0)
    specs = [FeatureSpec(f"u{k}", "user") for k in range(USER_COLS)]
    specs += [FeatureSpec(f"i{k}", "item") for k in range(ITEM_COLS)]
    specs += [FeatureSpec(f"c{k}", "context", default=0.0) for k in range(CONTEXT)]
    order = rng.permutation(len(specs))
    return Bundle(None, "", "", "bench", tuple(specs[i] for i in order))


class Requests:
    def __init__(self, seed: int) -> None:
        self.mix = RequestMix(
            n_users=N_USERS, n_items=N_ITEMS, users="zipf", items="zipf",
            unknown_user_fraction=0.01, unknown_item_fraction=0.01,
        )  # fmt: skip
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[tuple[str, tuple[list[str], Ids]]]:
        """(user, (candidates as str, the same as `Ids` the way the native decoder makes
        them: a buffer and offsets, no str objects inside))."""
        users = self.mix.draw_users(self.rng, n)
        out = []
        for u in users:
            ids = self.mix.draw_candidates(self.rng, 200)
            packed = Ids.from_strs(ids)
            out.append((u, (ids, Ids(packed.data, packed.offsets))))
        return out


def degraded_of(results: list[FetchResult]) -> list[str]:
    """The core's reason bookkeeping of the baseline (its `_fetch`, after the store call)."""
    degraded: list[str] = []
    for r in results:
        degraded.extend(x for x in r.degraded if x not in degraded)
    items, user = results
    if not user.found[0]:
        degraded.append(Degraded.USER_UNKNOWN)
    if not items.found.all():
        degraded.append(Degraded.ITEMS_UNKNOWN)
    return degraded


def _old_cache(oc: Any, oh: Any, replica: Any) -> Any:
    """The baseline's cache(hedged(replica)), built with whichever signature that ref has."""
    if "settings" in inspect.signature(oc.CachedFeatureStore).parameters:
        hedged = oh.HedgedFeatureStore([replica])
        return oc.CachedFeatureStore(hedged, CacheSettings.defaults(capacity=200_000))
    hedged = oh.HedgedFeatureStore([replica], policy=oh.HedgePolicy(timeout_s=0.05))
    return oc.CachedFeatureStore(hedged, capacity=200_000)


async def main() -> None:
    ap = interleaved_parser(__doc__, rounds=30, batch=100, per="requests")
    ap.add_argument("--warmup", type=int, default=3000, help="requests to warm each cache")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fetch-cpu-"))
    redis_proc = start_redis(tmp)
    url = redis_proc.url
    try:
        rng = np.random.default_rng(1)
        users = rng.standard_normal((N_USERS, USER_COLS)).astype(np.float32)
        items = rng.standard_normal((N_ITEMS, ITEM_COLS)).astype(np.float32)
        ucols = tuple(f"u{k}" for k in range(USER_COLS))
        icols = tuple(f"i{k}" for k in range(ITEM_COLS))
        load_entities(
            url, NS, "user", [f"u{k}" for k in range(N_USERS)], ucols, users, progress=False
        )
        load_entities(
            url, NS, "item", [f"i{k}" for k in range(N_ITEMS)], icols, items, progress=False
        )

        oc = old_module(args.baseline, "ranking/features/cache.py", "old_cache", tmp)
        oh = old_module(args.baseline, "ranking/features/hedging.py", "old_hedging", tmp)
        orr = old_module(args.baseline, "ranking/features/redis_store.py", "old_redis", tmp)
        oa = old_module(args.baseline, "ranking/core/assemble.py", "old_assemble", tmp)

        replica = orr.RedisFeatureStore(orr.connect_redis(url), namespace=NS, timeout_s=0.05)
        await replica.start()
        await replica.ping()
        old_store = _old_cache(oc, oh, replica)
        # One store per variant: a variant must not find the unknown ids another just cached.
        new_stores = [await build_redis_store([url], namespace=NS, timeout_s=0.05) for _ in "ab"]
        assert all(isinstance(s, Gatherer) for s in new_stores)
        b = bundle()
        old_plan = oa.MatrixPlan(b, ucols, icols)
        new_plan = MatrixPlan(b, ucols, icols)
        context = {f"c{k}": 1.0 for k in range(CONTEXT)}

        async def old_fetch(user: str, ids: Any, assemble: bool) -> Any:
            lookups = [Lookup("item", ids[0]), Lookup("user", [user])]
            results = await old_store.fetch(lookups, timeout_s=0.004)
            degraded_of(results)
            if assemble:
                old_plan.assemble(results[1], results[0], len(ids[0]), context)

        def gather_fetch(
            store: Any, plan: Any, as_ids: bool
        ) -> Callable[[str, Any, bool], Awaitable[Any]]:
            async def run(user: str, ids: Any, assemble: bool) -> Any:
                cands = ids[1] if as_ids else ids[0]
                matrix = plan.new_matrix(len(cands))
                got = await store.gather(
                    [Lookup("item", cands), Lookup("user", [user])],
                    [plan.item_target(matrix), plan.user_target(matrix)],
                    timeout_s=0.004,
                )
                int(np.count_nonzero(got[0].unknown))
                bool(got[1].unknown[0])
                if assemble:
                    plan.finish(matrix, bool(got[1].found[0]), context)

            return run

        def new_fetch(as_ids: bool) -> Callable[[str, Any, bool], Awaitable[Any]]:
            return gather_fetch(new_stores[as_ids], new_plan, as_ids)

        # A baseline from before the gather seam (7eb82eb and older) fetches, then assembles.
        before = (
            old_fetch if hasattr(old_plan, "assemble") else gather_fetch(old_store, old_plan, True)
        )
        systems = {
            "before (baseline)": before,
            "after, list[str] ids": new_fetch(False),
            "after, Ids (native decoder)": new_fetch(True),
        }
        gen = Requests(seed=7)
        warm = gen.draw(args.warmup)
        for run in systems.values():
            for u, ids in warm:
                await run(u, ids, True)
        per: dict[tuple[str, bool], list[float]] = {
            (s, a): [] for s in systems for a in (False, True)
        }
        for _ in range(args.rounds):
            for assemble in (False, True):
                batch = gen.draw(args.batch)  # drawn before the clock starts
                for name, run in systems.items():
                    t0 = time.thread_time_ns()
                    for u, ids in batch:
                        await run(u, ids, assemble)
                    per[(name, assemble)].append((time.thread_time_ns() - t0) / args.batch / 1e3)
        base = {a: statistics.median(per[("before (baseline)", a)]) for a in (False, True)}
        print(f"R200-shaped fetch, {args.rounds} interleaved rounds x {args.batch} requests, "
              f"CPU us per request (median over rounds; baseline {args.baseline})")  # fmt: skip
        print("| system | fetch us | x before | fetch+assemble us | x before |")
        print("|---|---:|---:|---:|---:|")
        for name in systems:
            f, fa = (statistics.median(per[(name, a)]) for a in (False, True))
            print(
                f"| {name} | {f:.0f} | {base[False] / f:.2f} | {fa:.0f} | {base[True] / fa:.2f} |"
            )
        for label, store in (("before", old_store), ("after, list", new_stores[0]),
                             ("after, Ids", new_stores[1])):  # fmt: skip
            st = store.stats  # type: ignore[union-attr]
            print(f"{label}: cache hits {st.hits}, misses {st.misses}, inner reads "
                  f"{st.inner_reads}, store failures {st.store_failures}")  # fmt: skip
            await store.close()
    finally:
        redis_proc.stop()


if __name__ == "__main__":
    try:
        import uvloop  # the service's loop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
