"""The waypoint's metrics and health endpoint (port 15020 in a deployment, as in Istio).

GET /metrics serves the waypoint's own Prometheus registry; GET /healthz/ready answers 200 once
the proxy listens (and, fed by the controller, has a configuration) and 503 before;
GET /config_dump shows the configuration in force when the controller feeds it. Anything else
is 404. One request per connection is plenty for
a scraper, so connections close after each answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from waypoint.http1 import Http1Error, Request, RequestParser, serialize_response_head
from waypoint.telemetry import WaypointMetrics

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT_S = 10.0


Dump = Callable[[], dict[str, object]]
# With worker processes: the whole waypoint's metrics, gathered from them when scraped.
Gather = Callable[[], Awaitable[WaypointMetrics]]


def answer(
    request: Request, metrics: WaypointMetrics, ready: bool, dump: Dump | None = None
) -> bytes:
    """The complete response to one admin request."""
    path = request.target.partition("?")[0]
    if request.method not in ("GET", "HEAD"):
        status, content_type, body = 405, "text/plain", b"only GET and HEAD\n"
    elif path == "/config_dump" and dump is not None:
        status, content_type = 200, "application/json"
        body = json.dumps(dump(), indent=2, sort_keys=True).encode() + b"\n"
    elif path == "/metrics":
        status, content_type, body = 200, PROMETHEUS_TEXT, metrics.exposition()
    elif path == "/healthz/ready":
        status, content_type = (200, "text/plain") if ready else (503, "text/plain")
        body = b"ready\n" if ready else b"not ready: the proxy is not listening yet\n"
    else:
        status, content_type, body = 404, "text/plain", b"try /metrics or /healthz/ready\n"
    phrase = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    head = serialize_response_head(
        status,
        phrase[status],
        [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ],
    )
    return head if request.method == "HEAD" else head + body


class AdminServer:
    """Serves `answer()` on a TCP listener."""

    def __init__(
        self,
        metrics: WaypointMetrics,
        ready: Callable[[], bool],
        dump: Dump | None = None,
        gather: Gather | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.dump = dump
        self.gather = gather
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 15020) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser(max_header_bytes=16 * 1024)
        try:
            while True:
                data = await asyncio.wait_for(reader.read(16 * 1024), READ_TIMEOUT_S)
                events = parser.feed(data) if data else parser.feed_eof()
                request = next((e for e in events if isinstance(e, Request)), None)
                if request is not None:
                    metrics = self.metrics
                    if self.gather is not None and request.target.startswith("/metrics"):
                        metrics = await self.gather()
                    writer.write(answer(request, metrics, self.ready(), self.dump))
                    await writer.drain()
                    return
                if not data:
                    return
        except Http1Error as error:
            writer.write(
                serialize_response_head(
                    error.status, "Bad Request", [("connection", "close"), ("content-length", "0")]
                )
            )
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
