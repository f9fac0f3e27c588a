"""Byte channels the proxy reads and writes: a lean asyncio Protocol for sockets it accepts or
dials, and the reader/writer interfaces it shares with asyncio's streams (HBONE tunnels).

`SocketChannel` is one object that is both the reader and the writer of a socket. Compared with
StreamReader/StreamWriter it keeps received chunks as they came (no copy into a bytearray and
back out), hands a chunk straight to a waiting reader, and makes `drain()` free unless the
transport asked to pause: the waypoint's HTTP/1.1 hop does four of these operations per request.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Protocol

# Above this many bytes received and not read, stop reading the socket (the peer then waits on
# TCP's window): a slow consumer never makes the channel buffer a whole body.
READ_HIGH_WATER = 256 * 1024


class Reader(Protocol):
    """What the proxy reads from: asyncio.StreamReader or a SocketChannel."""

    async def read(self, n: int = -1) -> bytes: ...

    def at_eof(self) -> bool: ...


class Writer(Protocol):
    """What the proxy writes to: asyncio.StreamWriter or a SocketChannel."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class ReadWaiter:
    """The one waiting read of a channel, woken by its data and failed by its timer."""

    _loop: asyncio.AbstractEventLoop
    _reader: asyncio.Future[None] | None

    async def _wait_readable(self, timeout_s: float | None) -> None:
        """Until _wake_reader() (data, EOF or an error came); TimeoutError after timeout_s."""
        waiter = self._reader = self._loop.create_future()
        # One timer handle, armed only when there is nothing to read yet: cheaper than
        # asyncio.timeout() around every read.
        timer = None if timeout_s is None else self._loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            self._reader = None
            if timer is not None:
                timer.cancel()

    def _wake_reader(self) -> None:
        waiter = self._reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SocketChannel(asyncio.Protocol, ReadWaiter):
    """A socket's two directions as one object with the StreamReader/StreamWriter calls the
    proxy uses (`read`, `at_eof`, `write`, `drain`, `close`, `is_closing`, `write_eof`)."""

    def __init__(self, on_connect: Callable[[SocketChannel], None] | None = None) -> None:
        self._on_connect = on_connect  # an accepted connection: start serving it
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's too)
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._read_paused:
            assert self._transport is not None
            self._read_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep our side open: the proxy may still be writing a response

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake_reader()
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            drainer.set_exception(ConnectionResetError("connection lost"))
        self._drainer = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            drainer.set_result(None)
        self._drainer = None

    # --- reading -------------------------------------------------------------------------------

    async def read(self, n: int = -1, timeout_s: float | None = None) -> bytes:
        """The next chunk received (any size; `n` is accepted for StreamReader's signature), or
        b"" once the peer closed its side. A connection reset raises ConnectionResetError;
        nothing received within `timeout_s` raises TimeoutError."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise ConnectionResetError(str(self._error))
                return b""
            await self._wait_readable(timeout_s)
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._read_paused and self._buffered <= READ_HIGH_WATER // 2:
            assert self._transport is not None
            self._read_paused = False
            self._transport.resume_reading()
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._transport is None or self._transport.is_closing():
            if self._eof:
                raise ConnectionResetError("connection lost")
            return
        if self._write_paused:
            if self._drainer is None:
                self._drainer = self._loop.create_future()
            await asyncio.shield(self._drainer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def can_write_eof(self) -> bool:
        return self._transport is not None and self._transport.can_write_eof()

    def write_eof(self) -> None:
        assert self._transport is not None
        self._transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def open_channel(host: str, port: int) -> SocketChannel:
    """Dial host:port; OSError if it cannot be reached."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_connection(SocketChannel, host, port)
    return channel
