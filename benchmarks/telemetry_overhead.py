"""What recording a call costs: CPU per R200-shaped request through the core, recorded or not.

    python -m benchmarks.telemetry_overhead [--rounds 40] [--calls 200]

One process, one event loop, the R200 world and model (200 candidates, 64 features, 500 x 63
trees) in the in-process store. Each round sends `--calls` queries through the core once per
side, the sides interleaved call by call (in a fresh random order each time), and sums the
event-loop thread's CPU time of each side; a figure is the median over rounds of (side - off).
The sides:

    off       a record whose lap/ranked/end are C no-ops (`"".format`), and the core's own
              counters (`Stats.add`: unknown ids, store errors) no-ops too: what the core
              costs with nothing recorded (the cheapest objects its calls can land on)
    off2      the same again: the method's own noise (A/A)
    C         the service's record (`_counting.Recorder`): stage laps, histograms, outcome and
              degraded counters, CPU sampled 1 in 8
    C no-cpu  the same with the thread-CPU clock never read: the sampling's share
    python    the Python reference of the same record (`ranking/telemetry/reference.py`): what
              the same work costs as Python between the native stages

The queries carry R200's 1 % unknown ids, so every answer is degraded (`features.items_unknown`)
and the record counts a reason, and the core counts the unknown ids (`Stats.add`) on every
side but "off". The recording calls are also timed alone (begin, seven laps, ranked with one
degraded reason, end, in a tight loop): the difference to the in-path figure is what running
between the native stages adds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.world import WorldSpec, prepare_world
from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder, build_serving_model
from ranking.core.service import RankingService, RankQuery
from ranking.features.memory import MemoryFeatureStore, read_entity_file
from ranking.limits import build_limiter
from ranking.scoring.bundle import load_bundle
from ranking.telemetry import Stats, Telemetry, build_telemetry
from ranking.telemetry import stats as st
from ranking.telemetry.call import new_recorder

CONTEXT = {"c_hour": 20.0, "c_dow": 4.0, "c_is_weekend": 0.0, "c_device": 1.0}
LAPS = (st.CONVERT, st.ADMIT, st.FETCH, st.ASSEMBLE, st.SCORE, st.SORT, st.RESPOND)


class NoRecord:
    """A record that records nothing, through C no-ops (a str's `format` ignores its
    arguments), so the "off" side runs no Python frame per stage either."""

    __slots__ = ()
    lap = "".format
    ranked = "".format
    end = "ok".format


NO_RECORD = NoRecord()
#: The issue's budget for recording, per request (issue 13).
BUDGET_NS = 10_000


def build_core() -> tuple[RankingService, list[RankQuery]]:
    world = prepare_world(WorldSpec(features=64))
    store = MemoryFeatureStore(
        {
            "user": read_entity_file(world.user_features),
            "item": read_entity_file(world.item_features),
        }
    )
    bundle = load_bundle(world.bundle)
    model = build_serving_model(bundle, store.columns("user"), store.columns("item"))
    core = RankingService(
        models=ModelHolder(model, build=lambda b: model),
        store=store,
        limiter=build_limiter("off"),
        telemetry=build_telemetry(Stats()),
        max_candidates=1000,
        fetch_share=0.5,
        inline_max_row_trees=400_000,
        executor=None,
    )
    rng = np.random.default_rng(0)
    queries = []
    for q in range(64):
        # R200's mix: 1 % of the ids are unknown, so most answers carry a degraded reason
        ids = [f"i{k}" for k in rng.choice(world.spec.n_items, 198, replace=False)]
        ids += [f"never-seen-{q}-a", f"never-seen-{q}-b"]
        user = f"u{rng.integers(world.spec.n_users)}"
        queries.append(RankQuery(candidate_ids=ids, user_id=user, context=CONTEXT))
    return core, queries


class QuietStats(Stats):
    """Stats whose `add` (the core's own counters: unknown ids, store errors) is a C no-op."""

    add = "".format  # type: ignore[assignment]


@dataclass
class Side:
    """How one side begins a call, and the telemetry the core counts its own counters into."""

    begin: Callable[[], Any]
    telemetry: Telemetry


async def one_call(core: RankingService, query: RankQuery, side: Side) -> int:
    """Thread CPU ns of one call through the core, as the transport makes it."""
    core.telemetry = side.telemetry
    cpu0 = time.thread_time_ns()
    call = side.begin()
    call.lap(st.CONVERT)
    result = await core.rank(query, Deadline.from_budget(1.0, None), call)
    call.lap(st.RESPOND)
    call.end(None)
    spent = time.thread_time_ns() - cpu0
    assert result.ids and result.degraded
    return spent


def sides(core: RankingService) -> dict[str, Side]:
    """The sides; each recorded one begins its calls as the transport does (`core.begin_call`,
    which `one_call` points at the side's telemetry) and counts into a row of its own."""
    quiet = build_telemetry(QuietStats())

    def recorded(**kw: Any) -> Side:
        tel = build_telemetry(Stats())
        tel.recorder = new_recorder(tel.stats, **kw)
        return Side(core.begin_call, tel)

    return {
        "off": Side(lambda: NO_RECORD, quiet),
        "off2": Side(lambda: NO_RECORD, quiet),
        "C": recorded(),
        "C no-cpu": recorded(cpu_every=2**62),
        "python": recorded(native=False),
    }


async def one_round(
    core: RankingService, queries: list[RankQuery], calls: int, seed: int
) -> dict[str, float]:
    """CPU ns per call of each side; the sides alternate call by call on the same queries, in
    a fresh random order each time, so no side always runs first or right after another (the
    side before leaves its garbage and its cache footprint to the next)."""
    each = sides(core)
    spent = dict.fromkeys(each, 0)
    names = list(each)
    rng = random.Random(seed)
    for i in range(calls):
        query = queries[i % len(queries)]
        rng.shuffle(names)
        for name in names:
            spent[name] += await one_call(core, query, each[name])
    return {name: spent[name] / calls for name in each}


def recording_alone(begin: Callable[[], Any], calls: int) -> float:
    """Thread CPU ns per call of exactly the recording a call does, with no work between."""
    degraded = ["features.items_unknown"]
    cpu0 = time.thread_time_ns()
    for _ in range(calls):
        call = begin()
        for stage in LAPS:
            call.lap(stage)
        call.ranked(200, 200, degraded, "v")
        call.end(None)
    return (time.thread_time_ns() - cpu0) / calls


def _q(values: list[float]) -> str:
    q = [x / 1e3 for x in statistics.quantiles(values)]
    return f"{statistics.median(values) / 1e3:+6.2f} us (quartiles {q[0]:+.2f} / {q[2]:+.2f})"


async def main(rounds: int, calls: int) -> None:
    core, queries = build_core()
    await one_round(core, queries, calls, 0)  # warm-up
    per: dict[str, list[float]] = {}
    alone: dict[str, list[float]] = {"C": [], "python": []}
    for r in range(rounds):
        got = await one_round(core, queries, calls, r)
        for name, ns in got.items():
            per.setdefault(name, []).append(ns)
        alone["C"].append(recording_alone(new_recorder(Stats()).begin, calls * 10))
        alone["python"].append(
            recording_alone(new_recorder(Stats(), native=False).begin, calls * 10)
        )
    med = statistics.median
    print(f"R200-shaped calls through the core, {rounds} rounds x {calls} calls per side")
    print(f"  CPU per call, nothing recorded: {med(per['off']) / 1e3:8.1f} us (median of rounds)")
    for name in per:
        if name != "off":
            diff = [a - b for a, b in zip(per[name], per["off"], strict=True)]
            over = sum(d > BUDGET_NS for d in diff)
            print(f"  {name:9s} - off: {_q(diff)}; rounds over 10 us: {over} of {rounds}")
    for name, values in alone.items():
        print(f"  {name} recording alone (begin, 7 laps, ranked, end): {_q(values)} per call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls))
