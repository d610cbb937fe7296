"""The store's Redis protocol (`_RespProtocol`) against a real socket whose peer sends what a
test chooses: replies in order, a cut read's reply dropped, and a peer that breaks the protocol
(a malformed reply, a reply nobody asked for, a closed connection) failing every waiter with
`ConnectionError` and closing the connection for good. Real Redis behaviour is covered by
test_redis_store.py; these are the cases a healthy Redis never produces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.exceptions as redis_exc

from ranking.features.redis_store import _RespProtocol

PING = b"*1\r\n$4\r\nPING\r\n"


@dataclass
class Peer:
    """A loopback server; `script` is what it sends after each command it reads."""

    script: list[bytes]
    received: list[bytes] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for reply in self.script:
                line = await reader.readuntil(PING)
                self.received.append(line)
                if reply == b"<close>":
                    return
                writer.write(reply)
                await writer.drain()
            await reader.read()  # hold the connection open until the client closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed first
        finally:
            writer.close()
            self.done.set()


@pytest.fixture
async def connect() -> AsyncIterator[object]:
    servers: list[asyncio.base_events.Server] = []
    protos: list[_RespProtocol] = []
    peers: list[Peer] = []

    async def open_to(peer: Peer) -> _RespProtocol:
        peers.append(peer)
        server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _RespProtocol(loop), "127.0.0.1", port)
        protos.append(proto)
        return proto

    yield open_to
    for p in protos:
        p.close()
    for peer in peers:
        await asyncio.wait_for(peer.done.wait(), 5.0)
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_pipelined_replies_resolve_in_order_and_a_cut_ones_is_dropped(connect) -> None:  # type: ignore[no-untyped-def]
    peer = Peer([b"+one\r\n", b"+two\r\n", b"-ERR nope\r\n", b"$5\r\nfour!\r\n"])
    proto = await connect(peer)
    futures = [proto.request(PING) for _ in range(4)]
    assert proto.pending == 4
    futures[1].cancel()  # the caller gave up on the second: its reply must not shift the rest
    assert await futures[0] == b"one"
    with pytest.raises(redis_exc.ResponseError, match="nope"):
        await futures[2]  # an error reply fails its own waiter only
    assert await futures[3] == b"four!"
    assert proto.pending == 0 and not proto.closed
    assert len(peer.received) == 4


@pytest.mark.parametrize(
    "script",
    [
        [b"!not resp\r\n"],  # malformed
        [b"+fine\r\n+nobody asked\r\n"],  # a reply with no command behind it
        [b"<close>"],  # the peer hangs up with the command pending
    ],
    ids=["malformed", "unsolicited", "closed"],
)
async def test_a_peer_breaking_the_protocol_fails_every_waiter_and_closes(  # type: ignore[no-untyped-def]
    connect, script: list[bytes]
) -> None:
    proto = await connect(Peer([*script, b"+never\r\n"]))
    first = proto.request(PING)
    outcome = await asyncio.wait_for(asyncio.gather(first, return_exceptions=True), 5.0)
    if script[0].startswith(b"+fine"):  # the good reply came first and was delivered
        assert outcome == [b"fine"]
        for _ in range(100):  # the unsolicited one arrives right behind it
            if proto.closed:
                break
            await asyncio.sleep(0.01)
    else:
        assert isinstance(outcome[0], redis_exc.ConnectionError)
    assert proto.closed
    with pytest.raises(redis_exc.ConnectionError):
        proto.request(PING)  # a closed connection takes no command
