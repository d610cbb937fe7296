"""Where a worker listens: the serving port (plaintext or TLS), the admin port, the probe port.

The admin service (`GetStats`, `ReloadModel`) is never on the serving port: it has its own
grpc.aio server on `admin_host:admin_port` (loopback by default, off unless `admin_port` is
set) with the serving port's TLS settings, and `ReloadModel` still requires the admin token.
A client that can reach the serving port therefore cannot read counters or swap the model.
The probe port serves only `grpc.health.v1`, in plaintext, sharing the serving port's health
servicer (so it reports exactly what the serving port does), for Kubernetes' native gRPC
probes, which cannot speak TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ranking.api.v1 import admin_pb2, admin_pb2_grpc
from ranking.settings import Settings
from ranking.tls import CertificateReloader, ServerTls, server_credentials

__all__ = [
    "ListenError",
    "Listeners",
    "OpsServers",
    "bind",
    "serving_credentials",
    "start_ops_servers",
]

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def serving_credentials(
    s: Settings,
) -> tuple[grpc.ServerCredentials | None, CertificateReloader | None]:
    """TLS credentials for the serving and admin ports, or (None, None) for plaintext.
    Raises `ranking.tls.TlsError` naming a missing or bad file."""
    if s.tls_cert is None or s.tls_key is None:
        return None, None
    return server_credentials(ServerTls(s.tls_cert, s.tls_key, s.tls_client_ca))


class ListenError(OSError):
    """A port the settings name cannot be listened on (in use, or not an address here)."""


def bind(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    flag: str = "--port",
) -> int:
    """Add a listening port; returns the bound port. `ListenError` when it cannot listen,
    naming the address and the setting (`flag`) that chose it."""
    address = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio's "Failed to bind to address"
        raise ListenError(
            f"cannot listen on {address} ({flag}): the port is in use by another process, "
            "or the host is not an address of this machine"
        ) from None
    return int(bound)


@dataclass
class Listeners:
    """The ports a worker bound (0 = that listener is off)."""

    serving: int = 0
    admin: int = 0
    health: int = 0


@dataclass
class OpsServers:
    """The admin and probe servers of one worker (None when off), stopped after the serving
    server."""

    admin: grpc.aio.Server | None = None
    health: grpc.aio.Server | None = None

    async def stop(self, grace_s: float) -> None:
        for server in (self.health, self.admin):
            if server is not None:
                await server.stop(grace_s)
        self.admin = self.health = None


async def start_ops_servers(
    s: Settings,
    *,
    admin_servicer: admin_pb2_grpc.AdminServiceServicer,
    health_servicer: health.aio.HealthServicer,
    options: list[tuple[str, Any]],
    listeners: Listeners,
) -> OpsServers:
    """Start the admin server (when `admin_port` is set) and the probe server (when
    `health_port` is set); records their ports in `listeners`."""
    ops = OpsServers()
    try:
        if s.admin_port is not None:
            # Credentials of their own: gRPC's core asks a credentials' fetcher for the initial
            # certificate when a server is set up, so one object cannot serve two servers.
            credentials, _ = serving_credentials(s)
            ops.admin = grpc.aio.server(options=options)
            admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, ops.admin)
            reflection.enable_server_reflection((ADMIN_SERVICE, reflection.SERVICE_NAME), ops.admin)
            listeners.admin = bind(
                ops.admin, s.admin_host, s.admin_port, credentials, "--admin-port"
            )
            await ops.admin.start()
        if s.health_port is not None:
            ops.health = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, ops.health)
            listeners.health = bind(ops.health, s.host, s.health_port, None, "--health-port")
            await ops.health.start()
    except BaseException:
        await ops.stop(0)
        raise
    return ops
