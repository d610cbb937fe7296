"""Property-based requests through a real server (`ranking serve`, its own process).

Whatever hypothesis sends through the public gRPC API, the answer's status is one of those the
README documents ("Statuses"; never UNKNOWN or INTERNAL), an OK answer is sorted (scored items
by descending score, then the unscored), holds only ids from the request, each once, honours
top_k and echoes request_id, and the server is alive and answering afterwards.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from tests.conftest import SmallWorld, free_port
from tests.server.test_lifecycle import LOGS, start_server, stop, wait_serving

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}

_text = st.text(max_size=12)
_ids = st.one_of(
    st.integers(0, 600).map(lambda k: f"i{k}"),  # known (< 500) and unknown items
    _text,
)
_doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-40, 1e300, math.nan]),
)
_names = st.one_of(st.sampled_from(["q_match", "i_x", "i_pop", "c_hour", "u_a"]), _text)


@st.composite
def requests(draw: st.DrawFn) -> pb.RankRequest:
    """Mostly well-formed requests (so the ranking path runs), the rest anything at all."""
    tame = draw(st.booleans()) or draw(st.booleans())  # 3 in 4
    if tame:
        ids = draw(st.lists(st.integers(0, 600).map(lambda k: f"i{k}"), unique=True, max_size=40))
        names = draw(st.sampled_from([[], ["q_match"]]))
        context_keys: st.SearchStrategy[str] = st.just("c_hour")
        doubles = st.one_of(st.floats(allow_infinity=False), st.just(math.nan))
    else:
        ids = draw(st.lists(_ids, max_size=40))
        names = draw(st.lists(_names, max_size=3))
        context_keys = st.one_of(st.just("c_hour"), _text)
        doubles = _doubles
    width = len(names)
    candidates = []
    for cid in ids:
        k = width if tame else draw(st.sampled_from([width, width, 0, width + 1]))
        values = draw(st.lists(doubles, min_size=k, max_size=k))
        candidates.append(pb.Candidate(id=cid, feature_values=values))
    return pb.RankRequest(
        request_id=draw(_text),
        user_id=draw(st.one_of(st.integers(0, 60).map(lambda k: f"u{k}"), _text)),
        candidates=candidates,
        context=draw(st.dictionaries(context_keys, doubles, max_size=3)),
        top_k=draw(st.integers(0 if tame else -3, 50)),
        feature_names=names,
        strict=draw(st.booleans()),
    )


@pytest.fixture(scope="module")
def target(small_world: SmallWorld) -> Iterator[str]:
    port = free_port()
    proc = start_server(small_world, port, "--workers", "1")
    try:
        import asyncio

        asyncio.run(wait_serving(port, proc))
        yield f"127.0.0.1:{port}"
        assert proc.poll() is None, LOGS[proc.pid].read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def stub(target: str) -> Iterator[ranking_pb2_grpc.RankingServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_any_request_gets_a_documented_answer(
    stub: ranking_pb2_grpc.RankingServiceStub, request: pb.RankRequest
) -> None:
    try:
        response = stub.Rank(request, timeout=10)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        event(f"status {code.name}")
        assert code in DOCUMENTED, (code, exc.details())  # type: ignore[attr-defined]
        assert "Traceback" not in (exc.details() or "")  # type: ignore[attr-defined]
        return
    event("status OK")
    sent = [c.id for c in request.candidates]
    got = [item.id for item in response.items]
    assert response.request_id == request.request_id
    assert len(set(got)) == len(got)
    assert set(got) <= set(sent)
    n = len(sent)
    assert len(got) == (min(request.top_k, n) if request.top_k > 0 else n)
    scored = [item.score for item in response.items if not item.unscored]
    flags = [item.unscored for item in response.items]
    assert flags == sorted(flags)  # scored first, then the unscored
    assert all(math.isfinite(s) for s in scored)
    assert scored == sorted(scored, reverse=True)
    assert response.model_version == "small-v1"


def test_the_server_still_answers_after_fuzzing(
    stub: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    response = stub.Rank(
        pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(20)]),
        timeout=10,
    )
    assert len(response.items) == 20
