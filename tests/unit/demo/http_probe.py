"""Blocking HTTP/1.1 probes for the demo service tests: real sockets, raw bytes when needed."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from demo_processes import RunningService


def get(service: RunningService, path: str, method: str = "GET") -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection; returns status, lower-cased headers and JSON body."""
    connection = http.client.HTTPConnection(service.host, service.port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(body) if body else None
    finally:
        connection.close()


def exchange_raw(service: RunningService, data: bytes) -> bytes:
    """Send raw bytes, half-close, and return everything the server sent until it closed."""
    with socket.create_connection((service.host, service.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
