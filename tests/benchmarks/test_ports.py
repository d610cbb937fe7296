"""benchmarks.ports: the ports handed out for the fixtures' servers."""

from __future__ import annotations

import socket

from benchmarks.ports import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    # The kernel gives a just-closed port to the next bind now and then, so consecutive calls
    # (a server's serving, admin and health ports) could name one port twice.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p <= 65535 for p in ports)


def test_a_port_it_hands_out_can_be_listened_on() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert s.getsockname()[1] == port
