"""The store reads through every transport redis-py opens for it: TLS (`rediss://`) and a Unix
socket (`unix://`), against a real redis-server listening on both. The store hands the opened
transport to its own protocol (`_RespProtocol`), so this is where a transport that did not
take a new protocol would show."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis

from benchmarks.ports import free_port
from ranking.features.redis_loader import load_entities
from ranking.features.redis_store import RedisFeatureStore
from ranking.features.store import Lookup
from tests.deploy.certs import CA
from tests.features.conftest import COLUMNS, make_matrix
from tests.redis_servers import _binary

NS = "tr"


@dataclass(frozen=True)
class Listening:
    tls_url: str
    unix_url: str


@pytest.fixture
def redis_tls_and_unix(tmp_path: Path) -> Iterator[Listening]:
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("redis")
    port, sock = free_port(), tmp_path / "redis.sock"
    args = {
        "--port": "0",
        "--tls-port": str(port),
        "--tls-cert-file": str(leaf.cert),
        "--tls-key-file": str(leaf.key),
        "--tls-ca-cert-file": str(ca.cert),
        "--tls-auth-clients": "no",
        "--unixsocket": str(sock),
        "--save": "",
        "--appendonly": "no",
        "--dir": str(tmp_path),
    }
    argv = [_binary("redis-server"), *(x for pair in args.items() for x in pair)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        unix_url = f"unix://{sock}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(unix_url) as c:
                    c.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start with TLS and a Unix socket")
                time.sleep(0.05)
        yield Listening(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca.cert}", unix_url)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("transport", ["tls", "unix"])
async def test_reads_ride_tls_and_unix_socket_transports(
    redis_tls_and_unix: Listening, transport: str
) -> None:
    m = make_matrix(40)
    ids = [f"i{k}" for k in range(40)]
    load_entities(redis_tls_and_unix.unix_url, NS, "item", ids, COLUMNS, m, progress=False)
    url = redis_tls_and_unix.tls_url if transport == "tls" else redis_tls_and_unix.unix_url
    store = RedisFeatureStore(url, namespace=NS, entity_types=("item",))
    try:
        await store.start()
        assert await store.ping(timeout_s=5.0)
        for k in range(0, 40, 7):  # several reads on the one connection, each its own rows
            (r,) = await store.fetch([Lookup("item", [ids[k], "nope"])], timeout_s=5.0)
            assert r.found.tolist() == [True, False] and r.unknown.tolist() == [False, True]
            np.testing.assert_array_equal(r.rows[0], m[k])
            assert np.isnan(r.rows[1]).all()
        assert store.stats.errors == 0 and store.stats.reconnects == 0
    finally:
        await store.close()
