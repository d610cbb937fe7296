"""The native decoder against protobuf's own parser (upb), on generated and mangled bytes.

Valid messages are written by hand (`wire_bytes`) so they carry what a generated serializer
never makes: unknown fields and groups at every level, doubles packed, unpacked and split,
repeated scalars (the last wins), duplicate map keys, known field numbers with other wire
types, invalid UTF-8. Then the same bytes mutated, and random bytes. Either both parsers give
the same content or both refuse (`wire_bytes.check_agrees`).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ranking.api.v1 import ranking_pb2 as pb
from tests.server.wire_bytes import check_agrees, fixed64, group, ld, tag, varint

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.floats(allow_nan=True, allow_infinity=True) | st.binary(min_size=8, max_size=8).map(
    lambda b: struct.unpack("<d", b)[0]
)
# Mostly valid UTF-8, one in 30 maybe not (protobuf refuses invalid UTF-8 in proto3 strings;
# a refused request says nothing about the rest of it, so most must be valid).
strings = st.integers(0, 29).flatmap(
    lambda k: st.binary(max_size=6) if k == 0 else st.text(max_size=12).map(str.encode)
)


@st.composite
def unknown_field(draw: st.DrawFn, known: frozenset[int], depth: int = 0) -> bytes:
    """A field this message does not know, or a known number with another wire type."""
    field = draw(st.integers(1, 40) | st.integers(1, (1 << 29) - 1))
    wire_type = draw(st.sampled_from([0, 1, 2, 5, 3] if depth < 3 else [0, 1, 2, 5]))
    if field in known and wire_type == 2:
        field = 1000 + field
    if wire_type == 0:
        return tag(field, 0) + varint(draw(st.integers(0, (1 << 64) - 1)))
    if wire_type == 1:
        return tag(field, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return tag(field, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        return ld(field, draw(st.binary(max_size=10)))
    inner = draw(st.lists(unknown_field(frozenset(), depth + 1), max_size=3))
    return group(field, b"".join(inner))


def sprinkle(draw: st.DrawFn, parts: list[bytes], known: frozenset[int]) -> bytes:
    """Shuffle a message's fields and insert unknown ones anywhere."""
    parts = draw(st.permutations(parts)) if draw(st.booleans()) else parts
    out: list[bytes] = []
    for part in parts:
        out.extend(draw(st.lists(unknown_field(known), max_size=1)))
        out.append(part)
    out.extend(draw(st.lists(unknown_field(known), max_size=2)))
    return b"".join(out)


@st.composite
def doubles_field(draw: st.DrawFn, values: list[float]) -> list[bytes]:
    """`values` as field 2 of a Candidate: packed, unpacked, or split into runs of both."""
    parts: list[bytes] = []
    i = 0
    while i < len(values):
        run = draw(st.integers(1, len(values) - i))
        chunk = values[i : i + run]
        if draw(st.booleans()):
            parts.append(ld(2, b"".join(struct.pack("<d", v) for v in chunk)))
        else:
            parts.extend(fixed64(2, v) for v in chunk)
        i += run
    if draw(st.booleans()):
        parts.append(ld(2, b""))  # an empty packed run adds nothing
    return parts


@st.composite
def candidate(draw: st.DrawFn, width: int) -> bytes:
    cid = draw(strings)
    parts = [ld(1, old) for old in draw(st.lists(strings, max_size=1))] + [ld(1, cid)]
    count = draw(
        st.sampled_from([0, width, width, width + 1]) if width else st.just(0) | st.just(1)
    )
    parts += draw(doubles_field(draw(st.lists(floats, min_size=count, max_size=count))))
    return ld(3, sprinkle(draw, parts, frozenset({1, 2})))


@st.composite
def map_entry(draw: st.DrawFn, keys: list[bytes]) -> bytes:
    parts = []
    if draw(st.integers(0, 9)):
        parts.append(ld(1, draw(st.sampled_from(keys))))
    if draw(st.integers(0, 9)):
        parts.append(fixed64(2, draw(floats)))
    if draw(st.integers(0, 4)) == 0:
        parts.append(parts[-1] if parts else ld(1, b"k"))  # a repeated key or value
    body = b"".join(parts)
    if draw(st.integers(0, 5)) == 0:  # upb leaves such an entry out of the map
        body = sprinkle(draw, parts, frozenset({1, 2})) + draw(unknown_field(frozenset({1, 2})))
    return ld(4, body)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(0, 3))
    parts: list[bytes] = [ld(6, draw(strings)) for _ in range(width)]
    parts += draw(st.lists(candidate(width), max_size=6))
    keys = draw(st.lists(strings, min_size=1, max_size=3))
    parts += draw(st.lists(map_entry(keys), max_size=4))
    for field in (1, 2):
        parts += [ld(field, s) for s in draw(st.lists(strings, max_size=2))]
    bools = st.integers(0, 3) | st.integers(0, (1 << 64) - 1)
    for field, values in ((5, st.integers(-(1 << 63), (1 << 64) - 1)), (7, bools), (8, bools)):
        parts += [tag(field, 0) + varint(v) for v in draw(st.lists(values, max_size=2))]
    return sprinkle(draw, parts, frozenset(range(1, 9)))


@SETTINGS
@given(requests())
def test_valid_messages_agree(body: bytes) -> None:
    event(check_agrees(body))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0B, 0x0C, 0x06, 0x07]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        elif op == "truncate":
            del data[at:]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages_agree(body: bytes) -> None:
    check_agrees(body)


@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_agree(body: bytes) -> None:
    check_agrees(body)


def nested_groups(depth: int) -> bytes:
    return tag(9, 3) * depth + tag(9, 4) * depth


# Edges protobuf's parser decides one way or the other; each checked against it.
EDGES = [
    tag(3, 0) + varint(5),  # candidates with a varint: unknown, skipped
    ld(5, varint(3)),  # top_k packed: not a packed field, unknown
    tag(5, 5) + b"\x01\x00\x00\x00",
    tag(5, 0) + varint((1 << 40) + 7),  # int32 keeps the low 32 bits
    tag(5, 0) + varint(-1),  # a 10-byte varint
    tag(5, 0) + b"\xff" * 9 + b"\x7f",  # 10th byte past bit 64
    tag(5, 0) + b"\x80" * 10 + b"\x00",  # 11 bytes
    tag(7, 0) + varint(1 << 40),  # bool: any non-zero varint
    ld(3, ld(2, b"\0" * 7)),  # packed doubles, 7 bytes
    ld(3, ld(1, b"a") + tag(2, 0) + varint(3)),  # values as a varint: unknown
    tag(0, 0) + varint(1),  # field number 0
    b"\xa8\x80\x80\x80\x00" + varint(3),  # a 5-byte tag
    b"\xa8\x80\x80\x80\x80\x00" + varint(3),  # a 6-byte tag
    b"\xa8\x80\x80\x80\x10" + varint(3),  # a tag >= 2^32
    varint(((1 << 29) - 1) << 3) + varint(3),  # the largest field number
    tag(9, 6),
    tag(9, 7),
    tag(9, 4),  # a stray end-group
    group(9, tag(1, 0) + varint(1)),
    tag(9, 3) + tag(10, 4),  # mismatched end
    tag(9, 3) + tag(1, 0) + varint(1),  # never closed
    ld(3, ld(1, b"a") + group(9, b"")),
    ld(3, ld(1, b"a") + tag(9, 4)),
    group(1, b""),  # a known number as a group
    tag(1, 2) + varint(1 << 31),
    tag(1, 2) + b"\x80\x80\x80\x80\x00",  # a 5-byte length
    tag(1, 2) + b"\x80\x80\x80\x80\x80\x00",  # a 6-byte length
    ld(3, ld(1, b"\xff")),
    ld(3, ld(9, b"\xff")),  # invalid UTF-8 in an unknown field is fine
    ld(1, b"\xed\xa0\x80"),  # a surrogate
    ld(1, b"\xc0\x80"),  # overlong
    ld(1, b"\xf4\x8f\xbf\xbf"),  # U+10FFFF
    ld(1, b"\xf4\x90\x80\x80"),  # past U+10FFFF
    ld(4, b""),  # an empty map entry: "" -> 0.0
    ld(4, ld(1, b"k")),
    ld(4, ld(1, b"k") + fixed64(2, 1.0)) + ld(4, ld(1, b"k") + fixed64(2, 2.0)),
    ld(4, ld(1, b"k") + fixed64(2, 1.0)) + ld(4, ld(1, b"k") + fixed64(2, 2.0) + tag(9, 0) + b"\1"),
    ld(4, ld(1, b"k") + tag(2, 0) + varint(3)),
    ld(4, ld(1, b"\xff")),
    ld(4, ld(1, b"k") + ld(1, b"j")),
    tag(9, 1) + b"\0" * 7,
    # Field number 0 inside a skipped group: upb accepts it (hypothesis found the decoder
    # refusing such a group), by every wire type; an end-group of field 0 still mismatches.
    group(9, tag(0, 0) + varint(1)),
    group(9, tag(0, 1) + b"\0" * 8),
    group(9, tag(0, 2) + varint(1) + b"x"),
    group(9, tag(0, 5) + b"\0" * 4),
    group(9, group(0, b"")),
    group(9, group(2, tag(0, 0) + varint(0))),
    group(9, b"\x80\x00" + varint(0)),  # a two-byte tag of field 0
    group(9, tag(0, 4)),
    group(9, tag(0, 6)),
    group(1, tag(0, 0) + varint(0)),  # request_id (a string) as a group holding field 0
    ld(3, ld(1, b"a") + group(9, tag(0, 0) + varint(0))),
    ld(4, group(3, tag(0, 0) + varint(0))),
    tag(0, 3) + tag(0, 4),  # field 0 outside a group: corrupt
    nested_groups(100),
    nested_groups(101),
    ld(3, ld(1, b"a") + nested_groups(99)),
    ld(3, ld(1, b"a") + nested_groups(100)),
    ld(4, nested_groups(99)),
    ld(4, nested_groups(100)),
    pb.RankRequest(
        feature_names=["a"], candidates=[pb.Candidate(id="x", feature_values=[1.0])]
    ).SerializeToString(),
]


@pytest.mark.parametrize("body", EDGES, ids=range(len(EDGES)))
def test_edges_agree(body: bytes) -> None:
    check_agrees(body)
