"""Converters: bytes in, `RankQuery` out; `RankResult` in, bytes out (the native codec)."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.core.service import RankResult
from ranking.errors import InvalidRequest
from ranking.ids import Ids
from ranking.server.converters import to_query, to_response


def make(ids: list[str], stray: int | None = None, **kw: object) -> pb.RankRequest:
    req = pb.RankRequest(candidates=[pb.Candidate(id=i) for i in ids], **kw)  # type: ignore[arg-type]
    if stray is not None:
        req.candidates[stray].feature_values.append(0.0)
    return req


def decode(req: pb.RankRequest | bytes) -> object:
    body = req if isinstance(req, bytes) else req.SerializeToString()
    return to_query(body, 1000, 100)


IDS = [
    [f"i{k}" for k in range(200)],
    ["é-unicode", "i1"],
    ["x" * 200, "i1"],
    ["", "i1"],  # empty id: refused later by validation, not by the decoder
]


@pytest.mark.parametrize("ids", IDS)
def test_ids_arrive_as_one_buffer(ids: list[str]) -> None:
    query = to_query(make(ids, user_id="u1", top_k=3).SerializeToString(), 1000, 10)
    assert isinstance(query.candidate_ids, Ids)
    assert list(query.candidate_ids) == ids
    assert query.candidate_ids.data == "".join(ids).encode()
    assert (query.user_id, query.top_k, query.inline_values) == ("u1", 3, None)


@pytest.mark.parametrize("ids", IDS)
def test_stray_values_are_refused(ids: list[str]) -> None:
    for position in (0, len(ids) - 1):
        with pytest.raises(InvalidRequest, match="sent without feature_names"):
            to_query(make(ids, stray=position).SerializeToString(), 1000, 10)


def test_a_candidate_with_an_unknown_field_is_not_refused() -> None:
    # Candidate{id: "i1", 9: 7} -- a field a newer client may send. The old converter's
    # size trick took it for stray feature_values.
    plain = make(["i1", "i2"]).SerializeToString()
    newer = b"\x1a\x06\x0a\x02i1\x48\x07" + make(["i2"]).SerializeToString()
    assert list(to_query(newer, 10, 10).candidate_ids) == list(
        to_query(plain, 10, 10).candidate_ids
    )


def test_inline_values_and_rows() -> None:
    req = pb.RankRequest(
        feature_names=["a", "b"],
        candidates=[
            pb.Candidate(id="x", feature_values=[1.0, 2.0]),
            pb.Candidate(id="y"),
        ],
    )
    query = to_query(req.SerializeToString(), 10, 10)
    assert query.inline_values is not None and query.inline_rows is not None
    np.testing.assert_array_equal(query.inline_values, [[1.0, 2.0], [np.nan, np.nan]])
    assert query.inline_rows.tolist() == [True, False]
    req.candidates[1].feature_values.extend([3.0, 4.0])
    query = to_query(req.SerializeToString(), 10, 10)
    assert query.inline_rows is None  # every candidate sent its values


def test_value_count_mismatch_names_the_candidate() -> None:
    req = pb.RankRequest(
        feature_names=["a", "b"],
        candidates=[pb.Candidate(id="x"), pb.Candidate(id="y", feature_values=[1.0])],
    )
    with pytest.raises(InvalidRequest, match=r"candidates\[1\].feature_values: 1 values for 2"):
        to_query(req.SerializeToString(), 10, 10)


def test_limits_bound_the_allocation() -> None:
    with pytest.raises(InvalidRequest, match="at most 3 allowed"):
        to_query(make([f"i{k}" for k in range(4)]).SerializeToString(), 3, 10)
    req = make(["i1"], feature_names=[f"f{k}" for k in range(11)])
    with pytest.raises(InvalidRequest, match="feature_names: 11 sent, more than the model's 10"):
        to_query(req.SerializeToString(), 3, 10)


@pytest.mark.parametrize("body", [b"\x0a\x05ab", b"\x1a\x03\x0a\x01\xff", b"\x07", b"\x08" * 3])
def test_corrupt_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not a valid RankRequest"):
        to_query(body, 10, 10)


def test_response_is_what_protobuf_serializes() -> None:
    ids = Ids.from_strs(["a", "bé", "c", "d"])
    result = RankResult(
        candidates=ids,
        order=np.array([2, 0, 3], dtype=np.intp),
        ranked_scores=np.array([1.5, -0.0]),
        unscored=1,
        model_version="v1",
        degraded=["budget.partial_scoring"],
    )
    expected = pb.RankResponse(
        items=[
            pb.RankedItem(id="c", score=1.5),
            pb.RankedItem(id="a", score=-0.0),
            pb.RankedItem(id="d", unscored=True),
        ],
        model_version="v1",
        degraded_reasons=["budget.partial_scoring"],
        request_id="r9",
    )
    assert to_response(result, "r9") == expected.SerializeToString()
    # Extra encoded fields are appended and merge into the message.
    extra = pb.RankResponse(degraded_reasons=["more"]).SerializeToString()
    merged = pb.RankResponse.FromString(to_response(result, "r9", extra))
    assert list(merged.degraded_reasons) == ["budget.partial_scoring", "more"]
