"""A small keep-alive HTTP/1.1 server: an asyncio shell that moves bytes through demo.http1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from demo.http1 import MessageParser, ParseError, Request, encode_response
from demo.serving import log

READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What a handler answers; the server adds framing and the Connection header."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Reply(status, body, (("content-type", "application/json"), *headers))


def not_found(path: str) -> Reply:
    return json_reply(404, {"error": "not found", "path": path})


def method_not_allowed(method: str, allowed: tuple[str, ...]) -> Reply:
    return json_reply(
        405,
        {"error": f"method {method} not allowed", "allowed": list(allowed)},
        (("allow", ", ".join(allowed)),),
    )


def parse_id(text: str) -> int | None:
    """A path segment as a product or review id, or None when it is not a small decimal."""
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    return None


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass
class _Connection:
    writer: asyncio.StreamWriter
    busy: bool = False


@dataclass
class HttpServer:
    """Serves `handler` on keep-alive connections and logs one line per request."""

    service: str
    handler: Handler
    idle_timeout: float = 120.0
    _server: asyncio.Server | None = None
    # Connection tasks, so shutdown can tell idle keep-alive connections from busy ones.
    _connections: dict[asyncio.Task[None], _Connection] = field(default_factory=dict)
    _closing: bool = False

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(
            self._handle_connection, host, port, reuse_address=True
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace` seconds, close the rest."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, connection in list(self._connections.items()):
            if not connection.busy:
                task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        connection = _Connection(writer)
        if task is not None:
            self._connections[task] = connection
        try:
            await self._serve(reader, writer, connection)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        peer = _format_peer(writer.get_extra_info("peername"))
        parser = MessageParser("request")
        while True:
            try:
                request = parser.next_message()
            except ParseError as error:
                body = json.dumps({"error": "bad request", "detail": error.reason}).encode()
                headers = (("content-type", "application/json"),)
                writer.write(encode_response(error.status, headers, body, keep_alive=False))
                log(
                    self.service, f'{peer} "-" {error.status} {len(body)} malformed: {error.reason}'
                )
                await writer.drain()
                return
            if request is None:
                connection.busy = parser.has_partial_message
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    # Idle keep-alive or a stalled half-sent request: free the connection.
                    return
                connection.busy = True
                if data:
                    parser.feed(data)
                    continue
                parser.feed_eof()
                if not parser.has_partial_message:
                    return
                continue
            assert isinstance(request, Request)
            connection.busy = True
            started = time.perf_counter()
            try:
                reply = await self.handler(request)
            except Exception as error:  # a handler bug must not take the whole server down
                reply = json_reply(500, {"error": "internal error", "detail": repr(error)})
            keep_alive = request.keep_alive and not self._closing
            writer.write(
                encode_response(reply.status, reply.headers, reply.body, keep_alive=keep_alive)
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
            log(
                self.service,
                f'{peer} "{request.method} {request.target}" {reply.status} {len(reply.body)} '
                f"{elapsed_ms:.2f}ms",
            )
            await writer.drain()
            if not keep_alive:
                return


def _format_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return "-"
