"""The rank kernel on R200 requests with cold and warm caches, a baseline build vs this tree.

    python -m benchmarks.score_cold                      # baseline: the code at git ref `main`
    python -m benchmarks.score_cold --baseline 5434a4e --rounds 31 --evict-kib 4096

In the service a request's scoring follows other work (gRPC, the feature fetch, other requests,
the client and Redis on the same two cores), which has taken the CPU's caches: the model's
arrays (~1 MB for R200's 500 x 63 trees) come from L3 or memory, not from where a tight loop
over one matrix leaves them. Here both builds of `ranking.scoring._rankscorer` (the baseline's
compiled from its own sources by its own setup.py, this tree's as installed) are loaded into
one process and given the same ensemble: the R200 model's, built by this tree's
`rank_build`. A request is one matrix the service assembles for R200 (200 rows, 64 features).
Per round, each build scores every request twice: "cold", right after random lines of a 64 MiB
buffer were written (`--evict-kib` of them: the other work), and "warm", straight after. The
figure is the median over interleaved rounds of the wall time per call (one thread, no I/O, so
wall time is CPU time); the two builds' scores must be equal.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import ranking.scoring._rankscorer as current
from benchmarks.baseline_build import build_baseline, interleaved_parser
from benchmarks.scorers import r200_world, realistic_rows
from ranking.scoring.quickscorer import QuickScorer

__all__ = ["ensemble_arrays"]

CANDIDATES = 200


def ensemble_arrays(model_text: str) -> dict[str, Any]:
    """The constructor arguments `rank_build` gives `RankEnsemble` for this model, taken from
    QuickScorer's own build of it (so every check of that build ran)."""
    captured: dict[str, Any] = {}
    made = current.RankEnsemble

    def capture(**kwargs: Any) -> Any:
        captured.update(kwargs)
        return made(**kwargs)

    current.RankEnsemble = capture  # type: ignore[misc,assignment]
    try:
        QuickScorer.from_model_text(model_text + "\n")  # a text of its own: not memoised
    finally:
        current.RankEnsemble = made  # type: ignore[misc]
    if not captured:
        raise SystemExit("the model does not take the rank kernel")
    return captured


def main() -> None:
    ap = interleaved_parser(__doc__, rounds=21, batch=100, per="requests")
    ap.add_argument("--evict-kib", type=int, default=2048, help="other work before a cold call")
    args = ap.parse_args()

    _, world = r200_world()
    arrays = ensemble_arrays(Path(world.model_file).read_text())
    stacked = realistic_rows(args.batch, seed=0)
    requests = [
        np.ascontiguousarray(stacked[k : k + CANDIDATES])
        for k in range(0, len(stacked), CANDIDATES)
    ]
    with tempfile.TemporaryDirectory(prefix="score-cold-") as tmp:
        old = build_baseline(args.baseline, Path(tmp), "ranking.scoring._rankscorer")
        try:
            builds = {
                "baseline": old.RankEnsemble(**arrays),
                "this tree": current.RankEnsemble(**arrays),
            }
        except TypeError as exc:
            raise SystemExit(f"the baseline's RankEnsemble takes other arrays: {exc}") from None
        rng = np.random.default_rng(0)
        other = np.zeros(64 << 20, np.uint8)
        lines = args.evict_kib * 1024 // 64
        per: dict[tuple[str, str], list[float]] = {
            (label, mode): [] for label in builds for mode in ("cold", "warm")
        }
        for r in range(args.rounds):
            order = list(builds) if r % 2 else list(builds)[::-1]
            for label in order:
                ens = builds[label]
                cold = warm = 0
                for x in requests:
                    other[rng.integers(0, len(other) // 64, lines) * 64] += 1
                    t0 = time.perf_counter_ns()
                    got = ens.predict(x)
                    t1 = time.perf_counter_ns()
                    again = ens.predict(x)
                    t2 = time.perf_counter_ns()
                    cold += t1 - t0
                    warm += t2 - t1
                    if r == 0 and not np.array_equal(got, again):
                        raise SystemExit(f"{label}: two calls on one matrix differ")
                per[(label, "cold")].append(cold / len(requests) / 1e3)
                per[(label, "warm")].append(warm / len(requests) / 1e3)
        for x in requests:
            if not np.array_equal(builds["baseline"].predict(x), builds["this tree"].predict(x)):
                raise SystemExit("the two builds scored a request differently")
    print(
        f"Rank kernel, R200 model ({arrays['num_trees']} trees), {CANDIDATES} R200 rows per call; "
        f"{args.rounds} interleaved rounds x {args.batch} requests; cold = after writing "
        f"{args.evict_kib} KiB of random lines; median us per call (quartiles)"
    )
    print("| build | cold us | warm us |\n|---|---:|---:|")
    med = {k: statistics.median(v) for k, v in per.items()}
    for label in builds:
        cells = []
        for mode in ("cold", "warm"):
            q1, q3 = np.percentile(per[(label, mode)], [25, 75])
            cells.append(f"{med[(label, mode)]:.1f} ({q1:.1f}-{q3:.1f})")
        name = args.baseline if label == "baseline" else "working tree"
        print(f"| {label} ({name}) | {cells[0]} | {cells[1]} |")
    for mode in ("cold", "warm"):
        ratio = med[("baseline", mode)] / med[("this tree", mode)]
        print(f"{mode}: this tree is {ratio:.2f}x as fast as the baseline")


if __name__ == "__main__":
    main()
