"""Hand-written protobuf wire encoding for tests: the shapes a generated serializer never makes
(unknown fields, groups, unpacked or split doubles, repeated scalars, wrong wire types)."""

from __future__ import annotations

import struct
from itertools import pairwise

from google.protobuf.message import DecodeError

from ranking.api.v1 import ranking_pb2 as pb
from ranking.server._wire import WireError, decode_request


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def fixed64(field: int, value: float) -> bytes:
    return tag(field, 1) + struct.pack("<d", value)


def group(field: int, body: bytes) -> bytes:
    return tag(field, 3) + body + tag(field, 4)


def same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def expected(body: bytes) -> tuple[str, object]:
    """What the decoder must give for `body`, worked out from protobuf's own parser:
    ("error", message fragment) or ("ok", the parsed message)."""
    try:
        msg = pb.RankRequest.FromString(body)
    except DecodeError:
        return "error", "not a valid RankRequest"
    width = len(msg.feature_names)
    counts = [len(c.feature_values) for c in msg.candidates]
    for i, k in enumerate(counts):
        if width and k not in (0, width):
            return "error", f"candidates[{i}].feature_values: {k} values for {width}"
    if not width and any(counts):
        return "error", "sent without feature_names"
    return "ok", msg


def check_agrees(body: bytes) -> str:
    """The decoder and protobuf's parser agree on `body`: the same content, or both refuse.
    Returns which ("ok", "refused: corrupt" or "refused: shape") for test statistics."""
    kind, want = expected(body)
    try:
        got = decode_request(body, -1, -1)
    except WireError as exc:
        assert kind == "error", f"decoder refused what protobuf parses: {exc}"
        assert isinstance(want, str) and want in str(exc), (want, str(exc))
        return "refused: corrupt" if "not a valid" in want else "refused: shape"
    assert kind == "ok", f"decoder accepted what protobuf refuses ({want})"
    assert isinstance(want, pb.RankRequest)
    rid, uid, data, offsets, context, top_k, strict, names, values, rows = got
    assert (rid, uid, top_k, strict) == (want.request_id, want.user_id, want.top_k, want.strict)
    bounds = offsets.tolist()
    assert bounds[0] == 0 and len(bounds) == len(want.candidates) + 1
    ids = [data[a:b].decode() for a, b in pairwise(bounds)]
    assert ids == [c.id for c in want.candidates]
    assert set(context) == set(want.context)
    for key, value in want.context.items():
        assert same_float(context[key], value), key
    assert names == list(want.feature_names)
    if not names:
        assert values is None and rows is None
        return "ok"
    assert values is not None and values.shape == (len(ids), len(names))
    sent = [len(c.feature_values) > 0 for c in want.candidates]
    assert (rows.tolist() if rows is not None else [True] * len(ids)) == sent
    if rows is not None:
        assert not all(sent)
    for i, c in enumerate(want.candidates):
        if sent[i]:
            assert all(same_float(a, b) for a, b in zip(values[i], c.feature_values, strict=True))
        else:
            assert all(v != v for v in values[i])  # NaN: missing
    return "ok"
