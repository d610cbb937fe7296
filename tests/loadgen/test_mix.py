"""Request mixes: candidate counts, id spaces, skew, unknown ids, prebuilt requests."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ranking.api.v1 import ranking_pb2
from ranking.loadgen import CandidateCount, LoadConfig, RankPayload, RequestMix


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("200", CandidateCount((200,))),
        (200, CandidateCount((200,))),
        ("50-200", CandidateCount((50, 200), uniform=True)),
        ({"min": 50, "max": 200}, CandidateCount((50, 200), uniform=True)),
        ("50:1,200:3", CandidateCount((50, 200), (1.0, 3.0))),
        ({"values": [50, 200], "weights": [1, 3]}, CandidateCount((50, 200), (1.0, 3.0))),
    ],
)
def test_candidate_counts_parse(spec: object, expected: CandidateCount) -> None:
    assert CandidateCount.parse(spec) == expected


def test_candidate_count_distributions() -> None:
    rng = np.random.default_rng(0)
    uniform = CandidateCount.parse("50-200").draw(rng, 5000)
    assert uniform.min() >= 50 and uniform.max() <= 200
    assert uniform.mean() == pytest.approx(125, rel=0.03)
    weighted = CandidateCount.parse("50:1,200:3").draw(rng, 8000)
    assert set(weighted.tolist()) == {50, 200}
    assert np.mean(weighted == 200) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError):
        CandidateCount.parse("0")


def test_requests_are_prebuilt_with_unique_known_ids() -> None:
    mix = RequestMix(n_users=100, n_items=1000, candidates=CandidateCount.parse("20-40"))
    raw = RankPayload(mix).build(50, seed=1)
    assert len(raw) == 50 and all(isinstance(r, bytes) for r in raw)
    for r in raw:
        req = ranking_pb2.RankRequest.FromString(r)
        ids = [c.id for c in req.candidates]
        assert 20 <= len(ids) <= 40
        assert len(set(ids)) == len(ids)
        assert all(i.startswith("i") and 0 <= int(i[1:]) < 1000 for i in ids)
        assert req.user_id.startswith("u") and 0 <= int(req.user_id[1:]) < 100
    assert RankPayload(mix).build(50, seed=1) == raw  # deterministic per seed


def test_zipf_skews_users_and_items() -> None:
    mix = RequestMix(
        n_users=1000,
        n_items=5000,
        users="zipf",
        items="zipf",
        zipf_s=1.2,
        candidates=CandidateCount.fixed(50),
    )
    rng = np.random.default_rng(2)
    users = Counter(mix.draw_users(rng, 5000))
    assert users.most_common(1)[0][0] == "u0"
    assert users["u0"] > 10 * 5000 / 1000  # far above the uniform share
    items = mix.draw_candidates(rng, 50)
    assert len(set(items)) == 50
    assert "i0" in items  # the hottest item is almost surely drawn


def test_unknown_fractions_and_prefixes() -> None:
    mix = RequestMix(
        n_users=10,
        n_items=500,
        user_prefix="user-",
        item_prefix="item-",
        unknown_user_fraction=0.5,
        unknown_item_fraction=0.2,
        candidates=CandidateCount.fixed(100),
    )
    rng = np.random.default_rng(3)
    users = mix.draw_users(rng, 2000)
    assert np.mean(["unknown" in u for u in users]) == pytest.approx(0.5, abs=0.05)
    assert all(u.startswith("user-") for u in users)
    items = [i for _ in range(20) for i in mix.draw_candidates(rng, 100)]
    assert np.mean(["unknown" in i for i in items]) == pytest.approx(0.2, abs=0.04)


def test_mix_and_config_check_their_ranges() -> None:
    with pytest.raises(ValueError):
        RequestMix(n_items=10, candidates=CandidateCount.fixed(20))
    with pytest.raises(ValueError):
        RequestMix(unknown_item_fraction=1.5)
    with pytest.raises(ValueError):
        LoadConfig(rate_rps=0)
    with pytest.raises(ValueError):
        LoadConfig(duration_s=1, warmup_s=1)
    with pytest.raises(ValueError):
        LoadConfig(mode="closed", concurrency=1, processes=2)


def test_mix_from_a_scenario_table() -> None:
    mix = RequestMix.from_mapping(
        {
            "n_users": 5,
            "n_items": 300,
            "candidates": {"min": 10, "max": 20},
            "users": "zipf",
            "context": {"hour_of_day": 12},
            "ignored": 1,
        }
    )
    assert mix.candidates == CandidateCount((10, 20), uniform=True)
    assert mix.context == {"hour_of_day": 12.0}


@pytest.mark.parametrize(
    "reasons", [(), ("features.stale",), ("features.items_unknown", "budget.partial_scoring")]
)
def test_degraded_reasons_read_like_the_full_parse(reasons: tuple[str, ...]) -> None:
    """The reasons-only view of a response reads what `RankResponse.FromString` reads,
    whatever else the response holds (items before, fields after)."""
    response = ranking_pb2.RankResponse(
        model_version="v1", degraded_reasons=list(reasons), request_id="r-1"
    )
    response.items.extend(
        ranking_pb2.RankedItem(id=f"i{j}", score=j / 7, unscored=j % 3 == 0) for j in range(200)
    )
    raw = response.SerializeToString()
    assert RankPayload().degraded_reasons(raw) == reasons
    assert RankPayload().degraded_reasons(raw) == tuple(
        ranking_pb2.RankResponse.FromString(raw).degraded_reasons
    )
    assert RankPayload().degraded_reasons(b"") == ()
