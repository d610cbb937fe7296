"""Converters: the size-based check for stray inline values agrees with asking each candidate."""

from __future__ import annotations

import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.errors import InvalidRequest
from ranking.server.converters import to_query


def make(ids: list[str], stray: int | None = None, **kw: object) -> pb.RankRequest:
    req = pb.RankRequest(candidates=[pb.Candidate(id=i) for i in ids], **kw)  # type: ignore[arg-type]
    if stray is not None:
        req.candidates[stray].feature_values.append(0.0)
    return req


IDS = [
    [f"i{k}" for k in range(200)],
    ["é-unicode", "i1"],  # non-ASCII: slow path
    ["x" * 200, "i1"],  # long id: slow path
    ["", "i1"],  # empty id: slow path (refused later by validation)
]


@pytest.mark.parametrize("ids", IDS)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "user_id": "u1",
            "request_id": "r",
            "top_k": 3,
            "strict": True,
            "context": {"a": 1.0, "b": 0.0},
        },
    ],
)
def test_stray_values_are_found_on_every_path(ids: list[str], extra: dict[str, object]) -> None:
    assert list(to_query(make(ids, **extra)).candidate_ids) == ids
    for position in (0, len(ids) - 1):
        with pytest.raises(InvalidRequest, match="without feature_names"):
            to_query(make(ids, stray=position, **extra))


def test_empty_values_list_is_not_stray() -> None:
    req = make(["i1", "i2"])
    req.candidates[0].feature_values.extend([])
    assert to_query(req).inline_values is None
