"""The admin service is never on the serving port: it has its own port (loopback by default,
off unless set), with the serving port's TLS, and ReloadModel still needs the token. The probe
port serves health only, in plaintext."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.server.app import App
from ranking.settings import Settings
from ranking.tls import ClientTls, channel_credentials
from tests.conftest import SmallWorld, small_settings
from tests.deploy.certs import CA


async def listed_services(port: int) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        return {s.name for s in answer.list_services_response.service}


async def test_the_serving_port_has_no_admin_service(small_world: SmallWorld) -> None:
    app = App(small_settings(small_world, admin_token="s3cret", admin_port=0))
    await app.start()
    try:
        assert app.listeners.admin not in (0, app.port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            for call in (
                admin.GetStats(admin_pb2.GetStatsRequest()),
                admin.ReloadModel(
                    admin_pb2.ReloadModelRequest(bundle_path=str(small_world.bundle)),
                    metadata=(("x-admin-token", "s3cret"),),  # even with the right token
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            await ranking_pb2_grpc.RankingServiceStub(ch).Rank(
                pb.RankRequest(user_id="u1", candidates=[pb.Candidate(id="i1")])
            )
        assert "ranking.v1.AdminService" not in await listed_services(app.port)
        assert "ranking.v1.AdminService" in await listed_services(app.listeners.admin)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.admin}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            stats = await admin.GetStats(admin_pb2.GetStatsRequest())
            assert stats.counters["ok"] == 1  # the Rank call above, on the serving port
            assert stats.model_version == "small-v1"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.ReloadModel(
                    admin_pb2.ReloadModelRequest(bundle_path=str(small_world.bundle))
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            done = await admin.ReloadModel(
                admin_pb2.ReloadModelRequest(bundle_path=str(small_world.bundle)),
                metadata=(("x-admin-token", "s3cret"),),
            )
            assert done.model_version == "small-v1"
    finally:
        await app.stop(0.5)


def test_by_default_there_is_no_admin_listener_and_it_would_be_on_loopback() -> None:
    s = Settings()
    assert s.admin_port is None and s.health_port is None
    assert s.admin_host == "127.0.0.1"
    with pytest.raises(ValueError, match="must differ"):
        Settings(port=50051, admin_port=50051)


async def test_without_admin_port_no_admin_listener_is_started(small_world: SmallWorld) -> None:
    app = App(small_settings(small_world, admin_token="s3cret"))
    await app.start()
    try:
        assert (app.listeners.admin, app.listeners.health) == (0, 0)
        assert app.listeners.serving == app.port
    finally:
        await app.stop(0.5)


async def test_with_tls_the_admin_port_needs_tls_and_the_probe_port_is_plaintext_health_only(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "ca")
    server = ca.issue("server")
    settings = small_settings(
        small_world, tls_cert=server.cert, tls_key=server.key, admin_port=0, health_port=0
    )
    app = App(settings)
    await app.start()
    try:
        admin_target = f"127.0.0.1:{app.listeners.admin}"
        async with grpc.aio.insecure_channel(admin_target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = channel_credentials(ClientTls(ca=ca.cert))
        async with grpc.aio.secure_channel(admin_target, creds) as ch:
            stats = await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
            assert stats.workers == 1

        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.health}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "ranking.v1.RankingService"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            for call in (
                ranking_pb2_grpc.RankingServiceStub(ch).Rank(pb.RankRequest(user_id="u1")),
                admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await app.stop(0.5)
