"""A keep-alive HTTP/1.1 client with a small connection pool, used by the frontend and loadgen."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

from demo.addresses import Address
from demo.http1 import MessageParser, ParseError, Response, encode_request

READ_SIZE = 64 * 1024


def connection_error_reason(error: OSError) -> str:
    """'connection refused' rather than the event loop's own wording of the same errno."""
    if error.errno:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__


class HttpRequestError(Exception):
    """No HTTP response came back; the message names the address and what went wrong."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: MessageParser = field(default_factory=lambda: MessageParser("response"))

    def close(self) -> None:
        self.writer.close()


@dataclass
class HttpClient:
    """Sends requests to one address, reusing idle connections; safe for concurrent callers.

    With keep_alive=False every request gets its own connection, so a mesh that balances per
    connection (L4) spreads requests as it would spread independent clients.
    """

    address: Address
    max_idle: int = 64
    keep_alive: bool = True
    _idle: list[_Connection] = field(default_factory=list)

    async def request(
        self,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        timeout: float = 2.0,
    ) -> Response:
        if not self.keep_alive:
            headers = (*headers, ("connection", "close"))
        payload = encode_request(method, target, str(self.address), headers, body)
        try:
            async with asyncio.timeout(timeout):
                return await self._send(payload)
        except TimeoutError:
            raise HttpRequestError(f"{self.address}: no response within {timeout:g}s") from None
        except ParseError as error:
            raise HttpRequestError(f"{self.address}: malformed response: {error.reason}") from None
        except OSError as error:
            raise HttpRequestError(f"{self.address}: {connection_error_reason(error)}") from None

    async def _send(self, payload: bytes) -> Response:
        while self._idle:
            connection = self._idle.pop()
            if connection.reader.at_eof() or connection.writer.is_closing():
                connection.close()
                continue
            try:
                return await self._exchange(connection, payload)
            except (ConnectionError, _ClosedBeforeResponseError, _TransportClosedError):
                # The server closed an idle keep-alive connection as we reused it: the request
                # never reached it, so retrying once on a fresh connection is safe.
                connection.close()
                break
        reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
        return await self._exchange(_Connection(reader, writer), payload)

    async def _exchange(self, connection: _Connection, payload: bytes) -> Response:
        try:
            try:
                connection.writer.write(payload)
            except RuntimeError as error:
                # uvloop refuses a write on a transport it has already closed (the peer reset
                # it while idle) with RuntimeError, where the stdlib loop drops the write.
                raise _TransportClosedError(str(error)) from error
            await connection.writer.drain()
            received_any = False
            while True:
                response = connection.parser.next_message()
                if response is not None:
                    break
                data = await connection.reader.read(READ_SIZE)
                if data:
                    received_any = True
                    connection.parser.feed(data)
                elif not received_any:
                    raise _ClosedBeforeResponseError
                else:
                    connection.parser.feed_eof()
        except BaseException:
            connection.close()
            raise
        assert isinstance(response, Response)
        if self.keep_alive and response.keep_alive and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()


class _ClosedBeforeResponseError(ConnectionError):
    """The server closed the connection without sending a single response byte."""

    def __init__(self) -> None:
        super().__init__("connection closed before any response")


class _TransportClosedError(Exception):
    """The connection's transport was already closed when the request was written."""
