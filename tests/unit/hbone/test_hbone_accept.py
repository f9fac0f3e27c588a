"""weft.hbone.accept on loopback: accept_waiting hands over every waiting connection as the
socket socket.accept() would give (family, stream, blocking, its peer), and returns when none
is left."""

from __future__ import annotations

import socket

import pytest

from weft.hbone.accept import accept_waiting, listening_socket


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_waiting_connection_is_handed_over_as_socket_accept_gives_it(host: str) -> None:
    listener = listening_socket(host, 0)
    clients: list[socket.socket] = []
    accepted: list[tuple[socket.socket, tuple[str, int]]] = []
    try:
        for _ in range(3):
            client = socket.create_connection(listener.getsockname()[:2], timeout=5)
            clients.append(client)
        accept_waiting(listener, lambda sock, peer: accepted.append((sock, peer)), "test")
        assert len(accepted) == 3  # all of them, then BlockingIOError ended the loop
        for client, (sock, peer) in zip(clients, accepted, strict=True):
            assert sock.family == listener.family
            assert sock.type == socket.SOCK_STREAM
            assert sock.gettimeout() is None  # blocking, as socket.accept() leaves it
            assert peer == client.getsockname()[:2]
            client.sendall(b"weft")
            assert sock.recv(4) == b"weft"
    finally:
        for sock, _ in accepted:
            sock.close()
        for client in clients:
            client.close()
        listener.close()
