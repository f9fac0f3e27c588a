"""weft.hbone.accept on loopback: accept_waiting hands over every waiting connection as the
socket socket.accept() would give (family, stream, blocking, its peer), and returns when none
is left; accept_descriptors does as bare non-blocking descriptors (weft._native's accept4)."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from weft.hbone.accept import accept_descriptors, accept_waiting, listening_socket
from weft.hbone.native_session import native_available


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


@pytest.mark.native
@pytest.mark.skipif(not native_available(), reason="weft._native is not built")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_descriptors_are_handed_over_non_blocking_with_the_listeners_nodelay(host: str) -> None:
    """accept_descriptors (weft._native's accept4): every waiting connection as a descriptor,
    non-blocking and close-on-exec from accept4(), with its peer; TCP_NODELAY set on the listener
    is on every accepted socket (what lets the outbound agent skip C's setsockopt)."""
    listener = listening_socket(host, 0)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clients: list[socket.socket] = []
    accepted: list[tuple[int, tuple[str, int]]] = []
    try:
        for _ in range(3):
            clients.append(socket.create_connection(listener.getsockname()[:2], timeout=5))
        assert accept_descriptors(listener, lambda fd, peer: accepted.append((fd, peer)), "t")
        assert len(accepted) == 3  # all of them, then EAGAIN ended the loop
        for client, (fd, peer) in zip(clients, accepted, strict=True):
            assert os.get_blocking(fd) is False
            assert os.get_inheritable(fd) is False  # SOCK_CLOEXEC
            assert peer == client.getsockname()[:2]
            with socket.socket(listener.family, socket.SOCK_STREAM, 0, os.dup(fd)) as sock:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert sock.getsockname()[:2] == listener.getsockname()[:2]
                with pytest.raises(BlockingIOError):
                    sock.recv(4)  # nothing sent yet: a non-blocking socket does not wait
                client.sendall(b"weft")
                client.shutdown(socket.SHUT_WR)
                sock.setblocking(True)
                assert sock.recv(4) == b"weft"
    finally:
        for fd, _ in accepted:
            if fd >= 0:
                os.close(fd)
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.native
@pytest.mark.skipif(not native_available(), reason="weft._native is not built")
def test_a_descriptor_accept_error_is_logged_and_ends_the_wake_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    not_listening = socket.socket()
    try:
        with caplog.at_level(logging.WARNING):
            assert accept_descriptors(not_listening, lambda fd, peer: os.close(fd), "outbound")
        assert "outbound accept failed" in caplog.text
    finally:
        not_listening.close()
