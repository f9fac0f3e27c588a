"""Splice one HBONE stream and one TCP connection, both ways, with half-close and reset."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from typing import cast

from weft.hbone.errors import HboneError
from weft.hbone.events import CONNECT_ERROR
from weft.hbone.native_session import NativeStream
from weft.hbone.stream import HboneStream

# Large reads amortise the per-call cost of Python, h2 and TLS; measured in bench/hbone_loopback.py.
READ_SIZE = 256 * 1024

_LINGER_RESET = struct.pack("ii", 1, 0)
# Received bytes are acknowledged to h2 in batches of up to this much: one call per 1 KiB message
# was a few percent of a relay's CPU. Bounded below so that idle streams holding unacknowledged
# bytes can never use up the connection window (see _Splice.__init__).
ACK_BATCH = 64 * 1024


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

    The TCP transport is taken over from `reader`/`writer` (what they buffered is sent first)
    and driven by callbacks: a message goes from one side to the other in the callback that
    received it, without waking a task, which is most of a relay's cost per small message.
    Any other reader/writer pair (e.g. the waypoint's channels) is copied by two tasks that
    read up to `read_size` at a time.
    """
    if isinstance(stream, NativeStream):
        return await _relay_native(stream, reader, writer)
    if not isinstance(reader, asyncio.StreamReader) or not hasattr(writer, "transport"):
        return await _relay_with_tasks(stream, reader, writer, read_size)
    transport = cast(asyncio.Transport, writer.transport)
    splice = _Splice(stream, transport, writer)
    splice.start(reader)
    try:
        await asyncio.shield(splice.done)
    except asyncio.CancelledError:
        splice.abort_both()
        raise
    return RelayResult(stream.bytes_sent, stream.bytes_received, splice.reset)


async def _relay_native(
    stream: NativeStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> RelayResult:
    """relay() on the native data path: weft._native splices the TCP socket itself.

    The socket's descriptor is duplicated and handed to C with what the StreamReader had
    already read; the asyncio transport is then aborted (that closes only its own descriptor),
    so from here on no Python runs per message. C reports the end (and the byte counts).
    """
    transport = cast(asyncio.Transport, getattr(writer, "transport", None))
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not isinstance(reader, asyncio.StreamReader):
        stream.abort(CONNECT_ERROR)
        raise HboneError("a native HBONE stream can only be relayed to a TCP socket")
    transport.pause_reading()
    # StreamReader internals, as _Splice.start() reads them: there is no public non-blocking read.
    buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
    reader._buffer.clear()  # type: ignore[attr-defined]
    eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
    failed = reader.exception() is not None or transport.is_closing()
    fd = -1 if failed else os.dup(sock.fileno())
    transport.abort()
    if failed:
        stream.abort(CONNECT_ERROR)
        return RelayResult(0, 0, reset=True)
    try:
        stream.attach_tcp(fd, buffered, eof)
    except HboneError:
        return RelayResult(0, 0, reset=True)
    return await _native_relayed(stream)


async def relay_socket(stream: NativeStream, sock: socket.socket) -> RelayResult:
    """relay() of a native stream and a bare connected TCP socket (owned from now on): no asyncio
    transport or streams are made for it, C takes the descriptor as it is."""
    try:
        stream.attach_tcp(sock.detach(), b"", False)
    except HboneError:
        return RelayResult(0, 0, reset=True)
    return await _native_relayed(stream)


def abort_socket(sock: socket.socket) -> None:
    """abort_tcp() for a bare socket: close it with RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


async def _relay_with_tasks(
    stream: HboneStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    read_size: int,
) -> RelayResult:
    splice = _TaskSplice(stream, reader, writer, read_size)
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
    _abort_transport(cast(asyncio.Transport, writer.transport))


def _abort_transport(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class _Splice(asyncio.Protocol):
    """The TCP side's protocol and the stream's sink: each side's events drive the other side.

    Back-pressure both ways: bytes from TCP that the tunnel cannot take yet (flow-control
    window, TLS buffer) stay here with TCP reading paused until on_writable(); bytes from the
    tunnel are acknowledged to the peer only while the TCP transport is not paused for writing.
    """

    def __init__(
        self, stream: HboneStream, transport: asyncio.Transport, writer: asyncio.StreamWriter
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reset = False
        # The StreamReaderProtocol we replace: told when the connection goes, so that its
        # reader and writer (and whoever awaits writer.wait_closed()) see the end too.
        self._previous = transport.get_protocol()
        self._writer = writer
        self._pending: memoryview | None = None  # from TCP, not yet taken by the tunnel
        self._reading_paused = False
        self._tcp_eof = False  # the TCP side sent FIN
        self._fin_sent = False  # ... and it went on as END_STREAM
        self._remote_ended = False  # END_STREAM went on as a FIN
        self._write_paused = bool(getattr(self._previous, "_paused", False))
        self._unacknowledged = 0  # flow-controlled bytes passed on to TCP, not yet acknowledged
        settings = stream.session.core.settings
        self._ack_batch = min(
            ACK_BATCH,
            settings.stream_window // 4,
            settings.connection_window // (2 * max(settings.max_concurrent_streams, 1)),
        )
        self._lost = False

    def start(self, reader: asyncio.StreamReader) -> None:
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small messages must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # What the StreamReader already holds was read from the socket before us. These are
        # StreamReader internals (stable since 3.4); there is no public non-blocking read.
        buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
        reader._buffer.clear()  # type: ignore[attr-defined]
        eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
        failed = reader.exception()
        if self.transport.is_closing() and failed is None:
            # Its connection_lost() may have gone to the StreamReader already: we would never
            # hear of the end, so the relay ends here.
            failed = ConnectionResetError("the TCP connection closed before the relay began")
        self.transport.set_protocol(self)
        if getattr(reader, "_paused", False):  # the StreamReader's buffer was full
            self.transport.resume_reading()
        self.stream.attach(self)
        if failed is not None:
            self.abort_both()
            self._finish(failed)
            return
        if buffered:
            self.data_received(buffered)
        if eof:
            self.eof_received()

    # --- the TCP side (asyncio.Protocol) ----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.reset:
            return
        if self._pending is not None:  # only between pause_reading() and its effect
            self._pending = memoryview(self._pending.tobytes() + data)
            self._push()
            return
        # The common case, a message the tunnel takes whole, without _push()'s bookkeeping.
        try:
            sent = self.stream.send_some(data)
        except (HboneError, OSError):
            self.abort_both()
            return
        if sent < len(data):
            self._pending = memoryview(data)[sent:]
            self._push()

    def eof_received(self) -> bool:
        self._tcp_eof = True
        if self._pending is None:
            self._send_fin()
        return True  # keep the transport: the other direction may still be open

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacknowledged >= self._ack_batch:
            self._acknowledge()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._acknowledge()
        if not self.reset and not (self._fin_sent and self._remote_ended):
            # The TCP side went away with the tunnel still open: the peer must see a reset.
            self.reset = True
            self.stream.abort(CONNECT_ERROR)
        self._finish(exc)

    # --- the tunnel side (weft.hbone.stream.StreamSink) -------------------------------------

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if self.reset or self._lost:
            self.stream.acknowledge(flow_controlled_length)
            return
        try:
            self.transport.write(data)
        except (OSError, RuntimeError):  # raised here, it would close the whole TLS session
            self.stream.acknowledge(flow_controlled_length)
            self.abort_both()
            return
        self._unacknowledged += flow_controlled_length
        # While TCP is paused nothing is acknowledged: the peer's window then throttles it.
        if self._unacknowledged >= self._ack_batch and not self._write_paused:
            self._acknowledge()

    def on_remote_end(self) -> None:
        if self.reset or self._lost or self._remote_ended:
            return
        self._remote_ended = True
        self._acknowledge()  # the stream is done receiving: its bytes' connection window
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except (OSError, RuntimeError):  # raised here, it would close the whole TLS session
            self.abort_both()
            return
        self._close_if_done()

    def on_reset(self, error_code: int) -> None:
        self._acknowledge()  # h2 returns the connection's share of a closed stream's window
        if self.reset:
            return
        self.reset = True
        self._pending = None
        if not self._lost:
            _abort_transport(self.transport)

    def on_writable(self) -> None:
        if self._pending is not None and not self.reset:
            self._push()

    # --- internals ---------------------------------------------------------------------------

    def _push(self) -> None:
        pending = self._pending
        try:
            while pending is not None:
                sent = self.stream.send_some(pending)
                if sent == len(pending):
                    pending = None
                elif sent == 0:
                    break
                else:
                    pending = pending[sent:]
        except (HboneError, OSError):
            self.abort_both()
            return
        self._pending = pending
        if pending is not None:
            if not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        if self._tcp_eof:
            self._send_fin()
        elif self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _acknowledge(self) -> None:
        if self._unacknowledged:
            acknowledged, self._unacknowledged = self._unacknowledged, 0
            self.stream.acknowledge(acknowledged)

    def _send_fin(self) -> None:
        if self._fin_sent or self.reset:
            return
        self._fin_sent = True
        self.stream.close_write()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._fin_sent and self._remote_ended and not self.reset:
            self.transport.close()  # after what is buffered; connection_lost() finishes

    def abort_both(self) -> None:
        if self.reset:
            return
        self.reset = True
        self._pending = None
        self.stream.abort(CONNECT_ERROR)
        if not self._lost:
            _abort_transport(self.transport)

    def _finish(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        self.done.set_result(None)
        # Let the replaced StreamReaderProtocol see the end (its reader, writer.wait_closed()).
        with contextlib.suppress(Exception):
            self._previous.connection_lost(exc)


class _TaskSplice:
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


async def _native_relayed(stream: NativeStream) -> RelayResult:
    """Wait for C to finish splicing `stream`; a cancelled wait resets it."""
    try:
        to_tunnel, from_tunnel, reset = await asyncio.shield(stream.wait_relayed())
    except asyncio.CancelledError:
        stream.abort(CONNECT_ERROR)
        raise
    return RelayResult(to_tunnel, from_tunnel, reset)
