"""What recording a call costs: CPU per R200-shaped request through the core, telemetry on/off.

    python -m benchmarks.telemetry_overhead [--rounds 30] [--calls 200]

One process, one event loop, the R200 world and model (200 candidates, 64 features, 500 x 63
trees) in the in-process store. Each round runs `--calls` calls with the real `CallRecord`
(stage laps, histograms, outcome counters, CPU sampled 1 in 8) and as many with a record that
does nothing, interleaved, and takes the event-loop thread's CPU time per call; the figure is
the median over rounds of (on - off). The A/B difference is a few microseconds under a
~1.5 ms call, so it is noisy on a shared machine; the recording calls are also timed alone
(the exact sequence a call makes: begin, seven laps, ranked, end), which is the cost itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.world import WorldSpec, prepare_world
from ranking.core.deadline import Deadline
from ranking.core.models import ModelHolder, build_serving_model
from ranking.core.service import RankingService, RankQuery
from ranking.features.memory import MemoryFeatureStore, read_entity_file
from ranking.limits import build_limiter
from ranking.scoring.bundle import load_bundle
from ranking.telemetry import Stats, build_telemetry
from ranking.telemetry import stats as st
from ranking.telemetry.call import CallRecord

CONTEXT = {"c_hour": 20.0, "c_dow": 4.0, "c_is_weekend": 0.0, "c_device": 1.0}
LAPS = (st.CONVERT, st.ADMIT, st.FETCH, st.ASSEMBLE, st.SCORE, st.SORT, st.RESPOND)


class NoRecord(CallRecord):
    """A call record that records nothing: the "telemetry off" side."""

    def __init__(self) -> None:  # no super().__init__: nothing is counted
        pass

    def lap(self, stage: int) -> None:
        pass

    def ranked(self, candidates: int, scored: int, degraded: Sequence[str], mv: str) -> None:
        pass

    def end(self, exc: BaseException | None) -> str:
        return "ok"


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
    queries = [
        RankQuery(
            candidate_ids=[f"i{k}" for k in rng.choice(world.spec.n_items, 200, replace=False)],
            user_id=f"u{rng.integers(world.spec.n_users)}",
            context=CONTEXT,
        )
        for _ in range(64)
    ]
    return core, queries


async def one_side(core: RankingService, queries: list[RankQuery], calls: int, on: bool) -> float:
    """Thread CPU ns per call for `calls` calls."""
    cpu0 = time.thread_time_ns()
    for i in range(calls):
        call = core.begin_call() if on else NoRecord()
        call.lap(st.CONVERT)
        result = await core.rank(queries[i % len(queries)], Deadline.from_budget(1.0, None), call)
        assert result.ids
        call.lap(st.RESPOND)
        call.end(None)
    return (time.thread_time_ns() - cpu0) / calls


def recording_alone(calls: int) -> float:
    """Thread CPU ns per call of exactly the recording a call does, with no work between."""
    tel = build_telemetry(Stats())
    cpu0 = time.thread_time_ns()
    for _ in range(calls):
        call = CallRecord(tel)
        for stage in LAPS:
            call.lap(stage)
        call.ranked(200, 200, (), "v")
        call.end(None)
    return (time.thread_time_ns() - cpu0) / calls


async def main(rounds: int, calls: int) -> None:
    core, queries = build_core()
    await one_side(core, queries, calls, True)  # warm-up
    await one_side(core, queries, calls, False)
    on, off, diff, alone = [], [], [], []
    for r in range(rounds):
        sides = (True, False) if r % 2 == 0 else (False, True)
        got = {side: await one_side(core, queries, calls, side) for side in sides}
        on.append(got[True])
        off.append(got[False])
        diff.append(got[True] - got[False])
        alone.append(recording_alone(calls * 10))
    med = statistics.median
    q = statistics.quantiles
    print(f"R200-shaped calls through the core, {rounds} rounds x {calls} calls per side")
    print(f"  CPU per call, telemetry on:  {med(on) / 1e3:8.1f} us (median of rounds)")
    print(f"  CPU per call, telemetry off: {med(off) / 1e3:8.1f} us")
    print(f"  on - off: median {med(diff) / 1e3:+.1f} us, quartiles "
          f"{q(diff)[0] / 1e3:+.1f} / {q(diff)[2] / 1e3:+.1f} us")  # fmt: skip
    print(f"  the recording alone (begin, 7 laps, ranked, end): {med(alone) / 1e3:.2f} us "
          f"per call (quartiles {q(alone)[0] / 1e3:.2f} / {q(alone)[2] / 1e3:.2f})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls))
