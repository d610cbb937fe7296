"""TLS credentials from PEM files: the server's (re-read when the files change) and a client's.

Server: `--tls-cert` and `--tls-key` serve TLS; `--tls-client-ca` also requires every client to
present a certificate signed by that CA (mutual TLS). The files are checked when the server
starts (a missing, unreadable or mismatched file is a `TlsError` naming it, which the CLI prints
as its exit message), and again on every new connection: gRPC's core asks `CertificateReloader`
for the certificate configuration before each TLS handshake, and the reloader hands it a new one
when the files' identity (inode, mtime, size) has changed and the new files check out. So a
rotated certificate (cert-manager, a Kubernetes Secret volume's symlink swap, or `mv` of new
files over the old) is served to new connections without a restart; connections already open
keep the certificate they were set up with (`RANKING_MAX_CONNECTION_AGE_S` bounds how long).
Files caught half-written (a key that does not match its certificate) are not loaded: the last
good configuration serves on and the next handshake looks again.

Client: `ClientTls` names a CA bundle (else the system's roots), an optional client certificate
and key, and an optional server name to check instead of the target's host name.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc is imported where it is used: `ranking --help` stays quick
    import grpc

__all__ = [
    "CertificateReloader",
    "ClientTls",
    "ServerTls",
    "TlsError",
    "add_client_tls_arguments",
    "channel_credentials",
    "server_credentials",
]

log = logging.getLogger(__name__)


class TlsError(Exception):
    """A TLS file is missing, unreadable or does not check out; the message names it."""


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key, and the CA its clients must be signed by."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class _Material:
    fingerprint: tuple[tuple[int, int, int], ...]
    cert: bytes
    key: bytes
    client_ca: bytes | None


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{what} {path}: not a PEM file")
    return data


def _fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()  # follows symlinks: a Secret volume swaps a symlink on update
        except OSError:
            out.append((-1, -1, -1))
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _load(tls: ServerTls) -> _Material:
    """Read and check the server's files; TlsError names the first one that is wrong."""
    paths = (tls.cert, tls.key) + ((tls.client_ca,) if tls.client_ca else ())
    fingerprint = _fingerprint(paths)
    cert = _read(tls.cert, "--tls-cert")
    key = _read(tls.key, "--tls-key")
    client_ca = _read(tls.client_ca, "--tls-client-ca") if tls.client_ca else None
    # The stdlib's OpenSSL checks what gRPC's core would only find at the first handshake:
    # that the chain and the key parse and belong together, and that the CA bundle parses.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"--tls-cert {tls.cert} / --tls-key {tls.key}: not a certificate chain and its "
            f"private key ({getattr(exc, 'reason', None) or exc})"
        ) from None
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"--tls-client-ca {tls.client_ca}: not a CA bundle "
                f"({getattr(exc, 'reason', None) or exc})"
            ) from None
    if _fingerprint(paths) != fingerprint:  # what was checked may not be what was read
        raise TlsError(f"--tls-cert {tls.cert}: the files changed while they were read")
    return _Material(fingerprint, cert, key, client_ca)


def _configuration(m: _Material) -> grpc.ServerCertificateConfiguration:
    import grpc

    return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], m.client_ca)


class CertificateReloader:
    """gRPC's certificate configuration fetcher for `ServerTls`: called by the core before
    each new connection's handshake; returns a new configuration when the files changed and
    check out, else None (keep the current one). Costs one `stat` per file per connection."""

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._paths = (tls.cert, tls.key) + ((tls.client_ca,) if tls.client_ca else ())
        self._lock = threading.Lock()  # the core may call from several threads
        self.current = _load(tls)  # raises TlsError: a bad start is refused
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        #: How many times new files were loaded after the start (for tests and logs).
        self.reloads = 0

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return _configuration(self.current)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                now = _fingerprint(self._paths)
                if now == self.current.fingerprint or now == self._refused:
                    return None
                try:
                    material = _load(self.tls)
                except TlsError as exc:
                    # Likely caught mid-rotation; the old certificate serves on.
                    self._refused = now
                    log.warning("TLS files changed but were not loaded: %s", exc)
                    return None
                self.current = material
                self._refused = None
                self.reloads += 1
                log.info("TLS certificate reloaded from %s", self.tls.cert)
                return _configuration(material)
        except Exception:  # an exception here would fail the handshake; never let it
            log.exception("TLS certificate reload failed; the old certificate serves on")
            return None


def server_credentials(tls: ServerTls) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """Server credentials that re-read `tls`'s files on change; raises TlsError at start."""
    import grpc

    reloader = CertificateReloader(tls)
    credentials = grpc.dynamic_ssl_server_credentials(
        reloader.initial(), reloader, require_client_authentication=tls.client_ca is not None
    )
    return credentials, reloader


@dataclass(frozen=True)
class ClientTls:
    """How a client speaks TLS: roots (None = the system's), an optional client certificate
    and key (for mutual TLS), and an optional name to check the server's certificate against
    instead of the target's host name (e.g. when dialling an IP address)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientTls | None:
        """The options `add_client_tls_arguments` added; None when none of them was given."""
        given = (args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        if not args.tls and all(v is None for v in given):
            return None
        return cls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """gRPC channel credentials for `tls`; raises TlsError naming an unreadable file."""
    import grpc

    roots = _read(tls.ca, "--tls-ca") if tls.ca else None
    cert = _read(tls.cert, "--tls-cert") if tls.cert else None
    key = _read(tls.key, "--tls-key") if tls.key else None
    return grpc.ssl_channel_credentials(roots, key, cert)


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The client TLS options shared by `ranking rank`, `ranking health` and `ranking load`."""
    g = parser.add_argument_group("TLS (any of these turns TLS on)")
    g.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    g.add_argument("--tls-ca", type=Path, metavar="FILE", help="PEM roots to verify the server")
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (mTLS)")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="client private key (mTLS)")
    g.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify the server's certificate for"
    )
