"""The agent's HTTP endpoints: admin on 15000 (/config_dump, /certs, /logging) and 15020
(/metrics, /healthz/ready). A deliberately small HTTP/1.1 responder: GET and POST, no bodies in,
one response per connection, bounded request size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(status, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n")


Handler = Callable[[Mapping[str, list[str]]], Response]


def parse_request_line(head: bytes) -> tuple[str, str, dict[str, list[str]]]:
    """(method, path, query) from a request head; ValueError if it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x request line: {line[:80]!r}")
    url = urlsplit(parts[1])
    return parts[0], url.path, parse_qs(url.query)


def render(response: Response) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + response.body


class HttpEndpoint:
    """Serve `routes` (path -> handler) on one address."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, head: bytes) -> Response:
        try:
            method, path, query = parse_request_line(head)
        except ValueError as err:
            return Response.json({"error": str(err)}, 400)
        handler = self.routes.get(path)
        if handler is None or method not in ("GET", "POST"):
            return Response.json(
                {"error": f"no {method} {path}", "paths": sorted(self.routes)}, 404
            )
        try:
            return handler(query)
        except Exception as err:  # a broken handler answers 503, it never kills the endpoint
            log.exception("admin handler %s failed", path)
            return Response.json({"error": repr(err)}, 503)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            response = self.respond(head[:MAX_REQUEST_HEAD])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            response = Response.json({"error": "incomplete or oversized request"}, 400)
        with contextlib.suppress(OSError):
            writer.write(render(response))
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def set_log_level(query: Mapping[str, list[str]]) -> Response:
    """/logging?level=debug (or ?logger=weft.access&level=warning)."""
    level = (query.get("level") or [""])[0].upper()
    name = (query.get("logger") or [""])[0]
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        return Response.json({"error": "level must be debug, info, warning or error"}, 400)
    logging.getLogger(name or None).setLevel(level)
    return Response.json({"logger": name or "root", "level": level.lower()})
