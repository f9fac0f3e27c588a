"""`weft stat`: rates, success and percentiles from real waypoint metrics (WaypointMetrics'
exposition), and the command against a live metrics endpoint on loopback."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from waypoint.admin import AdminServer
from waypoint.telemetry import RequestRecord, WaypointMetrics
from weft.cli import main
from weft.stat_metrics import parse_counts, quantile, service_stats


def record(service: str, namespace: str, code: int, duration_ms: float) -> RequestRecord:
    return RequestRecord(
        start_time="2026-01-01T00:00:00Z", method="GET", path="/", authority=service,
        protocol="HTTP/1.1", response_code=code, response_flags="-", duration_ms=duration_ms,
        bytes_received=0, bytes_sent=0, request_id="r", trace_id="t",
        destination_service=f"{service}.{namespace}.svc.cluster.local",
        destination_service_name=service, destination_service_namespace=namespace,
    )  # fmt: skip


def test_rate_success_and_percentiles_over_the_interval() -> None:
    metrics = WaypointMetrics()
    metrics.record(record("reviews", "shop", 200, 3.0))  # before the window: not counted
    before = parse_counts([metrics.exposition().decode()])
    for i in range(100):
        # 90 fast successes (1-9 ms), 10 slow 503s (900 ms)
        metrics.record(record("reviews", "shop", 200, 1.0 + i % 9) if i < 90 else
                       record("reviews", "shop", 503, 900.0))  # fmt: skip
    metrics.record(record("ratings", "ratings", 200, 20.0))
    after = parse_counts([metrics.exposition().decode()])
    rows = {r.service: r for r in service_stats(before, after, seconds=10.0)}
    reviews = rows["reviews"]
    assert reviews.requests == 100
    assert reviews.rps == pytest.approx(10.0)
    assert reviews.success_rate == pytest.approx(0.90)
    assert reviews.p50_ms is not None
    assert 1.0 <= reviews.p50_ms <= 10.0
    assert reviews.p99_ms is not None
    assert 500.0 <= reviews.p99_ms <= 1000.0  # Istio's buckets: the 900 ms lie in (500, 1000]
    assert rows["ratings"].requests == 1
    only_shop = service_stats(before, after, seconds=10.0, namespace="shop")
    assert [r.service for r in only_shop] == ["reviews"]


def test_quantile_interpolates_within_a_bucket_like_prometheus() -> None:
    buckets = {10.0: 50.0, 20.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(10.0)
    assert quantile(0.75, buckets) == pytest.approx(15.0)
    assert quantile(0.99, {10.0: 0.0, float("inf"): 5.0}) == 10.0  # highest finite bound
    assert quantile(0.5, {}) is None


def test_weft_stat_scrapes_a_waypoint_twice(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = WaypointMetrics()
    started = threading.Event()
    address: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        async def main_() -> None:
            admin = AdminServer(metrics, ready=lambda: True)
            host, port = await admin.start("127.0.0.1", 0)
            address.append(f"{host}:{port}")
            started.set()
            while not stop.is_set():
                metrics.record(record("reviews", "shop", 200, 2.0))
                await asyncio.sleep(0.01)
            await admin.close()

        asyncio.run(main_())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        code = main(["stat", "--waypoint", address[0], "--interval", "0.5", "-o", "json"])
    finally:
        stop.set()
        thread.join(10)
    assert code == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["namespace"], row["service"], row["success_rate"]) == ("shop", "reviews", 1.0)
    assert 20 <= row["rps"] <= 120  # about 100/s were recorded while it watched
    assert row["p50_ms"] is not None
