"""The feature cache's native lookup of one R200 request, with cold caches, baseline vs this tree.

    python -m benchmarks.index_cold                      # baseline: the code at git ref `main`
    python -m benchmarks.index_cold --baseline b533e5f --rounds 31

In the service the lookup of a request's 200 candidates runs after other work (gRPC, the
scorer, other requests) has taken the CPU's caches and TLB, so its ids land on memory that is
not cached: a tight loop over the same ids measures something else. Here both builds of
`ranking.features._index` (the baseline's compiled from its own sources by its own setup.py
into a temporary directory, this tree's as installed) are loaded into one process and each
fills an index like R200's cache: 50,000 items of 32 float32 columns in an index of the
service's default capacity. A request is 200 distinct Zipf ids (s = 1.1), gathered into a
200 x 64 float64 matrix; before every lookup, random lines of a 64 MiB buffer are written (the
"other work"). The figure is the median over interleaved rounds of the wall time per lookup
(one thread, no I/O, so wall time is CPU time); the two builds' matrices must be equal.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import ranking.features._index as current
from benchmarks.baseline_build import build_baseline, interleaved_parser
from ranking.features.index import index_keys
from ranking.ids import Ids
from ranking.settings import CacheSettings

N_ITEMS = 50_000
COLUMNS = 32
CANDIDATES = 200
MODEL_WIDTH = 64


def zipf_requests(rng: np.random.Generator, count: int) -> list[list[int]]:
    """`count` requests of CANDIDATES distinct Zipf-drawn item numbers."""
    out = []
    for _ in range(count):
        seen: dict[int, None] = {}
        while len(seen) < CANDIDATES:
            for k in np.minimum(rng.zipf(1.1, CANDIDATES), N_ITEMS) - 1:
                seen.setdefault(int(k))
        out.append(list(seen)[:CANDIDATES])
    return out


def main() -> None:
    args = interleaved_parser(__doc__, rounds=21, batch=300, per="lookups").parse_args()

    with tempfile.TemporaryDirectory(prefix="index-cold-") as tmp:
        builds = {
            "baseline": build_baseline(args.baseline, Path(tmp), "ranking.features._index"),
            "this tree": current,
        }
        rng = np.random.default_rng(0)
        names = [f"item-{k}" for k in range(N_ITEMS)]
        rows = rng.standard_normal((N_ITEMS, COLUMNS)).astype(np.float32)
        capacity = CacheSettings.defaults().capacity
        indexes = {}
        for label, module in builds.items():
            ix = module.Index(capacity, COLUMNS)
            for s in range(0, N_ITEMS, 5000):
                part = slice(s, s + 5000)
                ix.insert(
                    index_keys(Ids.from_strs(names[part])),
                    rows[part],
                    np.ones(5000, np.bool_),
                    np.zeros(5000, np.bool_),
                    0.0,
                    1e9,
                    1e9,
                )
            indexes[label] = ix
        requests = []
        for picks in zipf_requests(rng, args.batch):
            packed = Ids.from_strs([names[k] for k in picks])
            requests.append(index_keys(Ids(packed.data, packed.offsets)))
        dst = np.arange(MODEL_WIDTH - COLUMNS, MODEL_WIDTH, dtype=np.int64)
        src = np.arange(COLUMNS, dtype=np.int64)
        other = np.zeros(64 << 20, np.uint8)
        per: dict[str, list[float]] = {label: [] for label in indexes}
        last: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            order = list(indexes) if r % 2 else list(indexes)[::-1]
            for label in order:
                ix = indexes[label]
                total = 0
                for keys in requests:
                    other[rng.integers(0, len(other), 4096)] += 1
                    out = np.zeros((CANDIDATES, MODEL_WIDTH))
                    state = np.empty(CANDIDATES, np.int8)
                    t0 = time.perf_counter_ns()
                    ix.lookup(keys, 1.0, state, out, dst, src)
                    total += time.perf_counter_ns() - t0
                per[label].append(total / len(requests) / 1e3)
                last[label] = out
        if not np.array_equal(last["baseline"], last["this tree"]):
            raise SystemExit("the two builds gathered different matrices")
    med = {label: statistics.median(v) for label, v in per.items()}
    print(
        f"Lookup of {CANDIDATES} cold ids into a {CANDIDATES} x {MODEL_WIDTH} matrix, "
        f"{args.rounds} interleaved rounds x {args.batch} lookups, median us per lookup"
    )
    print("| build | us | quartiles |\n|---|---:|---|")
    for label, v in per.items():
        q1, q3 = np.percentile(v, [25, 75])
        print(
            f"| {label} ({args.baseline if label == 'baseline' else 'working tree'}) "
            f"| {med[label]:.1f} | {q1:.1f}-{q3:.1f} |"
        )
    print(f"this tree / baseline: {med['this tree'] / med['baseline']:.2f}x")


if __name__ == "__main__":
    main()
