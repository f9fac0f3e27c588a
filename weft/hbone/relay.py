"""Splice one HBONE stream and one TCP connection, both ways, with half-close and reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

from weft.hbone.errors import HboneError
from weft.hbone.events import CONNECT_ERROR
from weft.hbone.stream import HboneStream

# Large reads amortise the per-call cost of Python, h2 and TLS; measured in bench/hbone_loopback.py.
READ_SIZE = 256 * 1024

_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class RelayResult:
    """What one spliced connection carried, for access logs and the istio_tcp_* metrics."""

    bytes_to_tunnel: int
    bytes_from_tunnel: int
    reset: bool


async def relay(
    stream: HboneStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    read_size: int = READ_SIZE,
) -> RelayResult:
    """Copy bytes both ways until both directions are closed; a reset on one side resets the other.

    A FIN from the TCP side becomes END_STREAM and END_STREAM becomes a FIN (write_eof), so
    half-closed protocols keep working; a TCP RST becomes RST_STREAM(CONNECT_ERROR) and
    RST_STREAM becomes a TCP RST.
    """
    splice = _Splice(stream, reader, writer, read_size)
    to_tunnel = asyncio.create_task(splice.tcp_to_stream())
    try:
        await splice.stream_to_tcp()
        await to_tunnel
    except asyncio.CancelledError:
        splice.abort_both()
        to_tunnel.cancel()
        raise
    finally:
        if not splice.reset:
            writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()
    return RelayResult(stream.bytes_sent, stream.bytes_received, splice.reset)


def abort_tcp(writer: asyncio.StreamWriter) -> None:
    """Close a TCP connection with RST rather than FIN, so the application sees the reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Splice:
    def __init__(
        self,
        stream: HboneStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        read_size: int,
    ) -> None:
        self.stream = stream
        self.reader = reader
        self.writer = writer
        self.read_size = read_size
        self.reset = False

    async def tcp_to_stream(self) -> None:
        try:
            while data := await self.reader.read(self.read_size):
                await self.stream.write(data)
        except HboneError:
            self.abort_both()
            return
        except OSError:
            self.abort_both()
            return
        if not self.reset:
            self.stream.close_write()

    async def stream_to_tcp(self) -> None:
        try:
            while data := await self.stream.read():
                self.writer.write(data)
                await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except HboneError:
            self.abort_both()
        except OSError:
            self.abort_both()

    def abort_both(self) -> None:
        if self.reset:
            return
        self.reset = True
        self.stream.abort(CONNECT_ERROR)
        abort_tcp(self.writer)
