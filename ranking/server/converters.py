"""Wire bytes <-> domain objects. The only module of the request path that touches messages.

Rank's handler takes and returns raw bytes: the native codec (`_wire`, see README.md here)
decodes a `RankRequest` straight into a `RankQuery` (ids as one buffer, inline values as one
matrix) and encodes the `RankResponse` from the result's arrays, with no Python object per
candidate either way.
"""

from __future__ import annotations

from ranking.core.service import RankQuery, RankResult
from ranking.errors import InvalidRequest
from ranking.ids import Ids
from ranking.server._wire import WireError, decode_request, encode_response

__all__ = ["to_query", "to_response"]


def to_query(body: bytes, max_candidates: int, max_names: int) -> RankQuery:
    """Decode a serialized RankRequest; checks only what the message itself can get wrong
    (protobuf's wire rules, value counts per candidate) and the two limits that bound what
    decoding allocates. Raises `InvalidRequest` with a message naming the field."""
    try:
        rid, uid, data, offsets, context, top_k, strict, names, values, rows = decode_request(
            body, max_candidates, max_names
        )
    except WireError as exc:
        # The codec's own caller-facing text; there is no library exception text to hide.
        raise InvalidRequest(str(exc)) from None
    return RankQuery(
        candidate_ids=Ids(data, offsets),
        user_id=uid,
        context=context,
        top_k=top_k,
        inline_names=names,
        inline_values=values,
        inline_rows=rows,
        strict=strict,
        request_id=rid,
    )


def to_response(result: RankResult, request_id: str, extra: bytes = b"") -> bytes:
    """Encode a serialized RankResponse; `extra` is appended as it is (already-encoded fields
    of RankResponse: protobuf merges concatenated messages)."""
    ids = result.candidates
    return encode_response(
        ids.data,
        ids.offsets,
        result.order,
        result.ranked_scores,
        result.unscored,
        result.model_version,
        result.degraded,
        request_id,
        extra,
    )
