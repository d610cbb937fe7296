"""The bytes-in, bytes-out Rank through a real grpc.aio server: corrupt bodies, unknown fields,
inline values packed or not, and failing calls with tracing on (one code path either way)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ranking.api.v1 import ranking_pb2 as pb
from ranking.features.memory import MemoryFeatureStore
from ranking.features.store import FetchResult, Gathered, Lookup, Target
from ranking.server.app import App
from ranking.telemetry import Stats, build_telemetry
from tests.conftest import SmallWorld, small_settings, small_tables
from tests.server.wire_bytes import fixed64, group, ld, tag, varint

METHOD = "/ranking.v1.RankingService/Rank"


@pytest.fixture
async def raw(server: App) -> AsyncIterator[grpc.aio.UnaryUnaryMultiCallable]:
    """Rank with bytes in and out, so a test can send what no serializer would."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)


def plain_request(ids: Sequence[str]) -> pb.RankRequest:
    return pb.RankRequest(
        request_id="r-7",
        user_id="u5",
        candidates=[pb.Candidate(id=i) for i in ids],
        context={"c_hour": 9.0},
        top_k=5,
    )


CORRUPT = [
    b"\x1a\x05\x0a\x03ab",  # a candidate runs past the end
    b"\x1a\x04\x0a\x02\xc3\x28",  # an id that is not UTF-8
    b"\x0f",  # wire type 7
    b"\x28" + b"\xff" * 11,  # an 11-byte varint
    b"\x4c",  # a stray end-group
    b"\x1a\x03\x12\x01\x00",  # packed doubles of 1 byte
    bytes(range(256)),
]


@pytest.mark.parametrize("body", CORRUPT, ids=range(len(CORRUPT)))
async def test_corrupt_body_is_invalid_argument(
    raw: grpc.aio.UnaryUnaryMultiCallable, body: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(body)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("request body is not a valid RankRequest: "), details
    assert "Error" not in details and "<class" not in details
    # ... and the server keeps serving.
    ok = await raw(plain_request(["i1", "i2"]).SerializeToString())
    assert len(pb.RankResponse.FromString(ok).items) == 2


def with_unknown_fields(ids: Sequence[str]) -> bytes:
    """plain_request(ids) as a newer client might send it: unknown fields (and groups) in the
    request and in every candidate, fields out of order, scalars sent twice (the last wins)."""
    candidates = b"".join(
        ld(
            3,
            tag(15, 0) + varint(99) + ld(1, i.encode()) + group(16, fixed64(1, 2.5)) + ld(17, b"x"),
        )
        for i in ids
    )
    return (
        tag(5, 0)
        + varint(50)  # replaced by the later top_k
        + ld(2, b"someone-else")
        + tag(20, 5)
        + b"\0\0\0\0"
        + candidates
        + ld(4, ld(1, b"c_hour") + fixed64(2, 9.0))
        + ld(1, b"r-7")
        + ld(2, b"u5")
        + group(21, tag(1, 0) + varint(1))
        + tag(5, 0)
        + varint(5)
        + ld(22, b"\xff\xfe")
    )


async def test_unknown_fields_are_served_exactly_like_the_request_without_them(
    raw: grpc.aio.UnaryUnaryMultiCallable,
) -> None:
    ids = [f"i{k}" for k in range(0, 120, 3)]
    plain = await raw(plain_request(ids).SerializeToString())
    newer = await raw(with_unknown_fields(ids))
    assert newer == plain  # byte for byte
    response = pb.RankResponse.FromString(plain)
    assert len(response.items) == 5 and response.request_id == "r-7"


async def test_inline_values_packed_or_not_are_one_request(
    raw: grpc.aio.UnaryUnaryMultiCallable,
) -> None:
    values = {"i10": 0.7, "i11": -1.25, "i12": 3.0}
    packed = pb.RankRequest(
        user_id="u2",
        feature_names=["q_match"],
        candidates=[pb.Candidate(id=i, feature_values=[v]) for i, v in values.items()],
    ).SerializeToString()
    unpacked = ld(2, b"u2") + ld(6, b"q_match")
    for i, v in values.items():
        unpacked += ld(3, ld(1, i.encode()) + tag(2, 1) + struct.pack("<d", v))
    assert await raw(unpacked) == await raw(packed)


class FailingStore(MemoryFeatureStore):
    """A store with a bug: every fetch or gather raises (an unexpected error, not a store
    outage)."""

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        raise RuntimeError("secret internals")

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        raise RuntimeError("secret internals")


async def test_failing_traced_calls_abort_with_a_status_and_mark_the_span(
    small_world: SmallWorld,
) -> None:
    exporter = InMemorySpanExporter()
    stats = Stats()
    telemetry = build_telemetry(stats, span_exporter=exporter)
    app = App(small_settings(small_world), telemetry=telemetry, stats=stats)
    await app.start()
    assert app.core is not None and telemetry.recording
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            rank = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await rank(plain_request(["i1", "i1"]).SerializeToString())
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "duplicate id 'i1'" in (bad.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as corrupt:
                await rank(b"\x1a\x05")
            assert corrupt.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            app.core.store = FailingStore(small_tables(small_world))
            with pytest.raises(grpc.aio.AioRpcError) as internal:
                await rank(plain_request(["i1", "i2"]).SerializeToString())
            assert internal.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in (internal.value.details() or "")
        telemetry.tracer_provider.force_flush()  # type: ignore[union-attr]
        roots = [s for s in exporter.get_finished_spans() if s.name.endswith("/Rank")]
        codes = [s.attributes["rpc.grpc.status_code"] for s in roots]
        assert codes == [3, 3, 13]
        assert stats.totals()["invalid"] == 2 and stats.totals()["internal"] == 1
    finally:
        await app.stop(0.5)
