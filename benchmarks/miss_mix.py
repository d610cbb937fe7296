"""Why a scenario's requests read the feature store: its mix replayed through the cache's TTLs.

    python -m benchmarks.miss_mix                    # r200 at 500 req/s for 120 s
    python -m benchmarks.miss_mix r200 --rate 1000 --duration 60

A request reads Redis when one of its ids misses the cache. This replays a scenario's request
mix (its users, candidates and unknown-id fractions, the same generator the load generator
uses) at a fixed rate after the harness's server warm-up, through a model of the cache's
freshness rules with the service's defaults (`CacheSettings`: found entries fresh `ttl_s`,
unknown ids `negative_ttl_s`; the default capacity holds the whole R200 world, so nothing is
evicted and capacity is not modelled). Each request that misses is put under the first cause
that applies:

- `a known id never cached`: an id the store holds, missed for the first time;
- `a known id expired`: an id the store holds whose entry aged past `ttl_s`;
- `only unknown ids`: every id it misses is one the store does not hold (a never-seen id, or
  a negative entry that aged past `negative_ttl_s`). These reads are answered "unknown" by
  Redis, so a filter of the ids the store holds would spare them.

No server runs; the figures are counts, not timings, and are the same on any machine.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.scenario import find_scenario, load_scenario
from ranking.loadgen import RequestMix
from ranking.settings import CacheSettings

__all__ = ["CAUSES", "replay"]

CAUSES = ("a known id never cached", "a known id expired", "only unknown ids")


def replay(
    mix: RequestMix,
    *,
    rate: float,
    duration_s: float,
    warmup_rps: float,
    warmup_s: float,
    ttl_s: float,
    negative_ttl_s: float,
    seed: int = 0,
) -> dict[str, int]:
    """Requests by cause of their store read (`CAUSES`), plus "requests" and "reads"."""
    rng = np.random.default_rng(seed)
    expires: dict[str, float] = {}  # id -> monotonic expiry of its cache entry
    out = dict.fromkeys((*CAUSES, "requests", "reads"), 0)
    warm = int(warmup_rps * warmup_s)
    now = 0.0
    for k in range(warm + int(rate * duration_s)):
        now += 1.0 / (warmup_rps if k < warm else rate)
        user = mix.draw_users(rng, 1)[0]
        count = int(mix.candidates.draw(rng, 1)[0])
        ids = [f"user:{user}", *(f"item:{i}" for i in mix.draw_candidates(rng, count))]
        cause = None
        for key in ids:
            expiry = expires.get(key)
            if expiry is not None and expiry > now:
                continue
            unknown = "unknown-" in key
            expires[key] = now + (negative_ttl_s if unknown else ttl_s)
            if unknown:
                cause = cause or CAUSES[2]
            elif expiry is None:
                cause = CAUSES[0]
            elif cause != CAUSES[0]:
                cause = CAUSES[1]
        if k >= warm:
            out["requests"] += 1
            if cause is not None:
                out["reads"] += 1
                out[cause] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="?", default="r200")
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds replayed")
    args = ap.parse_args()
    sc = load_scenario(find_scenario(args.scenario))
    cache = CacheSettings.defaults()
    got = replay(
        sc.mix,
        rate=args.rate,
        duration_s=args.duration,
        warmup_rps=sc.load.server_warmup_rps,
        warmup_s=sc.load.server_warmup_s,
        ttl_s=cache.ttl_s,
        negative_ttl_s=cache.negative_ttl_s,
    )
    n = got["requests"]
    print(
        f"{sc.name} at {args.rate:g} req/s for {args.duration:g} s after the server warm-up "
        f"({sc.load.server_warmup_s:g} s at {sc.load.server_warmup_rps:g} req/s); cache TTL "
        f"{cache.ttl_s:g} s, negative TTL {cache.negative_ttl_s:g} s"
    )
    print("| requests that read the store | share of requests |")
    print("|---|---:|")
    print(f"| all | {got['reads'] / n:.1%} |")
    for c in CAUSES:
        print(f"| {c} | {got[c] / n:.1%} |")


if __name__ == "__main__":
    main()
