"""Type stub for the request codec (ranking/server/_wire.c; see ranking/server/README.md)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class WireError(ValueError):
    """A malformed body or a request that breaks a shape rule; str() is the caller's message."""

def decode_request(
    body: bytes, max_candidates: int, max_names: int
) -> tuple[
    str,
    str,
    bytes,
    npt.NDArray[np.int64],
    dict[str, float],
    int,
    bool,
    list[str],
    npt.NDArray[np.float64] | None,
    npt.NDArray[np.bool_] | None,
]:
    """Decode a serialized `ranking.v1.RankRequest` in one pass.

    Returns (request_id, user_id, id_data, offsets, context, top_k, strict, feature_names,
    values, rows): candidate i's id is `id_data[offsets[i]:offsets[i + 1]]` (UTF-8, checked);
    `values` is (n, len(feature_names)) float64 with NaN rows for candidates that sent none,
    or None when no feature_names were sent; `rows` marks the candidates that sent values, or is
    None when all did (or no names were sent).

    Raises WireError when the body is not a valid RankRequest under protobuf's rules, when a
    candidate sends a number of values other than 0 or len(feature_names), when values come
    without feature_names, when there are more than `max_candidates` candidates or more than
    `max_names` feature_names (negative: no limit). Nothing else is checked here.
    """

def encode_response(
    id_data: bytes,
    offsets: npt.NDArray[np.int64],
    order: npt.NDArray[np.intp],
    scores: npt.NDArray[np.float64],
    unscored: int,
    model_version: str,
    degraded: Sequence[str],
    request_id: str,
    extra: bytes = b"",
) -> bytes:
    """A serialized `ranking.v1.RankResponse`: one item per entry of `order` (rows of the ids),
    the first len(order) - unscored with `scores`, the rest with `unscored = true`; then
    model_version, degraded_reasons, request_id, and `extra` appended as it is (encoded fields;
    protobuf merges concatenated messages, so later fields such as `explain` go there).
    Byte-identical to protobuf's own serializer. Raises ValueError / IndexError on arrays that
    do not fit together."""
