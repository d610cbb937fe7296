"""Explanations on demand: pred_contrib for the best items, appended to the response bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.flywheel.explain import (
    MAX_ITEMS,
    TOP_FEATURES,
    Contribution,
    Explanation,
    encode_explanations,
)
from tests.conftest import FEATURES, SmallWorld

NAMES = [f.name for f in FEATURES]


def request(explain: bool, top_k: int = 0, n: int = 30) -> pb.RankRequest:
    return pb.RankRequest(
        user_id="u4",
        candidates=[pb.Candidate(id=f"i{k * 7}") for k in range(n)],
        context={"c_hour": 18.0},
        top_k=top_k,
        explain=explain,
    )


async def test_explain_top_items(
    stub: ranking_pb2_grpc.RankingServiceStub, small_world: SmallWorld
) -> None:
    resp = await stub.Rank(request(True, top_k=4))
    assert [e.id for e in resp.explanations] == [it.id for it in resp.items]
    contrib = small_world.booster.predict(
        small_world.matrix("u4", [it.id for it in resp.items], 18.0), pred_contrib=True
    )
    for e, item, c in zip(resp.explanations, resp.items, contrib, strict=True):
        assert len(e.top) == TOP_FEATURES
        shown = [t.contribution for t in e.top]
        assert [abs(v) for v in shown] == sorted((abs(v) for v in shown), reverse=True)
        assert {t.feature for t in e.top} <= set(NAMES)
        # bias + listed + rest = the raw score (SHAP values sum to it, up to rounding).
        assert e.bias + sum(shown) + e.rest == pytest.approx(item.score, abs=1e-9)
        assert e.bias == c[-1]
        for t in e.top:
            j = NAMES.index(t.feature)
            assert t.contribution == c[j]
            row = small_world.matrix("u4", [item.id], 18.0)[0]
            assert (math.isnan(t.value) and math.isnan(row[j])) or t.value == row[j]
    assert list(resp.degraded_reasons) == []


async def test_explain_is_off_by_default_and_capped(
    stub: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    plain = await stub.Rank(request(False))
    assert len(plain.explanations) == 0
    full = await stub.Rank(request(True, n=30))
    assert len(full.explanations) == MAX_ITEMS
    assert [e.id for e in full.explanations] == [it.id for it in full.items[:MAX_ITEMS]]
    # Scores and order do not change when explanations are asked for.
    assert [(i.id, i.score) for i in full.items] == [(i.id, i.score) for i in plain.items]


def test_explain_bytes_append_to_any_response_bytes() -> None:
    """The transport seam: the explain part is separate bytes; appending them merges."""
    main = pb.RankResponse(
        items=[pb.RankedItem(id="a", score=1.5), pb.RankedItem(id="b", score=0.5)],
        model_version="m1",
        request_id="r",
    )
    explanations = [
        Explanation(
            "a", 0.1, (Contribution("u_a", 2.0, 1.0), Contribution("i_x", np.nan, 0.3)), 0.1
        )
    ]
    merged = pb.RankResponse.FromString(
        main.SerializeToString() + encode_explanations(explanations)
    )
    assert [(i.id, i.score) for i in merged.items] == [("a", 1.5), ("b", 0.5)]
    assert merged.model_version == "m1" and merged.request_id == "r"
    (e,) = merged.explanations
    assert (e.id, e.bias, e.rest) == ("a", 0.1, 0.1)
    assert [(t.feature, t.contribution) for t in e.top] == [("u_a", 1.0), ("i_x", 0.3)]
    assert math.isnan(e.top[1].value)


async def test_explain_partial_is_said_exactly_when_the_deadline_cuts_explanations(
    small_world: SmallWorld,
) -> None:
    """`explain.partial` appears only when fewer items were explained than asked for."""
    import dataclasses

    from ranking.core.deadline import Deadline
    from ranking.degraded import Degraded
    from ranking.flywheel.explain import Explainer
    from tests.core.test_service import make_core, query

    core = make_core(small_world)
    asked = dataclasses.replace(query(30), explain=True, top_k=5)
    whole = await core.rank(asked, Deadline.from_budget(5.0, 5.0))
    assert Degraded.EXPLAIN_PARTIAL not in whole.degraded
    assert whole.explanations is not None and len(whole.explanations) == 5
    # An explained item now "costs" 0.3 s: with a 1 s caller deadline only some fit.
    core._explainer = Explainer()
    core._explainer.per_item_s = 0.3
    cut = await core.rank(asked, Deadline.from_budget(5.0, 1.0))
    assert Degraded.EXPLAIN_PARTIAL in cut.degraded
    assert cut.explanations is not None and 0 < len(cut.explanations) < 5
