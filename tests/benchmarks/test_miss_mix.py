"""benchmarks.miss_mix: each request that misses is counted under the right cause."""

from __future__ import annotations

from benchmarks.miss_mix import CAUSES, replay
from ranking.loadgen import RequestMix

NEVER, EXPIRED, UNKNOWN = CAUSES


def run(mix: RequestMix, *, ttl_s: float = 1e9, warmup_s: float = 0.0) -> dict[str, int]:
    """Two seconds at 100 req/s after `warmup_s` at 100 req/s; negative entries never expire."""
    return replay(
        mix,
        rate=100.0,
        duration_s=2.0,
        warmup_rps=100.0,
        warmup_s=warmup_s,
        ttl_s=ttl_s,
        negative_ttl_s=1e9,
    )


def test_a_world_that_fits_is_read_only_until_every_id_was_seen() -> None:
    mix = RequestMix(n_users=2, n_items=200)  # every request names all 200 items
    got = run(mix)
    assert got["requests"] == 200
    assert got[NEVER] == got["reads"] >= 1  # the first request; the second user's first
    assert got["reads"] <= 2 and got[EXPIRED] == got[UNKNOWN] == 0


def test_expiry_is_a_cause_of_its_own() -> None:
    mix = RequestMix(n_users=1, n_items=200)
    got = run(mix, ttl_s=0.5, warmup_s=1.0)  # warmed, then every entry expires twice a second
    assert got[NEVER] == 0 and got[UNKNOWN] == 0
    assert 2 * 2 <= got[EXPIRED] == got["reads"] <= 2 * 2 + 1


def test_requests_missing_only_unknown_ids_are_the_filterable_ones() -> None:
    mix = RequestMix(n_users=1, n_items=200, unknown_item_fraction=0.05)
    got = run(mix, warmup_s=1.0)  # known ids all cached in the warm-up, forever fresh
    assert got[NEVER] == got[EXPIRED] == 0
    assert got[UNKNOWN] == got["reads"] == got["requests"]  # each draws fresh unknown ids
