"""What the flywheel costs the request path, measured in one process (interleaved rounds).

    python -m benchmarks.flywheel [--bundle DIR] [--rounds 15] [--requests 200] [--rate 300]

The core (`RankingService.rank`, in-process store with the demo world, 200 candidates x 64
features) runs the same requests with the flywheel off, with the hook refusing every record
(a ring too small for one: the hook's own floor), with the served-feature log on (every
request copied into the shared ring, the log process writing Parquet), with drift counting as
well, and with a shadow model scoring every request. Rounds are interleaved so that machine
noise hits every variant alike; the figures are medians over rounds of the per-request mean
of the event-loop thread's CPU. Beside them: the hook's own CPU per sampled request
(`flywheel_cpu_s.hook`: the request path's share of the flywheel) and the log ring's copy
thread's CPU per logged request (`log_copy_cpu_s`, off the request path). The log processes'
own CPU per logged request is read from /proc at the end. The hook itself (`Flywheel.observe`)
is also timed alone (wall and thread CPU per call), with the copy thread and the log process
draining behind it.

Without `--bundle` a 100-tree x 31-leaf model is trained on the world (a few seconds): the
hook's cost does not depend on the model, only on the matrix shape.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder, build_serving_model
from ranking.core.service import RankingService, RankQuery
from ranking.demo.model import demo_feature_specs
from ranking.demo.world import CONTEXT_COLUMNS, World, make_world
from ranking.features.memory import EntityTable, MemoryFeatureStore
from ranking.flywheel.hook import Flywheel
from ranking.flywheel.logproc import LogProcess
from ranking.flywheel.reference import REFERENCE_FILE, build_reference, write_reference
from ranking.flywheel.shadow import Shadow
from ranking.ids import Ids
from ranking.limits import build_limiter
from ranking.scoring.bundle import load_bundle, write_bundle
from ranking.telemetry import Stats, build_telemetry


def _small_bundle(world: World, folder: Path) -> Path:
    import lightgbm as lgb

    sample = world.sample_queries(100, 200, seed=1)
    x = world.feature_matrix(sample).astype(np.float64)
    booster = lgb.train(
        {"objective": "lambdarank", "num_leaves": 31, "verbose": -1, "seed": 0},
        lgb.Dataset(x, sample.relevance.ravel(), group=sample.group_sizes(),
                    feature_name=list(world.feature_row_order())),
        num_boost_round=100,
    )  # fmt: skip
    write_bundle(folder, booster.model_to_string(), demo_feature_specs(world), version="bench")
    write_reference(folder, build_reference(x, list(world.feature_row_order())))
    return folder


def _queries(world: World, n: int) -> list[RankQuery]:
    sample = world.sample_queries(n, 200, seed=7)
    out = []
    for q in range(n):
        ctx = {
            c: float(v) for c, v in zip(CONTEXT_COLUMNS, sample.context[q], strict=True) if v == v
        }
        out.append(
            RankQuery(
                candidate_ids=Ids.from_strs(world.item_ids[i] for i in sample.item_idx[q]),
                user_id=world.user_ids[int(sample.user_idx[q])],
                context=ctx,
            )
        )
    return out


async def _round(
    core: RankingService, queries: list[RankQuery], rate: float = 0.0
) -> tuple[float, float]:
    """Mean wall (time in `rank`) and event-loop-thread CPU seconds per request over
    `queries`; with `rate`, requests start on a fixed schedule of that many per second (the
    loop idles between them, as a server below saturation does) instead of back to back."""
    wall = cpu = 0.0
    start = time.perf_counter()
    for k, q in enumerate(queries):
        if rate > 0:
            await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
        w0, c0 = time.perf_counter(), time.thread_time()
        await core.rank(q, Deadline.from_budget(1.0, None))
        await asyncio.sleep(0)  # run what the call scheduled (the shadow), as a server's loop does
        wall += time.perf_counter() - w0
        cpu += time.thread_time() - c0
    n = len(queries)
    return wall / n, cpu / n


def _hook_alone(
    fly: Flywheel, core: RankingService, query: RankQuery, calls: int
) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU seconds per `observe` call (batches of 100 calls, one figure per
    batch; the copy thread and the log process drain behind it)."""
    model = core.models.current
    n = len(query.candidate_ids)
    matrix = np.random.default_rng(0).normal(size=(n, len(model.bundle.features)))
    rows = np.arange(n, dtype=np.intp)
    scores = np.random.default_rng(1).normal(size=n)
    wall, cpu = [], []
    for _ in range(calls // 100):
        started, c0 = time.perf_counter(), time.thread_time()
        for _ in range(100):
            fly.observe(
                "", query.user_id, model.bundle, matrix, query.candidate_ids, rows, scores,
                0, [], None, scores,
            )  # fmt: skip
        wall.append((time.perf_counter() - started) / 100)
        cpu.append((time.thread_time() - c0) / 100)
        fly.flush()  # keep the queue short: measure the hook, not a full queue
    return wall, cpu


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests per second (0: back to back)"
    )
    args = parser.parse_args(argv)

    world = make_world()
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    folder = args.bundle or _small_bundle(world, tmp / "bundle")
    tables = {
        "user": EntityTable(world.user_ids, tuple(world.user_columns), world.user_matrix),
        "item": EntityTable(world.item_ids, tuple(world.item_columns), world.item_matrix),
    }
    store = MemoryFeatureStore(tables)
    model = build_serving_model(
        load_bundle(folder), store.columns("user"), store.columns("item"), engine="auto"
    )
    has_reference = (folder / REFERENCE_FILE).is_file()
    shadow_model = build_serving_model(
        load_bundle(folder), store.columns("user"), store.columns("item")
    )

    def core(fly: Flywheel | None) -> RankingService:
        return RankingService(
            models=ModelHolder(model, build=lambda b: model),
            store=store,
            limiter=build_limiter("off"),
            telemetry=build_telemetry(Stats()),
            max_candidates=1000,
            fetch_share=0.5,
            inline_max_row_trees=10**9,
            executor=None,
            flywheel=fly,
        )

    def logged(name: str, capacity: int = 16 << 20, shadow: bool = False) -> LogProcess:
        return LogProcess(tmp / name, capacity=capacity, roll_s=3600, shadow=shadow)

    variants: dict[str, Any] = {"off": None}
    # The hook alone, in place: every record refused at once (a ring smaller than a record).
    variants["hook, ring full (drops)"] = Flywheel(log=logged("drop", capacity=4096))
    variants["log (every request)"] = Flywheel(log=logged("log"))
    if has_reference:
        variants["log + drift"] = Flywheel(log=logged("log-drift"))
    variants["log + shadow (every request)"] = Flywheel(
        log=logged("log-shadow", shadow=True),
        shadow=Shadow(shadow_model, cpu_share=1.0),
        shadow_sample=1.0,
    )
    for name, fly in variants.items():
        if fly is not None:
            if not name.startswith("hook,"):
                fly.log.start()
            fly.start()
    cores = {name: core(fly) for name, fly in variants.items()}
    # The log + drift variant is the only one whose model has a reference: the others
    # must not count drift, so they serve a copy of the bundle without one.
    if has_reference:
        bare = tmp / "bare"
        bare.mkdir()
        for f in ("model.txt", "schema.json"):
            (bare / f).write_text((folder / f).read_text())
        bare_model = build_serving_model(
            load_bundle(bare), store.columns("user"), store.columns("item")
        )
        for name, each in cores.items():
            if name != "log + drift":
                each.models = ModelHolder(bare_model, build=lambda b: bare_model)

    queries = _queries(world, args.requests)
    for warm in cores.values():  # warm-up
        await _round(warm, queries[:20])
    log_cpu0: dict[str, float] = {}
    base: dict[str, dict[str, float]] = {}
    for name, fly in variants.items():
        if fly is not None and not name.startswith("hook,"):
            fly.flush()
            log_cpu0[name] = _process_cpu_s(fly.log.pid)  # its start-up (imports) not counted
        if fly is not None:
            base[name] = fly.metrics()  # the warm-up not counted
    wall: dict[str, list[float]] = {n: [] for n in cores}
    cpu: dict[str, list[float]] = {n: [] for n in cores}
    for r in range(args.rounds):
        names = list(cores) if r % 2 == 0 else list(cores)[::-1]
        for name in names:
            w, c = await _round(cores[name], queries, args.rate)
            wall[name].append(w)
            cpu[name].append(c)
            fly = variants[name]
            if fly is not None and not name.startswith("hook,"):
                fly.flush()
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)

    per_request: dict[str, dict[str, float]] = {}
    for name, fly in variants.items():
        if fly is not None:
            fly.flush()
            m = fly.metrics()

            def delta(key: str, m: dict[str, float] = m, name: str = name) -> float:
                return m.get(key, 0.0) - base[name].get(key, 0.0)

            # Every request is sampled in these variants; the copy thread handled the logged
            # and the dropped ones.
            sampled = args.rounds * len(queries)
            per_request[name] = {
                "hook": delta("flywheel_cpu_s.hook") / sampled,
                "copy": delta("log_copy_cpu_s")
                / max(delta("log_queued") + delta("log_dropped"), 1.0),
            }
    hook, hook_cpu = _hook_alone(variants["log (every request)"], cores["off"], queries[0], 20_000)
    base_w, base_c = statistics.median(wall["off"]), statistics.median(cpu["off"])
    print(f"model {model.version}: {model.num_trees} trees, {model.scorer.name}; 200 candidates")
    print(
        "| variant | wall us/request | loop CPU us/request | CPU over off "
        "| hook CPU us/request | copy thread CPU us/logged |"
    )
    print("|---|---|---|---|---|---|")
    for name in cores:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        pr = per_request.get(name)
        extra = "| - | - |"
        if pr is not None:
            extra = f"| {pr['hook'] * 1e6:.1f} | {pr['copy'] * 1e6:.1f} |"
        print(f"| {name} | {w * 1e6:.0f} | {c * 1e6:.0f} | {(c - base_c) * 1e6:+.1f} {extra}")
    hook.sort()
    hook_cpu.sort()
    print(
        f"Flywheel.observe alone (logged, id generated): median {statistics.median(hook) * 1e6:.2f}"
        f" us wall, {statistics.median(hook_cpu) * 1e6:.2f} us thread CPU,"
        f" p90 {hook[int(0.9 * len(hook))] * 1e6:.2f} us wall per call (batches of 100)"
    )
    for name, fly in variants.items():
        if fly is None:
            continue
        m = fly.metrics()
        pid = fly.log.pid if not name.startswith("hook,") else None
        if pid is not None:
            fly.flush()
        cpu_s = _process_cpu_s(pid) - log_cpu0[name] if pid is not None else 0.0
        fly.close()
        print(f"{name}: {m}", file=sys.stderr)
        logged = m.get("log_queued", 0.0) - base[name].get("log_queued", 0.0)
        if pid is not None and logged > 0:
            per = cpu_s / logged * 1e6
            print(f"{name}: log process CPU {per:.0f} us per logged request")
    _ = base_w
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
