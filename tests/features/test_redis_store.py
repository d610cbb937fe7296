"""RedisFeatureStore and the loader against real redis-server processes."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from ranking.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from ranking.features.redis_loader import load_entities, pack_rows
from ranking.features.redis_store import (
    HEADER_BYTES,
    MAX_PENDING_PER_CONNECTION,
    HiredisPackConnection,
    KeyLayout,
    RedisFeatureStore,
    connect_redis,
    header_for,
    schema_id,
)
from ranking.features.store import FetchResult, Lookup
from tests.features.conftest import COLUMNS, make_matrix
from tests.features.contract import check_feature_store
from tests.redis_servers import RedisCluster, RedisServer

NS = "t"


def load(server_url: str, n: int = 300) -> np.ndarray:
    m = make_matrix(n)
    ids = [f"i{k}" for k in range(n)]
    assert load_entities(server_url, NS, "item", ids, COLUMNS, m, progress=False) == n
    users = make_matrix(3, seed=1)
    load_entities(server_url, NS, "user", ["u0", "u1", "u2"], COLUMNS, users, progress=False)
    return m


def mget_calls(server: RedisServer) -> int:
    with server.client() as c:
        stats = c.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def fetch_once_back(
    store: RedisFeatureStore, item: str, *, timeout_s: float, tries: int
) -> FetchResult:
    """`item`'s read once the store reads again (after a restart, a cut, a pause): at most
    `tries` attempts 50 ms apart; the last failure is raised."""
    for attempt in range(tries):
        try:
            (r,) = await store.fetch([Lookup("item", [item])], timeout_s=timeout_s)
            return r
        except FeatureStoreUnavailable:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("tries must be >= 1")


async def started(url: str, **kw: object) -> RedisFeatureStore:
    store = RedisFeatureStore(url, namespace=NS, **kw)  # type: ignore[arg-type]
    await store.start()
    return store


def test_pack_layout() -> None:
    m = make_matrix(2)
    packed = pack_rows(COLUMNS, m)
    assert packed.shape == (2, HEADER_BYTES + 4 * len(COLUMNS))
    assert packed[0, :HEADER_BYTES].tobytes() == header_for(COLUMNS)
    assert header_for(COLUMNS)[:3] == b"RF\x01"
    assert int.from_bytes(header_for(COLUMNS)[4:], "little") == schema_id(COLUMNS)
    np.testing.assert_array_equal(packed[1, HEADER_BYTES:].view("<f4"), m[1])
    with pytest.raises(ValueError):
        pack_rows(COLUMNS[:3], m)


def test_hiredis_packer_matches_redis_py() -> None:
    fast, slow = HiredisPackConnection(), aioredis.Connection()
    for args in [("MGET", "a", "b:c"), ("SET", "k", b"\x00v", "PX", 5), ("CONFIG GET", "x")]:
        assert b"".join(fast.pack_command(*args)) == b"".join(slow.pack_command(*args))
    client = connect_redis("redis://127.0.0.1:1")  # never connects: nothing to close
    assert client.connection_pool.connection_class is HiredisPackConnection


def test_key_layout() -> None:
    assert KeyLayout("ns").keys("item", ["a"]) == ["ns:item:a"]
    (k,) = KeyLayout("ns", 16).keys("item", ["a"])
    assert k.startswith("{ns:item:b") and k.endswith("}:a")
    with pytest.raises(ValueError):
        KeyLayout("n{s")


async def test_round_trip_one_mget(redis_server: RedisServer) -> None:
    m = load(redis_server.url)
    users = make_matrix(3, seed=1)
    store = await started(redis_server.url)
    assert store.columns("item") == COLUMNS
    before = mget_calls(redis_server)
    ids = [f"i{k}" for k in range(0, 400, 2)]  # 200 ids, the last 50 unknown
    user, items = await store.fetch([Lookup("user", ["u1", "zz"]), Lookup("item", ids)])
    assert mget_calls(redis_server) - before == 1  # user and items together
    assert user.found.tolist() == [True, False]
    np.testing.assert_array_equal(user.rows[0], users[1])
    assert items.found.sum() == 150 and not items.found[150:].any()
    np.testing.assert_array_equal(items.rows[:150], m[0:300:2])
    assert np.isnan(items.rows[150:]).all()
    assert items.rows.dtype == np.float32 and items.degraded == ()
    assert await store.fetch([Lookup("item", [])]) != []
    await check_feature_store(store, {"user": {"u1": users[1]}, "item": {"i0": m[0], "i8": m[8]}})


async def test_schema_mismatch_detected(redis_server: RedisServer) -> None:
    m = load(redis_server.url, 10)
    with redis_server.client() as c:
        other = ("g0", *COLUMNS[1:])  # same width, another schema
        c.set(f"{NS}:item:i1", pack_rows(other, m[1:2])[0].tobytes())
        c.set(f"{NS}:item:i2", pack_rows(COLUMNS, m[2:3])[0].tobytes()[:-4])  # short
        c.set(f"{NS}:item:i3", b"garbage")
    store = await started(redis_server.url)
    (r,) = await store.fetch([Lookup("item", ["i0", "i1", "i2", "i3", "i4", "nope"])])
    assert r.found.tolist() == [True, False, False, False, True, False]
    assert r.degraded == ("features.schema_mismatch",)
    assert store.stats.schema_mismatches == 3
    np.testing.assert_array_equal(r.rows[4], m[4])
    await store.close()


async def test_unknown_schema_and_entity_type(redis_server: RedisServer) -> None:
    store = RedisFeatureStore(redis_server.url, namespace="empty", entity_types=("item",))
    with pytest.raises(KeyError):
        await store.start()
    with pytest.raises(KeyError):
        store.columns("item")
    await store.close()


async def test_paused_server_times_out_cleanly(redis_server: RedisServer) -> None:
    load(redis_server.url, 10)
    store = await started(redis_server.url)
    redis_server.pause()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(FeatureStoreUnavailable) as info:
            await store.fetch([Lookup("item", ["i1"])], timeout_s=0.05)
        assert loop.time() - t0 < 0.5
        assert "redis" not in info.value.message.lower()
        assert isinstance(info.value.__cause__, TimeoutError)
    finally:
        redis_server.resume()
    (r,) = await store.fetch([Lookup("item", ["i1"])], timeout_s=1.0)
    assert r.found.all()
    await store.close()


async def test_refused_connection_is_unavailable(redis_server: RedisServer) -> None:
    load(redis_server.url, 10)
    store = await started(redis_server.url)
    redis_server.kill()
    with pytest.raises(FeatureStoreUnavailable) as info:
        await store.fetch([Lookup("item", ["i1"])], timeout_s=1.0)
    assert isinstance(info.value.__cause__, redis.RedisError | OSError)
    assert store.stats.errors == 1
    await store.close()


async def test_reconnects_after_restart(redis_server: RedisServer) -> None:
    load(redis_server.url, 10)
    store = await started(redis_server.url)
    (r,) = await store.fetch([Lookup("item", ["i1"])])
    assert r.found.all()
    redis_server.restart()  # no persistence: the data is gone, reload it
    load(redis_server.url, 10)
    # the first read may fail on the broken pooled connection
    r = await fetch_once_back(store, "i1", timeout_s=1.0, tries=20)
    assert r.found.all()
    await store.close()


def test_loader_idempotent_ttl_and_progress(redis_server: RedisServer) -> None:
    seen: list[int] = []
    m = make_matrix(25)
    ids = [f"i{k}" for k in range(25)]
    with redis_server.client() as c:
        n = load_entities(c, NS, "item", ids, COLUMNS, m, batch=10, progress=seen.append)
        assert n == 25 and seen == [10, 20, 25]
        assert c.dbsize() == 26  # 25 entities + the schema key
        load_entities(c, NS, "item", ids, COLUMNS, m, batch=10, progress=False)
        assert c.dbsize() == 26
        assert json.loads(c.get(f"{NS}:item:__schema__"))["columns"] == list(COLUMNS)
        assert c.ttl(f"{NS}:item:i3") == -1
        load_entities(c, NS, "item", ids[:2], COLUMNS, m[:2], ttl_s=30, progress=False)
        assert 0 < c.ttl(f"{NS}:item:i1") <= 30
        assert c.ttl(f"{NS}:item:__schema__") == -1
        with pytest.raises(ValueError):
            load_entities(c, NS, "item", ids[:3], COLUMNS, m, progress=False)


async def test_cluster_round_trip_few_mgets(redis_cluster: RedisCluster) -> None:
    ns = "cl"
    m = make_matrix(300)
    ids = [f"i{k}" for k in range(300)]
    n = load_entities(
        redis_cluster.url, ns, "item", ids, COLUMNS, m, progress=False, buckets=4, cluster=True
    )
    assert n == 300
    before = sum(mget_calls(node) for node in redis_cluster.nodes)
    store = RedisFeatureStore(
        connect_redis(redis_cluster.url, cluster=True), namespace=ns, entity_types=("item",),
        buckets=4,
    )  # fmt: skip
    await store.start()
    (r,) = await store.fetch([Lookup("item", [*ids[:200], "nope"])], timeout_s=2.0)
    assert r.found[:200].all() and not r.found[200]
    np.testing.assert_array_equal(r.rows[:200], m[:200])
    calls = sum(mget_calls(node) for node in redis_cluster.nodes) - before
    assert 1 <= calls <= 4  # one MGET per bucket, not per id
    await store.close()


async def test_cluster_defaults_match(redis_cluster: RedisCluster) -> None:
    """Loader and store default to the same bucket count on a cluster."""
    m = make_matrix(40)
    ids = [f"i{k}" for k in range(40)]
    load_entities(redis_cluster.url, "cl2", "item", ids, COLUMNS, m, progress=False, cluster=True)
    store = RedisFeatureStore(
        redis_cluster.url, namespace="cl2", cluster=True, entity_types=("item",)
    )
    await store.start()
    (r,) = await store.fetch([Lookup("item", ids)], timeout_s=2.0)
    assert r.found.all()
    np.testing.assert_array_equal(r.rows, m)
    await store.close()


async def test_cancelled_reads_never_desynchronise(redis_server: RedisServer) -> None:
    """Reads cut mid-reply by tiny timeouts (as hedging losers are) leave no reply behind.

    Each round pauses the server's clients (CLIENT PAUSE) so that four reads are certainly sent
    and certainly cut before their replies arrive; the replies then do arrive, and the store
    must drop them. The next reads, and reads with random tiny timeouts, must each get their
    own rows.
    """
    m = load(redis_server.url, 300)
    store = await started(redis_server.url, entity_types=("item",))
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "timeout": 0}

    async def one(timeout_s: float) -> bool:
        ids = rng.choice(300, 200, replace=False)
        try:
            (r,) = await store.fetch([Lookup("item", [f"i{k}" for k in ids])], timeout_s=timeout_s)
        except FeatureStoreTimeout:
            outcomes["timeout"] += 1
            return False
        assert r.found.all()
        np.testing.assert_array_equal(r.rows, m[ids])
        outcomes["ok"] += 1
        return True

    try:
        await one(1.0)  # connect
        with redis_server.client() as admin:
            for _ in range(8):
                # 300 ms: far longer than the reads' 5 ms, even on a loaded machine
                admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
                cut = await asyncio.gather(*(one(0.005) for _ in range(4)))
                assert not any(cut)  # all four were cut before the paused server answered
                assert all(await asyncio.gather(*(one(2.0) for _ in range(4))))
        for _ in range(30):
            await asyncio.gather(*(one(float(rng.choice([2e-4, 5e-4, 1.0]))) for _ in range(4)))
        assert outcomes["timeout"] >= 32
        assert outcomes["ok"] >= 33
        assert store.stats.timeouts == outcomes["timeout"]
        assert store.stats.errors == 0
        # A cut read leaves its connection in step, so none was reopened: the store reads on
        # at most its few pipelined connections.
        assert store.stats.reconnects == 0
        with redis_server.client() as admin:
            readers = [c for c in admin.client_list() if c["cmd"] == "mget"]
        assert 1 <= len(readers) <= 4
    finally:
        await store.close()


async def test_reads_ride_connections_redis_py_opened_with_auth_and_db(
    redis_server: RedisServer,
) -> None:
    """The store's connections are opened by redis-py (AUTH, SELECT) and then read below its
    command layer: a password and a database number in the URL hold for every read, concurrent
    reads each get their own rows, a cut connection is reopened, and an error reply is an
    outage of the store that leaves the connection usable."""
    with redis_server.client() as admin:
        admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/3"
    store = None
    try:
        m = load(url, 50)
        store = await started(url)
        got = await asyncio.gather(  # timeouts for a loaded test machine, not the 50 ms default
            *(store.fetch([Lookup("item", [f"i{k}", "nope"])], timeout_s=5.0) for k in range(20))
        )
        for k, (r,) in enumerate(got):
            assert r.found.tolist() == [True, False]
            np.testing.assert_array_equal(r.rows[0], m[k])
        with redis.Redis.from_url(url) as c:  # the store's connection is cut: it reconnects
            c.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        # a read may still find the cut connection
        r = await fetch_once_back(store, "i7", timeout_s=5.0, tries=20)
        np.testing.assert_array_equal(r.rows[0], m[7])
        with redis.Redis.from_url(url) as c:  # now the server answers MGET with an error
            c.execute_command("ACL", "SETUSER", "default", "-mget")
        with pytest.raises(FeatureStoreUnavailable) as info:
            await store.fetch([Lookup("item", ["i1"])], timeout_s=5.0)
        assert isinstance(info.value.__cause__, redis.ResponseError)
        with redis.Redis.from_url(url) as c:
            c.execute_command("ACL", "SETUSER", "default", "+mget")
        (r,) = await store.fetch([Lookup("item", ["i2"])], timeout_s=5.0)  # in step
        np.testing.assert_array_equal(r.rows[0], m[2])
    finally:
        if store is not None:  # closed even when the test fails: no unclosed connection
            await store.close()  # is left for a later test's warnings check
        with redis.Redis.from_url(url) as c:
            c.config_set("requirepass", "")


async def test_a_connection_too_far_behind_is_retired(redis_server: RedisServer) -> None:
    """Reads to a server that stopped answering (paused here) pile up on a connection only up
    to MAX_PENDING_PER_CONNECTION replies; then the connection is retired, and once the server
    answers again the store reads normally."""
    m = load(redis_server.url, 10)
    store = await started(redis_server.url, entity_types=("item",))
    try:
        await store.fetch([Lookup("item", ["i1"])], timeout_s=5.0)  # connected
        pipe = store._pipe
        assert pipe is not None
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        most = 0
        for _ in range(3 * MAX_PENDING_PER_CONNECTION):
            with pytest.raises(FeatureStoreUnavailable):  # timed out, or its connection retired
                await store.fetch([Lookup("item", ["i1"])], timeout_s=0.002)
            most = max([most, *(c.pending for c in pipe._conns)])
        assert most <= MAX_PENDING_PER_CONNECTION
        r = await fetch_once_back(store, "i3", timeout_s=1.0, tries=100)  # pause ends in 3 s
        np.testing.assert_array_equal(r.rows[0], m[3])
    finally:
        await store.close()
