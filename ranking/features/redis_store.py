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
buffer) and sent on a redis.asyncio connection this store holds (`_Pipe`), skipping redis-py's
command machinery (argument packing, pool locks, retry wrappers, observability hooks: ~0.1 ms of
Python per call); hiredis parses the reply and `_index.decode_values` copies it into the rows.
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


class _Pipe:
    """MGETs on redis.asyncio connections this store holds, below redis-py's command layer.

    A read takes an idle connection (or makes one with the client's pool settings: address,
    timeouts, hiredis parser), writes the packed command on its stream and reads one reply with
    redis-py's `read_response` (hiredis). A connection broken by a server restart fails on
    first use and the read is retried once on a reconnected one, as `connect_redis`'s one
    immediate retry does. A read cut mid-reply (cancelled, or timed out) has its connection
    closed by `read_response`, so an idle connection never holds a pending reply.

    Two choices keep the caller's timeout exact, both measured (tests/features/
    test_redis_store.py::test_cancelled_reads_never_desynchronise): the write does not go
    through `send_packed_command`, and connecting runs in a task of its own that the caller
    waits for with `asyncio.shield`. Under load both redis-py paths were seen to lose the
    cancellation of an `asyncio.timeout`, so a 5 ms read waited for a paused server for 300 ms.
    """

    def __init__(self, pool: aioredis.ConnectionPool, stats: RedisStoreStats) -> None:
        self._pool = pool
        self._stats = stats
        self._idle: list[aioredis.Connection] = []
        self._all: list[aioredis.Connection] = []
        # connect tasks -> the connection to return to the idle list when the task ends
        # (None while a caller still waits for it and so still owns the connection)
        self._connecting: dict[asyncio.Task[None], aioredis.Connection | None] = {}
        self._handed_off: set[int] = set()  # id() of connections a connect task owns

    async def call(self, command: bytes) -> Any:
        conn = self._idle.pop() if self._idle else self._make()
        try:
            try:
                return await self._once(conn, command)
            except (ConnectionError, OSError, redis_exc.ConnectionError):
                self._stats.reconnects += 1
                await conn.disconnect(nowait=True)
                return await self._once(conn, command)
        finally:
            if id(conn) not in self._handed_off:
                self._idle.append(conn)

    async def _once(self, conn: aioredis.Connection, command: bytes) -> Any:
        if not conn.is_connected:
            await self._connect(conn)
        writer = conn._writer
        if writer is None:
            raise redis_exc.ConnectionError("not connected")
        try:
            writer.write(command)  # buffered by the transport; nothing to await
        except OSError:
            await conn.disconnect(nowait=True)
            raise
        return await conn.read_response(disable_decoding=True)

    async def _connect(self, conn: aioredis.Connection) -> None:
        task = asyncio.ensure_future(conn.connect_check_health(check_health=False))
        self._connecting[task] = None
        task.add_done_callback(self._connect_done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # the caller gives up; the connection stays with the task
                self._connecting[task] = conn
                self._handed_off.add(id(conn))
            raise

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        conn = self._connecting.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved here: the caller may be gone; the next use retries
        if conn is not None:
            self._handed_off.discard(id(conn))
            self._idle.append(conn)

    def _make(self) -> aioredis.Connection:
        conn: aioredis.Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._all.append(conn)
        return conn

    async def close(self) -> None:
        tasks = list(self._connecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns, self._all, self._idle = self._all, [], []
        await asyncio.gather(*(c.disconnect() for c in conns), return_exceptions=True)


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
            async with asyncio.timeout(timeout_s):
                if self._pipe is not None:  # the connection the reads will use
                    await self._pipe.call(b"*1\r\n$4\r\nPING\r\n")
                else:
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
        try:
            async with asyncio.timeout(self._timeout_s if timeout_s is None else timeout_s):
                values = await self._mget(lookups)
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

    async def _mget(self, lookups: Sequence[Lookup]) -> Any:
        if self._pipe is None:
            keys: list[str] = []
            for lk in lookups:
                keys.extend(self.layout.keys(lk.entity_type, lk.ids))
            return await self._client.mget_nonatomic(keys)  # type: ignore[union-attr]
        parts = []
        for lk in lookups:
            prefix = self._prefixes.get(lk.entity_type)
            if prefix is None:
                prefix = self._prefixes[lk.entity_type] = self.layout.prefix(lk.entity_type)
            ids = lk.ids
            parts.append((prefix, (ids.data, ids.offsets) if isinstance(ids, Ids) else list(ids)))
        return await self._pipe.call(_index.mget_command(parts, self.layout.buckets))

    def _decode(self, values: list[Any], start: int, n: int, schema: _Schema) -> FetchResult:
        rows = np.full((n, len(schema.columns)), np.nan, dtype=np.float32)
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
