"""The metrics and readiness endpoint."""

from __future__ import annotations

import asyncio

from waypoint.admin import AdminServer, answer
from waypoint.http1 import Request, RequestParser
from waypoint.telemetry import WaypointMetrics


def request(target: str, method: str = "GET") -> Request:
    (parsed, _) = RequestParser().feed(f"{method} {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert isinstance(parsed, Request)
    return parsed


def test_metrics_are_served_in_prometheus_text_format() -> None:
    reply = answer(request("/metrics"), WaypointMetrics(), ready=True)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain; version=0.0.4" in reply
    assert b"# TYPE istio_requests_total counter" in reply


def test_readiness_follows_the_proxy() -> None:
    assert answer(request("/healthz/ready"), WaypointMetrics(), ready=True).startswith(
        b"HTTP/1.1 200"
    )
    assert answer(request("/healthz/ready"), WaypointMetrics(), ready=False).startswith(
        b"HTTP/1.1 503"
    )


def test_unknown_path_and_method_are_refused() -> None:
    assert answer(request("/stats"), WaypointMetrics(), ready=True).startswith(b"HTTP/1.1 404")
    assert answer(request("/metrics", "POST"), WaypointMetrics(), ready=True).startswith(
        b"HTTP/1.1 405"
    )


def test_head_gets_headers_only() -> None:
    assert answer(request("/healthz/ready", "HEAD"), WaypointMetrics(), ready=True).endswith(
        b"\r\n\r\n"
    )


def test_server_answers_on_loopback_and_refuses_garbage() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server = AdminServer(WaypointMetrics(), ready=lambda: True)
        _, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: a\r\n\r\n")
            good = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00\x01garbage\r\n\r\n")
            bad = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return good, bad
        finally:
            await server.close()

    good, bad = asyncio.run(scenario())
    assert good.startswith(b"HTTP/1.1 200")
    assert good.endswith(b"ready\n")
    assert bad.startswith(b"HTTP/1.1 400")
