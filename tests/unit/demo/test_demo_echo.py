"""demo.echo: every byte comes back, including everything sent before a half-close."""

from __future__ import annotations

import os
import socket

from demo_processes import Shop
from http_probe import exchange_raw


def test_echoes_exactly_the_bytes_sent_then_closes_after_half_close(shop: Shop) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # larger than socket buffers: exercises flow control
    assert exchange_raw(shop.echo, payload) == payload


def test_interactive_round_trips_before_the_half_close(shop: Shop) -> None:
    with socket.create_connection((shop.echo.host, shop.echo.port), timeout=5) as sock:
        for message in (b"ping", b"\x00\xff binary \r\n", b"x" * 1000):
            sock.sendall(message)
            received = b""
            while len(received) < len(message):
                received += sock.recv(65536)
            assert received == message
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        tail = b""
        while chunk := sock.recv(65536):
            tail += chunk
        assert tail == b"last words"


def test_empty_connection_with_immediate_half_close_gets_a_clean_close(shop: Shop) -> None:
    assert exchange_raw(shop.echo, b"") == b""
