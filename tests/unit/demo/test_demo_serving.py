"""Every demo service: graceful SIGTERM, and a port already in use is a clear error and exit 1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from demo_processes import REPO_ROOT, ServiceStarter, Shop, SilentBackend, frontend_command

SERVICES = [
    ("catalog", ()),
    ("reviews", ("--version", "v2")),
    ("ratings", ()),
    ("echo", ()),
    (
        "frontend",
        ("--catalog", "127.0.0.1:1", "--reviews", "127.0.0.1:1", "--ratings", "127.0.0.1:1"),
    ),
]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a service that is expected to exit by itself (bad flags, busy port)."""
    command = [sys.executable, "-m", f"demo.{module}", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
    )


@pytest.fixture
def occupied_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize(("module", "args"), SERVICES, ids=[s[0] for s in SERVICES])
def test_sigterm_stops_the_service_cleanly(
    start: ServiceStarter, module: str, args: tuple[str, ...]
) -> None:
    service = start(module, *args)
    assert service.stop(timeout=5) == 0
    assert "received SIGTERM" in service.output()


@pytest.mark.parametrize(("module", "args"), SERVICES, ids=[s[0] for s in SERVICES])
def test_port_in_use_exits_1_naming_the_port(
    occupied_port: int, module: str, args: tuple[str, ...]
) -> None:
    result = run_module(module, "--host", "127.0.0.1", "--port", str(occupied_port), *args)
    assert result.returncode == 1
    assert f"{module}: cannot listen on 127.0.0.1:{occupied_port}" in result.stderr
    assert "another --port" in result.stderr


def test_bad_backend_address_is_a_usage_error_naming_the_value() -> None:
    result = run_module(
        "frontend", "--catalog", "catalog.local", "--reviews", "127.0.0.1:1", "--ratings", "[::1]:1"
    )
    assert result.returncode == 2
    assert "'catalog.local' is not HOST:PORT" in result.stderr


def test_sigterm_lets_an_in_flight_request_finish_before_exiting(
    shop: Shop, start: ServiceStarter, silent_backend: SilentBackend
) -> None:
    backends = (silent_backend.address, shop.reviews_v1.address, shop.ratings.address)
    frontend = start(*frontend_command(*backends, "--backend-timeout", "1"))
    with socket.create_connection((frontend.host, frontend.port), timeout=5) as client:
        client.sendall(b"GET /product/1 HTTP/1.1\r\nHost: f\r\n\r\n")
        assert silent_backend.accepted.wait(5), "the frontend never called the catalog"
        frontend.process.send_signal(signal.SIGTERM)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 502 ")
    assert b"connection: close" in reply
    assert b'"backend":"catalog"' in reply
    assert frontend.process.wait(5) == 0
