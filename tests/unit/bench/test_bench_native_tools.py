"""The C load tools, compiled by bench.native and run against each other on loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bench import native
from bench.listening import listening_ports
from bench.loads.connrate import CONNRATE, parse_conn_output
from bench.loads.request_response import parse_rr_output
from bench.measurement import LoadContext
from bench.native import NativeTools, build_tools
from bench.testbed import Testbed


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


def test_a_change_to_the_shared_header_rebuilds_the_tools(
    tools: NativeTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = tmp_path / "tool_common.h"
    changed.write_bytes(native.SHARED_HEADER.read_bytes() + b"/* changed */\n")
    monkeypatch.setattr(native, "SHARED_HEADER", changed)
    rebuilt = native._build_one(native.TOOLS_DIR / "rr_client.c", tools.rr_client.parent)
    assert rebuilt != tools.rr_client
    assert rebuilt.name.startswith("rr_client-")


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


def test_conn_client_keeps_its_concurrency_in_flight(tools: NativeTools) -> None:
    """Four loops: a server that holds each connection 50 ms sees four at once, never five."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    lock = threading.Lock()
    open_now, most = [0], [0]

    def serve(conn: socket.socket) -> None:
        with lock:
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
        try:
            data = b""
            while len(data) < 1024 and (chunk := conn.recv(1024)):
                data += chunk
            time.sleep(0.05)
            with lock:
                open_now[0] -= 1
            conn.sendall(data)
        finally:
            conn.close()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        out = subprocess.run(
            [str(tools.conn_client), "127.0.0.1", str(port), "1024", "10", "40", "4"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    finally:
        listener.close()
    run = parse_conn_output(out.stdout)
    assert (run.connections, run.failures) == (40, 0)
    assert most[0] == 4
    # 40 connections of >= 50 ms each, 4 at a time: about 0.5 s, where one at a time takes 2 s.
    assert run.elapsed_ns < 1.5e9


def test_conn_client_paces_its_connections_when_given_an_interval(
    tools: NativeTools, echo_port: int
) -> None:
    """INTERVAL_US 20 ms for 0.5 s: about 25 connections, where back to back makes hundreds."""
    out = subprocess.run(
        [str(tools.conn_client), "127.0.0.1", str(echo_port), "1024", "0.5", "10000", "1",
         "20000"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    run = parse_conn_output(out.stdout)
    assert run.failures == 0
    assert 15 <= run.connections <= 26
    assert all(ns > 0 for ns in run.connect_ns)


class _LocalTestbed:
    """Runs a load's client on this machine (the loopback stands in for the lab's workloads)."""

    def exec(
        self, workload: str, argv: list[str], timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def test_connrate_load_reports_the_rate_one_and_eight_at_a_time(
    tools: NativeTools, echo_port: int
) -> None:
    ctx = LoadContext(
        cast(Testbed, _LocalTestbed()), "client", "127.0.0.1", echo_port, 0.4, 500_000, tools
    )
    outcome = CONNRATE.run(ctx)
    assert set(outcome.values) == {metric.key for metric in CONNRATE.metrics}
    assert outcome.values["conn_s"] > 0
    assert outcome.values["conn_s_8"] > 0
    assert 0 < outcome.values["connect_p50_us"] < 1_000_000
    assert outcome.samples_us


def test_conn_client_counts_a_connection_that_never_answers_as_a_failure(
    tools: NativeTools,
) -> None:
    """A stalled connection must cost the run one failure after 5 s, not hang it."""
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    try:
        start = time.monotonic()
        out = subprocess.run(
            [str(tools.conn_client), "127.0.0.1", str(listener.getsockname()[1]), "1024", "1",
             "1000"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        listener.close()
    assert time.monotonic() - start < 15
    run = parse_conn_output(out.stdout)
    assert (run.connections, run.failures) == (0, 1)
    assert "no echo within the I/O timeout" in out.stderr


def test_conn_client_refuses_a_bad_concurrency(tools: NativeTools, echo_port: int) -> None:
    out = subprocess.run(
        [str(tools.conn_client), "127.0.0.1", str(echo_port), "1024", "1", "10", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "CONCURRENCY" in out.stderr


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
