"""TLS and mutual TLS on the serving port, with certificates made at test time; the client
options of `ranking rank`, `ranking health` and `ranking load`; start-up errors as messages."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.loadgen import CandidateCount, LoadConfig, RankPayload, RequestMix, run_load
from ranking.server.app import App
from ranking.tls import ClientTls, channel_credentials
from tests.conftest import SmallWorld, free_port, small_settings
from tests.deploy.certs import CA, Leaf

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: Leaf
    client: Leaf
    other_ca: CA
    stranger: Leaf  # a client certificate signed by the other CA


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CA(tmp_path / "ca")
    other = CA(tmp_path / "other", "other-ca")
    return Pki(
        ca,
        ca.issue("server"),
        ca.issue("client", client=True),
        other,
        other.issue("stranger", client=True),
    )


def rank_request() -> pb.RankRequest:
    return pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id=f"i{k}") for k in range(10)])


async def rank(port: int, tls: ClientTls | None) -> pb.RankResponse:
    target = f"127.0.0.1:{port}"
    if tls is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(
            target, channel_credentials(tls), options=tls.channel_options()
        )
    async with channel:
        return await ranking_pb2_grpc.RankingServiceStub(channel).Rank(rank_request(), timeout=5)


@pytest.fixture
async def tls_server(small_world: SmallWorld, pki: Pki) -> AsyncIterator[App]:
    app = App(small_settings(small_world, tls_cert=pki.server.cert, tls_key=pki.server.key))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0.5)


@pytest.fixture
async def mtls_server(small_world: SmallWorld, pki: Pki) -> AsyncIterator[App]:
    settings = small_settings(
        small_world, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert
    )
    app = App(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0.5)


async def test_a_tls_call_is_answered(tls_server: App, pki: Pki) -> None:
    response = await rank(tls_server.port, ClientTls(ca=pki.ca.cert))
    assert len(response.items) == 10
    assert response.model_version == "small-v1"


async def test_a_plaintext_client_is_refused_by_a_tls_server(tls_server: App) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rank(tls_server.port, None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_server_ca_refuses_it(
    tls_server: App, pki: Pki
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rank(tls_server.port, ClientTls(ca=pki.other_ca.cert))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_server_name_override_checks_the_certificate_for_that_name(
    small_world: SmallWorld, pki: Pki, tmp_path: Path
) -> None:
    named = pki.ca.issue("named", dns=("ranking.internal",), ips=(), folder=tmp_path / "n")
    app = App(small_settings(small_world, tls_cert=named.cert, tls_key=named.key))
    await app.start()
    try:
        ok = await rank(app.port, ClientTls(ca=pki.ca.cert, server_name="ranking.internal"))
        assert len(ok.items) == 10
        # Dialled by IP without the override, the name does not match the certificate.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rank(app.port, ClientTls(ca=pki.ca.cert))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(0.5)


async def test_mutual_tls_answers_a_client_with_a_certificate_from_the_ca(
    mtls_server: App, pki: Pki
) -> None:
    tls = ClientTls(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
    assert len((await rank(mtls_server.port, tls)).items) == 10


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate", "plaintext"])
async def test_mutual_tls_refuses_other_clients(mtls_server: App, pki: Pki, who: str) -> None:
    tls = {
        "no certificate": ClientTls(ca=pki.ca.cert),
        "another CA's certificate": ClientTls(
            ca=pki.ca.cert, cert=pki.stranger.cert, key=pki.stranger.key
        ),
        "plaintext": None,
    }[who]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rank(mtls_server.port, tls)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def cli(*args: str) -> tuple[int, str, str]:
    """`python -m ranking.cli ARGS` from the worktree, without blocking the server's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ranking.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "RANKING_RELOAD_POLL_S": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ranking_health_and_rank_speak_mutual_tls(mtls_server: App, pki: Pki) -> None:
    target = f"127.0.0.1:{mtls_server.port}"
    creds = ["--tls-ca", str(pki.ca.cert)]
    creds += ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    code, out, err = await cli("health", "--target", target, *creds)
    assert (code, out.strip()) == (0, f"{target}: SERVING"), err
    code, out, err = await cli("rank", "--target", target, "--candidates", "i1,i2,i3", *creds)
    assert code == 0, err
    assert "model small-v1  items 3" in out
    # Without a client certificate the same server refuses both.
    code, out, err = await cli("health", "--target", target, "--tls-ca", str(pki.ca.cert))
    assert code == 1 and "UNAVAILABLE" in err
    code, out, err = await cli("rank", "--target", target, "--candidates", "i1", "--tls")
    assert code == 2 and "UNAVAILABLE" in err
    # Half a client certificate is a usage error, said plainly.
    code, out, err = await cli("health", "--target", target, "--tls-cert", str(pki.client.cert))
    assert code == 1 and "needs both --tls-cert and --tls-key" in err
    assert "Traceback" not in err


async def test_ranking_load_speaks_mutual_tls(mtls_server: App, pki: Pki) -> None:
    tls = ClientTls(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
    config = LoadConfig(
        target=f"127.0.0.1:{mtls_server.port}",
        payload=RankPayload(
            RequestMix(n_users=50, n_items=500, candidates=CandidateCount.fixed(10), pool_size=16)
        ),
        mode="closed",
        concurrency=2,
        duration_s=30,
        max_requests=20,
        channels_per_process=2,
        tls=tls,
    )
    report = await run_load(config)
    assert report.status_counts == {"OK": 20}
    # The same run without a client certificate cannot connect.
    code, out, err = await cli(
        "load",
        "--target",
        f"127.0.0.1:{mtls_server.port}",
        "--closed",
        "1",
        "--requests",
        "5",
        "--connect-timeout",
        "2",
        "--tls-ca",
        str(pki.ca.cert),
    )
    assert code == 1 and "could not connect" in err, (out, err)


def key_of_another_certificate(pki: Pki, tmp_path: Path) -> tuple[Path, Path]:
    other = pki.ca.issue("other", folder=tmp_path / "o")
    return pki.server.cert, other.key


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing cert", "--tls-cert {missing}: cannot read (No such file or directory)"),
        ("not PEM", "--tls-key {garbage}: not a PEM file"),
        ("mismatched key", "not a certificate chain and its private key"),
        ("missing client CA", "--tls-client-ca {missing}: cannot read"),
        ("key without cert", "tls_cert and tls_key go together"),
    ],
)
async def test_a_bad_tls_file_at_start_is_an_exit_message_not_a_traceback(
    small_world: SmallWorld, pki: Pki, tmp_path: Path, case: str, expected: str
) -> None:
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    cert, key = key_of_another_certificate(pki, tmp_path)
    flags = {
        "missing cert": ["--tls-cert", str(missing), "--tls-key", str(pki.server.key)],
        "not PEM": ["--tls-cert", str(pki.server.cert), "--tls-key", str(garbage)],
        "mismatched key": ["--tls-cert", str(cert), "--tls-key", str(key)],
        "missing client CA": [
            *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
            *("--tls-client-ca", str(missing)),
        ],
        "key without cert": ["--tls-key", str(pki.server.key)],
    }[case]
    code, _out, err = await cli(
        "serve", "--bundle", str(small_world.bundle), "--port", "0", "--workers", "1", *flags
    )
    assert code == 1
    assert expected.format(missing=missing, garbage=garbage) in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("workers", "flag"), [("1", "--port"), ("2", "--health-port"), ("2", "--admin-port")]
)
async def test_a_port_in_use_at_start_is_an_exit_message_not_a_traceback(
    small_world: SmallWorld, workers: str, flag: str
) -> None:
    with socket.socket() as taken:  # another process's listener on the port asked for
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        ports = {"--port": str(free_port()), "--admin-port": str(free_port())}
        ports |= {"--health-port": str(free_port()), flag: busy}
        code, _out, err = await cli(
            *("serve", "--bundle", str(small_world.bundle), "--workers", workers),
            *(part for item in ports.items() for part in item),
        )
    assert code == 1
    assert f"ranking serve: cannot listen on 127.0.0.1:{busy} ({flag}): the port is in use" in err
    assert "Traceback" not in err


async def _serve_until_probed(
    args: list[str], stderr_to: Path, attempts: int = 3
) -> tuple[asyncio.subprocess.Process, int, int, int]:
    """`ranking serve` with fresh free ports (serving, admin, health) until its plaintext probe
    port answers; a start that failed because another process took one of the ports between
    `free_port()` and the bind is retried with new ones, any other early exit fails the test
    with the server's own stderr."""
    for _attempt in range(attempts):
        port, admin_port, health_port = free_port(), free_port(), free_port()
        with stderr_to.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "ranking.cli", "serve", *args),
                *("--port", str(port), "--admin-port", str(admin_port)),
                *("--health-port", str(health_port)),
                cwd=ROOT,
                env={**os.environ, "RANKING_RELOAD_POLL_S": "0"},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        until = asyncio.get_running_loop().time() + 60
        while proc.returncode is None:
            code, _out, err = await cli("health", "--target", f"127.0.0.1:{health_port}")
            if code == 0:
                return proc, port, admin_port, health_port
            if asyncio.get_running_loop().time() > until:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
                raise AssertionError(f"not serving after 60 s: {err}")
            await asyncio.sleep(0.2)
        log = await asyncio.to_thread(stderr_to.read_text)
        assert "cannot listen on" in log, f"server exited {proc.returncode}:\n{log}"
    raise AssertionError(f"no free ports in {attempts} attempts:\n{log}")


async def test_ranking_serve_with_two_workers_speaks_mutual_tls_on_every_port_but_probes(
    small_world: SmallWorld, pki: Pki, tmp_path: Path
) -> None:
    """The flags through the real `ranking serve`: each of two workers builds its own
    credentials; the admin port needs the same client certificate, the probe port is plaintext."""
    proc, port, admin_port, _health_port = await _serve_until_probed(
        [
            *("--workers", "2", "--bundle", str(small_world.bundle)),
            *("--features", f"user={small_world.folder / 'users.csv'}"),
            *("--features", f"item={small_world.folder / 'items.csv'}"),
            *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
            *("--tls-client-ca", str(pki.ca.cert)),
        ],
        tmp_path / "serve.stderr",
    )
    mtls = ["--tls-ca", str(pki.ca.cert)]
    mtls += ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    try:
        code, out, err = await cli("health", "--target", f"127.0.0.1:{port}", *mtls)
        assert out.strip() == f"127.0.0.1:{port}: SERVING"
        assert code == 0, err
        code, _out, err = await cli("health", "--target", f"127.0.0.1:{port}")
        assert code == 1 and "UNAVAILABLE" in err  # plaintext on the serving port
        tls = ClientTls(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
        for _ in range(4):
            assert len((await rank(port, tls)).items) == 10
        target = f"127.0.0.1:{admin_port}"
        for client, ok in ((tls, True), (ClientTls(ca=pki.ca.cert), False)):
            channel = grpc.aio.secure_channel(target, channel_credentials(client))
            async with channel:
                call = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
                    admin_pb2.GetStatsRequest(), timeout=5
                )
                if ok:
                    stats = await call
                    assert stats.workers == 2 and stats.counters["ok"] >= 4
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
