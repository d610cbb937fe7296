"""Certificate rotation without a restart: new connections get the new files, a half-written
pair is not loaded, connections already open keep working."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import grpc
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.server.app import App
from ranking.tls import ClientTls, channel_credentials
from tests.conftest import SmallWorld, small_settings
from tests.deploy.certs import CA, Leaf

REQUEST = pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id="i1"), pb.Candidate(id="i2")])


def channel(port: int, tls: ClientTls) -> grpc.aio.Channel:
    # A local subchannel pool: a new channel is a new connection, hence a new handshake.
    options = [("grpc.use_local_subchannel_pool", 1), *tls.channel_options()]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls), options=options)


async def answers(port: int, tls: ClientTls) -> bool:
    async with channel(port, tls) as ch:
        try:
            await ranking_pb2_grpc.RankingServiceStub(ch).Rank(REQUEST, timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
        return True


class SecretVolume:
    """A folder laid out as Kubernetes mounts a Secret: `tls.crt -> ..data/tls.crt`,
    `..data -> ..<version>`; an update writes a new version and swaps `..data` atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.version = 0
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (folder / name).symlink_to(Path("..data") / name)

    def publish(self, leaf: Leaf, ca: CA) -> None:
        self.version += 1
        target = self.folder / f"..v{self.version}"
        target.mkdir()
        shutil.copy(leaf.cert, target / "tls.crt")
        shutil.copy(leaf.key, target / "tls.key")
        shutil.copy(ca.cert, target / "ca.crt")
        tmp = self.folder / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.folder / "..data")

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"


async def test_a_secret_volume_update_is_served_to_new_connections(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    old_ca, new_ca = CA(tmp_path / "old", "old-ca"), CA(tmp_path / "new", "new-ca")
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(old_ca.issue("server"), old_ca)
    app = App(small_settings(small_world, tls_cert=volume.cert, tls_key=volume.key))
    await app.start()
    try:
        assert app.tls is not None
        trusts_old, trusts_new = ClientTls(ca=old_ca.cert), ClientTls(ca=new_ca.cert)
        assert await answers(app.port, trusts_old)
        assert not await answers(app.port, trusts_new)
        async with channel(app.port, trusts_old) as before:  # connected before the rotation
            stub = ranking_pb2_grpc.RankingServiceStub(before)
            await stub.Rank(REQUEST, timeout=5)
            volume.publish(new_ca.issue("server"), new_ca)
            assert await answers(app.port, trusts_new)
            assert not await answers(app.port, trusts_old)
            assert app.tls.reloads == 1
            # The open connection keeps the certificate it was set up with.
            assert len((await stub.Rank(REQUEST, timeout=5)).items) == 2
    finally:
        await app.stop(0.5)


async def test_a_half_written_pair_is_not_loaded_until_it_matches(
    small_world: SmallWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_ca, new_ca = CA(tmp_path / "old", "old-ca"), CA(tmp_path / "new", "new-ca")
    live = tmp_path / "live"
    live.mkdir()
    first = old_ca.issue("server")
    shutil.copy(first.cert, live / "tls.crt")
    shutil.copy(first.key, live / "tls.key")
    app = App(small_settings(small_world, tls_cert=live / "tls.crt", tls_key=live / "tls.key"))
    await app.start()
    try:
        assert app.tls is not None
        second = new_ca.issue("server", folder=tmp_path / "second")
        # A writer that replaces the certificate first, then the key: in between, the pair
        # does not match. The old certificate keeps being served, with a warning.
        shutil.copy(second.cert, live / "tls.crt.tmp")
        os.replace(live / "tls.crt.tmp", live / "tls.crt")
        with caplog.at_level(logging.WARNING, logger="ranking.tls"):
            assert await answers(app.port, ClientTls(ca=old_ca.cert))
        assert app.tls.reloads == 0
        assert "TLS files changed but were not loaded" in caplog.text
        shutil.copy(second.key, live / "tls.key.tmp")
        os.replace(live / "tls.key.tmp", live / "tls.key")
        assert await answers(app.port, ClientTls(ca=new_ca.cert))
        assert app.tls.reloads == 1
    finally:
        await app.stop(0.5)


async def test_a_rotated_client_ca_applies_to_new_connections(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    """Mutual TLS: after the client CA bundle is replaced, clients of the old CA are refused."""
    server_ca, old_clients, new_clients = (
        CA(tmp_path / "s", "server-ca"),
        CA(tmp_path / "a", "clients-a"),
        CA(tmp_path / "b", "clients-b"),
    )
    volume = SecretVolume(tmp_path / "secret")
    server = server_ca.issue("server")
    volume.publish(server, old_clients)
    settings = small_settings(
        small_world, tls_cert=volume.cert, tls_key=volume.key, tls_client_ca=volume.ca
    )
    app = App(settings)
    await app.start()
    try:
        a = old_clients.issue("a", client=True)
        b = new_clients.issue("b", client=True)
        as_a = ClientTls(ca=server_ca.cert, cert=a.cert, key=a.key)
        as_b = ClientTls(ca=server_ca.cert, cert=b.cert, key=b.key)
        assert await answers(app.port, as_a)
        assert not await answers(app.port, as_b)
        volume.publish(server, new_clients)
        assert await answers(app.port, as_b)
        assert not await answers(app.port, as_a)
    finally:
        await app.stop(0.5)
