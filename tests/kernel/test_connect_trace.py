"""bench.connect_trace in the real kernel: it sees every connect() of conn_client, times the system
call inside what the client itself measures, and reads Weft's programs' run times."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.connect_trace import BPF_STATS, ConnectTracer, ProgramTimes, program_costs
from bench.loads.connrate import parse_conn_output
from bench.native import build_tools
from bench.stats import percentile


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback server answering each connection's bytes until EOF (threads, for a few dozen)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def test_tracer_times_every_connect_inside_what_the_client_measures(
    echo_server: int, tmp_path: Path
) -> None:
    conn_client = build_tools(tmp_path).conn_client
    tracer = ConnectTracer()
    try:
        tracer.take()
        out = subprocess.run(
            [str(conn_client), "127.0.0.1", str(echo_server), "64", "5", "60", "1", "2000"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        calls = tracer.take()
    finally:
        tracer.close()
    run = parse_conn_output(out.stdout)
    assert (run.connections, run.failures) == (60, 0)
    summary = calls.summary()
    assert summary["calls"] == 60  # every connect(), each once, none of other processes
    # The system call is part of the interval conn_client times around it.
    assert 0 < summary["connect_p50_us"] <= percentile(run.connect_ns, 0.5) / 1000
    for phase in ("before_connect", "in_connect", "after_connect"):
        assert 0.0 <= summary[phase]["switched"] <= 1.0


def test_program_times_switch_kernel_accounting_on_and_back() -> None:
    was = BPF_STATS.read_text().strip()
    times = ProgramTimes()
    try:
        assert BPF_STATS.read_text().strip() == "1"
        before = times.snapshot()
        assert all(name.startswith("weft_") for name in before)
    finally:
        times.close()
    assert BPF_STATS.read_text().strip() == was
    assert program_costs({"weft_x": (10, 1000)}, {"weft_x": (20, 3000)}, 5) == {
        "weft_x": {"runs_per_connection": 2.0, "ns_per_run": 200.0}
    }
