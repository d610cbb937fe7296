"""Transport tests: a real grpc.aio server on a free port, called with a real client."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.server.app import App
from tests.conftest import SmallWorld


def request(uid: str, ids: list[str], **kw: object) -> pb.RankRequest:
    return pb.RankRequest(
        user_id=uid,
        candidates=[pb.Candidate(id=i) for i in ids],
        **kw,  # type: ignore[arg-type]
    )


async def test_ranks_like_lightgbm(
    stub: ranking_pb2_grpc.RankingServiceStub, small_world: SmallWorld
) -> None:
    ids = [f"i{k}" for k in range(0, 400, 2)]
    resp = await stub.Rank(request("u5", ids, context={"c_hour": 9.0}, request_id="r-1"))
    expected = small_world.booster.predict(small_world.matrix("u5", ids, 9.0), raw_score=True)
    order = np.argsort(-expected, kind="stable")
    assert [it.id for it in resp.items] == [ids[i] for i in order]
    np.testing.assert_array_equal([it.score for it in resp.items], expected[order])
    assert resp.model_version == "small-v1"
    assert resp.request_id == "r-1"
    assert list(resp.degraded_reasons) == []
    assert not any(it.unscored for it in resp.items)


async def test_context_default_and_stored_nan(
    stub: ranking_pb2_grpc.RankingServiceStub, small_world: SmallWorld
) -> None:
    # u3 has a stored NaN; c_hour is not sent so the bundle default (12) applies.
    ids = ["i1", "i2", "i3"]
    resp = await stub.Rank(request("u3", ids))
    expected = small_world.booster.predict(small_world.matrix("u3", ids, 12.0), raw_score=True)
    assert sorted(it.score for it in resp.items) == sorted(expected.tolist())


async def test_top_k(stub: ranking_pb2_grpc.RankingServiceStub) -> None:
    ids = [f"i{k}" for k in range(50)]
    full = await stub.Rank(request("u1", ids))
    top = await stub.Rank(request("u1", ids, top_k=5))
    assert [it.id for it in top.items] == [it.id for it in full.items[:5]]
    scores = [it.score for it in full.items]
    assert scores == sorted(scores, reverse=True)


async def test_unknown_ids_are_degraded_not_errors(
    stub: ranking_pb2_grpc.RankingServiceStub, small_world: SmallWorld
) -> None:
    ids = ["i1", "nope-1", "i2", "nope-2"]
    resp = await stub.Rank(request("ghost", ids, context={"c_hour": 3.0}))
    assert set(resp.degraded_reasons) == {"features.user_unknown", "features.items_unknown"}
    expected = small_world.booster.predict(small_world.matrix("ghost", ids, 3.0), raw_score=True)
    got = {it.id: it.score for it in resp.items}
    assert [got[i] for i in ids] == expected.tolist()


async def test_inline_values_override_and_partial(
    stub: ranking_pb2_grpc.RankingServiceStub, small_world: SmallWorld
) -> None:
    # Candidate 0 sends q_match and overrides i_x; candidate 1 sends nothing inline.
    req = pb.RankRequest(
        user_id="u2",
        feature_names=["q_match", "i_x"],
        candidates=[
            pb.Candidate(id="i10", feature_values=[0.7, 5.0]),
            pb.Candidate(id="i11"),
        ],
        context={"c_hour": 1.0},
    )
    resp = await stub.Rank(req)
    m = small_world.matrix("u2", ["i10", "i11"], 1.0)
    m[0, 8] = 0.7
    m[0, 4] = 5.0
    expected = small_world.booster.predict(m, raw_score=True)
    got = {it.id: it.score for it in resp.items}
    assert [got["i10"], got["i11"]] == expected.tolist()


BAD = [
    (request("u1", []), "candidates"),
    (request("u1", ["i1", "i1"]), "duplicate"),
    (request("u1", ["i1", ""]), "non-empty"),
    (request("u1", ["i1"], top_k=-1), "top_k"),
    (request("u1", ["i1"], context={"nope": 1.0}), "unknown"),
    (request("u1", ["i1"], context={"c_hour": math.inf}), "finite"),
    (
        pb.RankRequest(
            user_id="u1",
            feature_names=["q_match"],
            candidates=[pb.Candidate(id="i1", feature_values=[1.0, 2.0])],
        ),
        "feature_values",
    ),
    (
        pb.RankRequest(
            user_id="u1",
            feature_names=["zzz"],
            candidates=[pb.Candidate(id="i1", feature_values=[1.0])],
        ),
        "feature_names",
    ),
    (
        pb.RankRequest(
            user_id="u1",
            feature_names=["q_match"],
            candidates=[pb.Candidate(id="i1", feature_values=[-math.inf])],
        ),
        "finite",
    ),
    (
        pb.RankRequest(
            user_id="u1",
            feature_names=["u_a"],
            candidates=[pb.Candidate(id="i1", feature_values=[1])],
        ),
        "per-candidate",
    ),
    (
        pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id="i1", feature_values=[1.0])]),
        "without",
    ),
]


@pytest.mark.parametrize(("req", "needle"), BAD)
async def test_bad_input_is_invalid_argument(
    stub: ranking_pb2_grpc.RankingServiceStub, req: pb.RankRequest, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Rank(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    # ... and the server keeps serving.
    ok = await stub.Rank(request("u1", ["i1", "i2"]))
    assert len(ok.items) == 2


async def test_too_many_candidates(small_world: SmallWorld) -> None:
    from tests.conftest import small_settings

    app = App(small_settings(small_world, max_candidates=10))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Rank(request("u1", [f"i{k}" for k in range(11)]))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 10" in (info.value.details() or "")
            assert len((await stub.Rank(request("u1", ["i1"]))).items) == 1
    finally:
        await app.stop(0.5)


async def test_health_and_reflection(server: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "ranking.v1.RankingService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {s.name for s in answer.list_services_response.service}
        assert {"ranking.v1.RankingService", "grpc.health.v1.Health"} <= names
        call2 = refl.ServerReflectionInfo()
        await call2.write(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ranking.v1.RankRequest")
        )
        answer2 = await call2.read()
        await call2.done_writing()
        assert answer2.file_descriptor_response.file_descriptor_proto
