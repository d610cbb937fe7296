"""The Redis online store: one key per entity holding a packed float32 vector.

Layout (shared with `ranking.features.redis_loader`):

    {namespace}:{entity_type}:__schema__   JSON {"columns": [...], "schema_id": int, "format": 1}
    {namespace}:{entity_type}:{id}          standalone Redis (`buckets=0`)
    {{namespace}:{entity_type}:b{k}}:{id}   Redis Cluster (`buckets>0`), k = crc32(id) % buckets

A value is an 8-byte header followed by the vector as little-endian float32:

    b"RF"  magic          (2 bytes)
    0x01   format         (1 byte: float32, little-endian)
    0x00   reserved       (1 byte)
    crc32  schema id      (4 bytes, little-endian: crc32 of the column names joined by "\\n")

Eight bytes rather than five keep the payload 4-byte aligned, so that a whole MGET reply joined
into one buffer is read by a single `np.frombuffer(..., "<f4")` and the header checked as two
uint32 words per row: no per-value Python decoding. A value whose length, magic, format or schema
id differs from the schema read at start is counted, treated as not found and reported as
"features.schema_mismatch"; it is never misread as features.

A request's lookups (user and items together) are read with one MGET. On a standalone server the
command's bytes are built natively (`_index.mget_command`, from the key prefix and the ids'
buffer) and written on a connection redis-py opened (address, TLS, AUTH, SELECT) whose transport
this store then reads itself (`_Pipe`, `_RespProtocol`): redis-py's command machinery (argument
packing, pool locks, retry wrappers, observability hooks) and its stream reader are skipped, so
a read is one write, one hiredis parse of the reply, and `_index.decode_values` copying it into
the rows.
Nothing is done per id in Python. In cluster mode the keys
are hash-tagged into `buckets` slots per entity type and `mget_nonatomic` sends one MGET per
slot, pipelined per node. Trade-off: one bucket per entity type (`buckets=1`) means one MGET per
type but puts a whole entity type on one master (no spreading of data or load); more buckets
spread both, at the cost of up to `buckets` MGETs per type per request, sent concurrently, one
round trip per node. A few buckets per master (e.g. 16 for 3 masters) is the middle ground.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import numpy as np
import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

import ranking.features._index as _index
from ranking.degraded import Degraded
from ranking.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from ranking.features.store import FetchResult, Lookup
from ranking.ids import Ids

__all__ = [
    "DEFAULT_CLUSTER_BUCKETS",
    "FORMAT_FLOAT32",
    "HEADER_BYTES",
    "MAGIC",
    "HiredisPackConnection",
    "KeyLayout",
    "RedisFeatureStore",
    "RedisStoreStats",
    "connect_redis",
    "header_for",
    "schema_id",
]

logger = logging.getLogger(__name__)

DEFAULT_CLUSTER_BUCKETS = 16  # hash-tag buckets per entity type on a cluster
MAGIC = b"RF"
FORMAT_FLOAT32 = 1
HEADER_BYTES = 8
MAX_PENDING_PER_CONNECTION = 64  # replies outstanding on one connection before it is retired

AsyncClient = aioredis.Redis | RedisCluster


def schema_id(columns: Sequence[str]) -> int:
    """crc32 of the column names joined by newlines: changes when names or order change."""
    return zlib.crc32("\n".join(columns).encode()) & 0xFFFFFFFF


def header_for(columns: Sequence[str]) -> bytes:
    """The 8-byte header every value of this schema starts with."""
    return MAGIC + bytes([FORMAT_FLOAT32, 0]) + schema_id(columns).to_bytes(4, "little")


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """How entity ids map to Redis keys.

    buckets: 0 for plain keys (standalone Redis); N > 0 hash-tags keys into N slots per entity
        type (Redis Cluster), so one request needs at most N MGETs per entity type.
    """

    namespace: str
    buckets: int = 0

    def __post_init__(self) -> None:
        if not self.namespace or "{" in self.namespace or "}" in self.namespace:
            raise ValueError("namespace must be non-empty and hold no braces")
        if self.buckets < 0:
            raise ValueError("buckets must be >= 0")

    def schema_key(self, entity_type: str) -> str:
        return f"{self.namespace}:{entity_type}:__schema__"

    def prefix(self, entity_type: str) -> bytes:
        """What every key of `entity_type` is built from (see `_index.mget_command`)."""
        return f"{self.namespace}:{entity_type}".encode()

    def keys(self, entity_type: str, ids: Sequence[str]) -> list[str]:
        """Keys of `ids`, in order (one comprehension: per-id string work is unavoidable)."""
        prefix = f"{self.namespace}:{entity_type}"
        if self.buckets == 0:
            return [f"{prefix}:{i}" for i in ids]
        b = self.buckets
        return [f"{{{prefix}:b{zlib.crc32(i.encode()) % b}}}:{i}" for i in ids]


@dataclass(slots=True)
class RedisStoreStats:
    """Counters; read them, never reset them (exporters take deltas)."""

    fetches: int = 0
    keys_read: int = 0
    found: int = 0
    schema_mismatches: int = 0
    errors: int = 0
    timeouts: int = 0
    reconnects: int = 0  # reads retried once on a fresh connection after a broken one


@dataclass(frozen=True, slots=True)
class _Schema:
    columns: tuple[str, ...]
    header: bytes = field(repr=False)

    @classmethod
    def of(cls, columns: Sequence[str]) -> _Schema:
        cols = tuple(columns)
        return cls(cols, header_for(cols))

    @property
    def value_bytes(self) -> int:
        return HEADER_BYTES + 4 * len(self.columns)


class HiredisPackConnection(aioredis.Connection):
    """A connection that packs commands with hiredis (C) instead of redis-py's Python packer.

    redis-py's asyncio client packs every argument in Python (encode, isinstance, join): for
    an MGET of 200 keys that is ~0.1-0.2 ms, a fifth of the read. hiredis parses replies
    already; this makes it pack commands too. Anything hiredis cannot pack goes the usual way.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        if isinstance(first, str) and " " not in first:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        packed: list[bytes] = super().pack_command(*args)
        return packed


class _RespProtocol(asyncio.Protocol):
    """One Redis connection below redis-py: commands written, replies parsed by hiredis.

    Replies come back in the order the commands were written, so each resolves the oldest
    waiting future. A waiter that stopped waiting (a timeout, a cancelled hedge) keeps its
    place: its reply is parsed and dropped when it comes, so a cut read never leaves the
    connection out of step and never costs a reconnect. An error reply fails its own waiter
    (`ResponseError`); a reply nobody waits for, a malformed reply or a lost connection fails
    every waiter (`ConnectionError`) and closes the connection for good.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(
            protocolError=redis_exc.InvalidResponse, replyError=redis_exc.ResponseError
        )
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        #: The `asyncio.StreamWriter` redis-py opened the transport with: held so that it is
        #: not collected, since collecting an open one closes its transport.
        self.writer: Any = None
        self.closed = False

    @property
    def pending(self) -> int:
        """Commands written whose replies have not come yet (cut ones included)."""
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise redis_exc.InvalidResponse("a reply nobody asked for")
                fut = waiting.popleft()
                if fut.done():  # the caller stopped waiting: the reply is dropped
                    continue
                if isinstance(reply, redis_exc.ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except redis_exc.InvalidResponse as exc:
            self.abort(f"bad reply from Redis: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_exc.ConnectionError("connection to Redis lost"))

    def _fail(self, error: redis_exc.ConnectionError) -> None:
        self.closed = True
        waiting = self._waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(error)

    def request(self, command: bytes) -> asyncio.Future[Any]:
        """Write `command` (RESP bytes); the future gets its reply."""
        if self.closed or self._transport is None:
            raise redis_exc.ConnectionError("connection to Redis closed")
        fut = self._loop.create_future()
        self._waiting.append(fut)
        self._transport.write(command)  # buffered by the transport; nothing to await
        return fut

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self, why: str) -> None:
        """Drop the connection now, failing every waiter with `ConnectionError(why)`."""
        self._fail(redis_exc.ConnectionError(why))
        if self._transport is not None:
            self._transport.abort()


class _Pipe:
    """The connections a standalone store reads on, below redis-py's command layer.

    A connection is opened by redis-py (`pool.make_connection()`: address, TLS, AUTH, SELECT,
    its whole handshake), then its transport is handed to a `_RespProtocol` and redis-py's
    stream reader and command path are no longer in the way: a read is one write and one
    hiredis parse. A read takes the connection with no reply pending, else pipelines on the
    least busy one while another is opened for the next reads (at most `max_connections`);
    Redis answers a connection's commands in order, so pipelining needs no bookkeeping beyond
    the waiters' queue. A connection with `MAX_PENDING_PER_CONNECTION` replies outstanding
    (a peer that vanished without a reset, or is stuck) is retired rather than queued on
    forever: a healthy Redis never falls that far behind.

    A connection broken by a server restart fails its reads and the read is retried once on a
    reopened one, as `connect_redis`'s one immediate retry does. Opening runs in a task of its
    own that callers wait for with `asyncio.shield`: a caller's timeout stays exact (measured:
    under load redis-py's connect path lost the cancellation of an `asyncio.timeout`, so a
    5 ms read waited for a paused server for 300 ms), and an opening a caller gave up on
    still serves the next read.
    """

    def __init__(
        self, pool: aioredis.ConnectionPool, stats: RedisStoreStats, max_connections: int = 4
    ) -> None:
        self._pool = pool
        self._stats = stats
        self._max = max_connections
        self._conns: list[_RespProtocol] = []
        self._opening: asyncio.Task[_RespProtocol] | None = None
        self._closed = False

    async def call(self, command: bytes, timeout_s: float) -> Any:
        """Write `command` and return its reply; TimeoutError when none came in `timeout_s`.

        The timeout is one timer on the reply's future (an `asyncio.timeout` costs several
        times more): when it fires the future fails, and the reply, when it comes, is dropped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._pick() or await self._open(deadline)
        try:
            return await _reply(conn.request(command), deadline, loop)
        except redis_exc.ConnectionError:
            if not conn.closed:  # not a broken connection
                raise
            self._stats.reconnects += 1
            conn = self._pick() or await self._open(deadline)
            return await _reply(conn.request(command), deadline, loop)

    def _pick(self) -> _RespProtocol | None:
        """An idle open connection, else the least busy one (opening another meanwhile)."""
        best: _RespProtocol | None = None
        dead = False
        for conn in self._conns:
            if conn.pending >= MAX_PENDING_PER_CONNECTION and not conn.closed:
                conn.abort("connection to Redis retired: too far behind")  # gone or stuck
            if conn.closed:
                dead = True
            elif not conn.pending:
                best = conn
                break
            elif best is None or conn.pending < best.pending:
                best = conn
        if dead:
            self._conns = [c for c in self._conns if not c.closed]
        if best is not None and best.pending and len(self._conns) < self._max:
            self._start_opening()
        return best

    def _start_opening(self) -> asyncio.Task[_RespProtocol]:
        task = self._opening
        if task is None or task.done():
            task = self._opening = asyncio.ensure_future(self._connect())
            task.add_done_callback(_retrieve)
        return task

    async def _open(self, deadline: float) -> _RespProtocol:
        async with asyncio.timeout_at(deadline):
            return await asyncio.shield(self._start_opening())

    async def _connect(self) -> _RespProtocol:
        conn: aioredis.Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect_check_health(check_health=False)
        writer = conn._writer
        if writer is None:
            raise redis_exc.ConnectionError("not connected")
        transport = writer.transport
        proto = _RespProtocol(asyncio.get_running_loop())
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.writer = writer
        conn._writer = conn._reader = None  # the transport is the protocol's now
        if self._closed:
            proto.close()
            raise redis_exc.ConnectionError("store closed")
        self._conns.append(proto)
        return proto

    async def close(self) -> None:
        self._closed = True
        task = self._opening
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


async def _reply(fut: asyncio.Future[Any], deadline: float, loop: asyncio.AbstractEventLoop) -> Any:
    timer = loop.call_at(deadline, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Retrieve an opening's failure: every caller may have stopped waiting for it."""
    if not task.cancelled():
        task.exception()


def connect_redis(
    url: str, *, cluster: bool = False, connect_timeout_s: float = 0.5, **kwargs: Any
) -> AsyncClient:
    """An asyncio client with settings fit for a latency-bound reader.

    One immediate retry (no backoff): a pooled connection broken by a server restart fails on
    its first use and the retry reconnects; longer retry loops would only hold the request past
    its deadline, which `fetch` enforces anyway. The pool reconnects by itself. Plain TCP
    connections (redis://) pack commands with hiredis (`HiredisPackConnection`).
    """
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
    }
    common.update(kwargs)
    if cluster:
        return RedisCluster.from_url(url, **common)
    if url.startswith("redis://"):
        common.setdefault("connection_class", HiredisPackConnection)
    return aioredis.Redis.from_url(url, **common)


class RedisFeatureStore:
    """`FeatureStore` over one Redis (or one Redis Cluster). See the module docstring.

    Build it with a client (or a URL, with `cluster` saying which kind), then `await start()`
    to read the schemas, unless `schemas` gives the columns per entity type (then no I/O
    happens before the first fetch, so a replica that is down at start-up does not stop the
    service from starting). The store owns the client and closes it in `close()`. `buckets`
    defaults to 16 for a cluster client and 0 otherwise; it must match the loader's.
    """

    def __init__(
        self,
        client: AsyncClient | str,
        *,
        namespace: str,
        cluster: bool = False,
        entity_types: Sequence[str] = ("user", "item"),
        schemas: Mapping[str, Sequence[str]] | None = None,
        buckets: int | None = None,
        timeout_s: float = 0.05,
        name: str = "redis",
    ) -> None:
        if isinstance(client, str):
            client = connect_redis(client, cluster=cluster)
        is_cluster = isinstance(client, RedisCluster)
        self._client: AsyncClient = client
        if buckets is None:
            buckets = DEFAULT_CLUSTER_BUCKETS if is_cluster else 0
        self.layout = KeyLayout(namespace, buckets)
        self._entity_types = tuple(entity_types)
        self._schemas: dict[str, _Schema] = {
            et: _Schema.of(cols) for et, cols in (schemas or {}).items()
        }
        self._timeout_s = timeout_s
        self.name = name
        self.stats = RedisStoreStats()
        self._pipe = (
            None if is_cluster else _Pipe(client.connection_pool, self.stats)  # type: ignore[union-attr]
        )
        self._prefixes: dict[str, bytes] = {}
        self._closed = False

    @property
    def client(self) -> AsyncClient:
        return self._client

    async def start(self) -> None:
        """Read the schema key of every entity type not given at construction."""
        for et in self._entity_types:
            if et not in self._schemas:
                self._schemas[et] = await self._read_schema(et)

    def set_columns(self, entity_type: str, columns: Sequence[str]) -> None:
        """Use this schema for `entity_type` (read elsewhere, e.g. from another replica)."""
        self._schemas[entity_type] = _Schema.of(columns)

    async def _read_schema(self, entity_type: str) -> _Schema:
        try:
            async with asyncio.timeout(max(self._timeout_s, 1.0)):
                raw = await self._client.get(self.layout.schema_key(entity_type))
        except (RedisError, OSError, TimeoutError) as exc:
            raise FeatureStoreUnavailable("feature store unavailable") from exc
        if raw is None:
            raise KeyError(f"no schema for entity type {entity_type!r}")
        doc = json.loads(raw)
        schema = _Schema.of([str(c) for c in doc["columns"]])
        if int(doc.get("schema_id", schema_id(schema.columns))) != schema_id(schema.columns):
            raise ValueError(f"schema key of {entity_type!r} is inconsistent")
        return schema

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """Open a pooled connection (PING); False when the server does not answer in time.

        Called at start-up so that the first requests do not pay for connecting.
        """
        try:
            if self._pipe is not None:  # the connection the reads will use
                await self._pipe.call(b"*1\r\n$4\r\nPING\r\n", timeout_s)
            else:
                async with asyncio.timeout(timeout_s):
                    await self._client.ping()
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    def columns(self, entity_type: str) -> tuple[str, ...]:
        return self._schemas[entity_type].columns

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        """One MGET for all lookups (one per slot in cluster mode); decoded natively."""
        schemas = [self._schemas[lk.entity_type] for lk in lookups]  # KeyError: unknown type
        total = sum(len(lk.ids) for lk in lookups)
        self.stats.fetches += 1
        self.stats.keys_read += total
        if not total:
            return [_empty(0, len(s.columns)) for s in schemas]
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            if self._pipe is None:
                async with asyncio.timeout(timeout):
                    values = await self._cluster_mget(lookups)
            else:
                values = await self._pipe.call(self._command(lookups), timeout)
        except TimeoutError as exc:
            self.stats.timeouts += 1
            raise FeatureStoreTimeout("feature store timed out") from exc
        except (RedisError, OSError) as exc:
            self.stats.errors += 1
            raise FeatureStoreUnavailable("feature store unavailable") from exc
        if not isinstance(values, list) or len(values) != total:
            self.stats.errors += 1
            raise FeatureStoreUnavailable("feature store sent an unexpected reply")
        results = []
        start = 0
        for lk, schema in zip(lookups, schemas, strict=True):
            results.append(self._decode(values, start, len(lk.ids), schema))
            start += len(lk.ids)
        return results

    async def _cluster_mget(self, lookups: Sequence[Lookup]) -> Any:
        keys: list[str] = []
        for lk in lookups:
            keys.extend(self.layout.keys(lk.entity_type, lk.ids))
        return await self._client.mget_nonatomic(keys)  # type: ignore[union-attr]

    def _command(self, lookups: Sequence[Lookup]) -> bytes:
        """The RESP bytes of one MGET of every lookup's keys, built natively."""
        parts = []
        for lk in lookups:
            prefix = self._prefixes.get(lk.entity_type)
            if prefix is None:
                prefix = self._prefixes[lk.entity_type] = self.layout.prefix(lk.entity_type)
            ids = lk.ids
            parts.append((prefix, (ids.data, ids.offsets) if isinstance(ids, Ids) else list(ids)))
        return _index.mget_command(parts, self.layout.buckets)

    def _decode(self, values: list[Any], start: int, n: int, schema: _Schema) -> FetchResult:
        rows = np.empty((n, len(schema.columns)), dtype=np.float32)  # NaN where not found
        found = np.empty(n, dtype=np.bool_)
        unknown = np.empty(n, dtype=np.bool_)
        mismatches = _index.decode_values(values, start, schema.header, rows, found, unknown)
        self.stats.found += int(np.count_nonzero(found))
        if mismatches:
            self.stats.schema_mismatches += mismatches
            logger.warning("%d feature vectors do not match the schema", mismatches)
            return FetchResult(rows, found, (Degraded.SCHEMA_MISMATCH,), unknown)
        return FetchResult(rows, found, (), unknown)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pipe is not None:
            await self._pipe.close()
        await self._client.aclose()


def _empty(n: int, width: int) -> FetchResult:
    return FetchResult(
        np.full((n, width), np.nan, dtype=np.float32),
        np.zeros(n, dtype=np.bool_),
        (),
        np.ones(n, dtype=np.bool_),
    )
