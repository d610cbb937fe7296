"""What recording a call costs: CPU per R200-shaped request through the core, telemetry on/off.

    python -m benchmarks.telemetry_overhead [--rounds 40] [--calls 200]

One process, one event loop, the R200 world and model (200 candidates, 64 features, 500 x 63
trees) in the in-process store. Each round runs `--calls` pairs of calls on the same query, one
with the real `CallRecord` (stage laps, histograms, outcome counters, CPU sampled 1 in 8) and one
with a record that does nothing, alternating which goes first, and sums the event-loop thread's
CPU time of each side; the figure is the median over rounds of (on - off). That difference is a
few microseconds under a ~1.2 ms call, so it is noisy on a shared machine; the recording calls
are also timed alone (the exact sequence a call makes: begin, seven laps, ranked, end), which
is the cost itself, beside the per-stage timers they replaced.
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


class PreviousRecord(NoRecord):
    """What the per-stage timers this replaced did at the same points (until 2026-12-01): a
    stage object per stage reading the wall and thread-CPU clocks on entry and exit and adding
    into a numpy row, plus the counters; for the in-context comparison."""

    __slots__ = ("_cpu0", "_t0", "_tot_cpu", "_tot_t")
    ROW = np.zeros(64)

    def __init__(self) -> None:
        self.ROW[0] += 1
        self._tot_cpu, self._tot_t = time.thread_time_ns(), time.perf_counter_ns()
        self._cpu0, self._t0 = time.thread_time_ns(), time.perf_counter_ns()

    def lap(self, stage: int) -> None:
        row = self.ROW
        row[stage + 1] += time.perf_counter_ns() - self._t0
        row[stage + 17] += time.thread_time_ns() - self._cpu0
        self._cpu0, self._t0 = time.thread_time_ns(), time.perf_counter_ns()

    def ranked(self, candidates: int, scored: int, degraded: Sequence[str], mv: str) -> None:
        row = self.ROW
        row[40] += 1
        row[41] += candidates
        row[42] += scored
        row[43] += candidates - scored

    def end(self, exc: BaseException | None) -> str:
        self.ROW[9] += time.perf_counter_ns() - self._tot_t
        self.ROW[25] += time.thread_time_ns() - self._tot_cpu
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


async def one_call(core: RankingService, query: RankQuery, on: bool, previous: bool = False) -> int:
    """Thread CPU ns of one call through the core, recorded (or the previous way) or not."""
    cpu0 = time.thread_time_ns()
    call = (PreviousRecord() if previous else core.begin_call()) if on else NoRecord()
    call.lap(st.CONVERT)
    result = await core.rank(query, Deadline.from_budget(1.0, None), call)
    call.lap(st.RESPOND)
    call.end(None)
    spent = time.thread_time_ns() - cpu0
    assert result.ids
    return spent


async def one_round(
    core: RankingService,
    queries: list[RankQuery],
    calls: int,
    flip: bool,
    a_on: bool = True,
    previous: bool = False,
) -> tuple[float, float]:
    """(A, B) CPU ns per call, A recorded (or not, `a_on` False: the A/A control) and B not;
    the sides alternate call by call, on the same queries."""
    spent = [0, 0]
    for i in range(calls):
        query = queries[i % len(queries)]
        for side in (0, 1) if (i % 2 == 0) != flip else (1, 0):
            spent[side] += await one_call(core, query, a_on and side == 0, previous)
    return spent[0] / calls, spent[1] / calls


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


def previous_recording_alone(calls: int) -> float:
    """The same for the timers this replaced (until 2026-12-01): a context manager per stage
    reading the wall and the thread-CPU clock on entry and exit, adding into a numpy row."""
    row = np.zeros(64)
    perf, cpu = time.perf_counter_ns, time.thread_time_ns

    class Stage:
        __slots__ = ("_cpu", "_i", "_start")

        def __init__(self, i: int) -> None:
            self._i = i

        def __enter__(self) -> Stage:
            self._cpu = cpu()
            self._start = perf()
            return self

        def __exit__(self, *exc: object) -> None:
            row[self._i] += perf() - self._start
            row[self._i + 16] += cpu() - self._cpu

    cpu0 = time.thread_time_ns()
    for _ in range(calls):
        row[0] += 1  # requests
        with Stage(8):  # total
            for i in range(1, 7):  # convert, fetch, assemble, score, sort, respond
                with Stage(i):
                    pass
            row[1] += 1  # ok
            row[2] += 200  # candidates
            row[3] += 200  # scored
            row[4] += 0  # unscored
    return (time.thread_time_ns() - cpu0) / calls


async def main(rounds: int, calls: int) -> None:
    core, queries = build_core()
    await one_round(core, queries, calls, False)  # warm-up
    on, off, diff, control, alone, before, prev = [], [], [], [], [], [], []
    for r in range(rounds):
        got_on, got_off = await one_round(core, queries, calls, r % 2 == 1)
        on.append(got_on)
        off.append(got_off)
        diff.append(got_on - got_off)
        a, b = await one_round(core, queries, calls, r % 2 == 1, a_on=False)
        control.append(a - b)
        a, b = await one_round(core, queries, calls, r % 2 == 1, previous=True)
        prev.append(a - b)
        alone.append(recording_alone(calls * 10))
        before.append(previous_recording_alone(calls * 10))
    med = statistics.median
    q = statistics.quantiles
    print(f"R200-shaped calls through the core, {rounds} rounds x {calls} calls per side (pairs)")
    print(f"  CPU per call, telemetry on:  {med(on) / 1e3:8.1f} us (median of rounds)")
    print(f"  CPU per call, telemetry off: {med(off) / 1e3:8.1f} us")
    print(f"  on - off: median {med(diff) / 1e3:+.1f} us, quartiles "
          f"{q(diff)[0] / 1e3:+.1f} / {q(diff)[2] / 1e3:+.1f} us")  # fmt: skip
    print(f"  previous timers - off: median {med(prev) / 1e3:+.1f} us, quartiles "
          f"{q(prev)[0] / 1e3:+.1f} / {q(prev)[2] / 1e3:+.1f} us")  # fmt: skip
    print(f"  off - off (the method's own noise): median {med(control) / 1e3:+.1f} us, quartiles "
          f"{q(control)[0] / 1e3:+.1f} / {q(control)[2] / 1e3:+.1f} us")  # fmt: skip
    print(f"  the recording alone (begin, 7 laps, ranked, end): {med(alone) / 1e3:.2f} us "
          f"per call (quartiles {q(alone)[0] / 1e3:.2f} / {q(alone)[2] / 1e3:.2f})")  # fmt: skip
    print(f"  the previous Stage timers alone (no histograms): {med(before) / 1e3:.2f} us per call "
          f"(quartiles {q(before)[0] / 1e3:.2f} / {q(before)[2] / 1e3:.2f})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--cpu-every",
        type=int,
        default=st.CPU_SAMPLE_EVERY,
        help="read the thread-CPU clock for one call in this many (the service's default)",
    )
    args = parser.parse_args()
    st.CPU_SAMPLE_EVERY = args.cpu_every
    asyncio.run(main(args.rounds, args.calls))
