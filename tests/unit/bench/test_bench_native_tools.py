"""The C load tools, compiled by bench.native and run against each other on loopback."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.listening import listening_ports
from bench.loads.connrate import parse_conn_output
from bench.loads.request_response import parse_rr_output
from bench.native import NativeTools, build_tools


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> NativeTools:
    return build_tools(tmp_path_factory.mktemp("build"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(binary: Path) -> Iterator[int]:
    port = _free_port()
    server = subprocess.Popen([str(binary), "127.0.0.1", str(port)])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield port
    finally:
        server.kill()
        server.wait(timeout=5)


@pytest.fixture
def echo_port(tools: NativeTools) -> Iterator[int]:
    yield from _serve(tools.echo_server)


@pytest.fixture
def http_port(tools: NativeTools) -> Iterator[int]:
    yield from _serve(tools.http_server)


def test_build_is_cached_by_source_hash(tools: NativeTools, tmp_path: Path) -> None:
    again = build_tools(tools.rr_client.parent)
    assert again == tools
    assert tools.rr_client.name.startswith("rr_client-")


def test_rr_client_stops_at_its_round_bound(tools: NativeTools, echo_port: int) -> None:
    out = subprocess.run(
        [str(tools.rr_client), "127.0.0.1", str(echo_port), "1024", "10", "500"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    samples = parse_rr_output(out.stdout)
    assert len(samples) == 500
    assert all(0 < ns < 1_000_000_000 for ns in samples)


def test_rr_client_stops_at_its_time_bound(tools: NativeTools, echo_port: int) -> None:
    start = time.monotonic()
    out = subprocess.run(
        [str(tools.rr_client), "127.0.0.1", str(echo_port), "1024", "0.3", "100000000"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert time.monotonic() - start < 5
    assert len(parse_rr_output(out.stdout)) > 10


def test_conn_client_opens_one_connection_per_exchange(tools: NativeTools, echo_port: int) -> None:
    out = subprocess.run(
        [str(tools.conn_client), "127.0.0.1", str(echo_port), "1024", "10", "200"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    run = parse_conn_output(out.stdout)
    assert (run.connections, run.failures) == (200, 0)
    assert all(c <= t for c, t in zip(run.connect_ns, run.total_ns, strict=True))


def test_conn_client_reports_failures_when_nothing_listens(tools: NativeTools) -> None:
    out = subprocess.run(
        [str(tools.conn_client), "127.0.0.1", str(_free_port()), "1024", "2", "1000"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    run = parse_conn_output(out.stdout)
    assert run.connections == 0
    assert run.failures == 100
    assert "Connection refused" in out.stderr


def test_http_server_answers_pipelined_requests_on_one_connection(
    tools: NativeTools, http_port: int
) -> None:
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3 or not data.endswith(b"x" * 1024):
            chunk = sock.recv(65536)
            assert chunk, "the server closed a keep-alive connection"
            data += chunk
    assert data.count(b"Content-Length: 1024\r\n") == 3


def test_listening_ports_reads_ss_output() -> None:
    text = "LISTEN 0 4096 10.88.1.10:8080 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*\n"
    assert listening_ports(text) == {8080, 22}
