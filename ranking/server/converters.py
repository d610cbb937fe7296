"""Protobuf <-> domain objects. The only module of the request path that touches messages."""

from __future__ import annotations

import numpy as np

from ranking.api.v1 import ranking_pb2 as pb
from ranking.core.service import RankQuery, RankResult
from ranking.errors import InvalidRequest

__all__ = ["to_query", "to_response"]


def to_query(request: pb.RankRequest) -> RankQuery:
    """Convert a request; checks only what the message shape itself can get wrong."""
    candidates = request.candidates
    ids = [c.id for c in candidates]
    names = list(request.feature_names)
    values = None
    rows = None
    if names:
        width = len(names)
        lengths = [len(c.feature_values) for c in candidates]
        bad = next((i for i, k in enumerate(lengths) if k not in (0, width)), None)
        if bad is not None:
            raise InvalidRequest(
                f"candidates[{bad}].feature_values: {lengths[bad]} values for {width} "
                "feature_names (send one per name, or none)"
            )
        values = np.full((len(ids), width), np.nan, dtype=np.float64)
        sent = np.fromiter((k == width for k in lengths), dtype=bool, count=len(ids))
        for i in np.flatnonzero(sent).tolist():
            values[i] = candidates[i].feature_values
        if not sent.all():
            rows = sent
    elif any(len(c.feature_values) for c in candidates):
        raise InvalidRequest("candidates.feature_values: sent without feature_names")
    return RankQuery(
        candidate_ids=ids,
        user_id=request.user_id,
        context=dict(request.context),
        top_k=request.top_k,
        inline_names=names,
        inline_values=values,
        inline_rows=rows,
        strict=request.strict,
        request_id=request.request_id,
    )


def to_response(result: RankResult, request_id: str) -> pb.RankResponse:
    response = pb.RankResponse(
        model_version=result.model_version,
        degraded_reasons=result.degraded,
        request_id=request_id,
    )
    items = response.items
    add = items.add
    scored = len(result.ids) - result.unscored
    for item_id, score in zip(result.ids[:scored], result.scores, strict=False):
        add(id=item_id, score=score)
    for item_id in result.ids[scored:]:
        add(id=item_id, unscored=True)
    return response
