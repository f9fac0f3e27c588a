"""demo.loadgen against real services: exact counts when healthy, exit 1 when something fails."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from demo_processes import REPO_ROOT, ServiceStarter, Shop, frontend_command


def run_loadgen(
    frontend: str, echo: str, ratings: str, *extra: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "demo.loadgen",
        "--frontend",
        frontend,
        "--echo",
        echo,
        "--ratings",
        ratings,
        *extra,
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def json_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback listener that never accepts or answers: every request to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_healthy_shop_gives_exact_counts_and_zero_errors(shop: Shop) -> None:
    result = run_loadgen(
        shop.frontend.address,
        shop.echo.address,
        shop.ratings.address,
        "--requests=40",
        "--duration-limit=15",
        "--concurrency=4",
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json_report(result)
    kinds = report["kinds"]
    assert (report["ok"], report["errors"], report["stopped_by_duration_limit"]) == (True, 0, False)
    assert (kinds["http"]["sent"], kinds["http"]["ok"]) == (40, 40)
    assert kinds["http"]["responses"] == {"200": 40}
    assert kinds["http"]["reviews_versions"] == {"v2": 40}
    assert kinds["grpc-unary"]["responses"] == {"OK": 4}
    assert kinds["grpc-stream"]["totals"] == {"messages_expected": 20, "messages_received": 20}
    assert kinds["tcp-echo"]["ok"] == 4
    assert kinds["tcp-echo"]["totals"] == {"bytes_received": 4 * 4096, "bytes_sent": 4 * 4096}
    latency = kinds["http"]["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]


def test_human_report_is_a_table_with_every_kind(shop: Shop) -> None:
    result = run_loadgen(
        shop.frontend.address,
        shop.echo.address,
        shop.ratings.address,
        "--requests=10",
        "--duration-limit=15",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("http", "grpc-unary", "grpc-stream", "tcp-echo"):
        assert kind in result.stdout
    assert "reviews v2: 10" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK in ")


def test_down_reviews_backend_makes_http_fail_with_502_and_exit_1(
    shop: Shop, start: ServiceStarter, refused_address: str
) -> None:
    frontend = start(*frontend_command(shop.catalog.address, refused_address, shop.ratings.address))
    result = run_loadgen(
        frontend.address,
        shop.echo.address,
        shop.ratings.address,
        "--requests=20",
        "--duration-limit=15",
        "--json",
    )
    assert result.returncode == 1
    http = json_report(result)["kinds"]["http"]
    assert (http["errors"], http["responses"]) == (20, {"502": 20})
    (reason,) = http["error_reasons"]
    assert reason.startswith("HTTP 502: backend reviews failed")
    assert "refused" in reason


def test_down_echo_is_reported_as_tcp_echo_errors_and_exit_1(
    shop: Shop, refused_address: str
) -> None:
    result = run_loadgen(
        shop.frontend.address,
        refused_address,
        shop.ratings.address,
        "--requests=20",
        "--duration-limit=15",
        "--json",
    )
    assert result.returncode == 1
    report = json_report(result)
    assert report["kinds"]["http"]["errors"] == 0
    echo = report["kinds"]["tcp-echo"]
    assert (echo["sent"], echo["errors"]) == (2, 2)
    assert list(echo["error_reasons"]) == [f"{refused_address}: connection refused"]


def test_duration_limit_stops_a_run_against_a_hanging_target(blackhole: str) -> None:
    started = time.monotonic()
    result = run_loadgen(
        blackhole,
        blackhole,
        blackhole,
        "--requests=1000000",
        "--duration-limit=1",
        "--json",
    )
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert result.returncode == 1
    report = json_report(result)
    assert report["stopped_by_duration_limit"] is True
    for stats in report["kinds"].values():
        assert stats["ok"] == 0
        expected = f"none of {stats['sent']} sent completed before --duration-limit"
        assert stats["error_reasons"] == {expected: 1}
