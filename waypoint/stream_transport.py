"""An HBONE stream as an asyncio transport, so the fast path's protocols run over tunnels.

`StreamTransport` is attached to a weft.hbone stream as its sink and drives an asyncio.Protocol
(the fast path's FastFront on a tunnel in, FastUpstream on a tunnel out) from the callbacks that
decrypted the bytes: no task and no reader wake-up per message. It keeps the semantics
TunnelChannel gives the general path, as TCP does: write_eof() is END_STREAM once what is queued
has gone; close() is END_STREAM too, but bytes held unread at it, or arriving after it, reset
the stream (a TCP RST); a peer's END_STREAM is eof_received(); a reset is connection_lost() with
ConnectionResetError. Back-pressure both ways: pause_reading() stops delivering (and so stops
giving window back to the peer), and pause_writing() is called while the peer's window or the
TLS connection holds more than WRITE_HIGH_WATER bytes of ours.
"""

from __future__ import annotations

import asyncio
from collections import deque

from waypoint.stream_side import StreamSide
from weft.hbone import HboneError, HboneStream
from weft.hbone.events import CONNECT_ERROR

WRITE_HIGH_WATER = 64 * 1024  # queued, not yet taken by the stream: the protocol pauses
WRITE_LOW_WATER = 16 * 1024


class StreamTransport(StreamSide, asyncio.Transport):
    """The asyncio.Transport calls the fast path uses, over one HBONE stream."""

    def __init__(self, stream: HboneStream, protocol: asyncio.Protocol) -> None:
        super().__init__(stream)
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._held: deque[tuple[bytes, int]] = deque()  # received while reading is paused
        self._read_paused = False
        self._delivering = False  # _deliver_held() is scheduled
        self._write_paused = False  # the protocol was told to pause writing
        self._remote_ended = False
        self._eof_delivered = False
        self._closing = False  # close(): anything received from now on resets the stream
        self._lost = False  # connection_lost() is scheduled or delivered
        self.lost: asyncio.Future[None] = self._loop.create_future()

    def start(self) -> None:
        """connection_made(), then what the stream received so far and from now on."""
        self._protocol.connection_made(self)
        self._stream.attach(self)

    # --- the stream's sink (weft.hbone.stream.StreamSink) ----------------------------------

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if self._closing:  # as TCP answers bytes to a closed socket: reset
            self._stream.acknowledge(flow_controlled_length)
            self.abort()
            return
        if self._read_paused or self._held:
            self._held.append((data, flow_controlled_length))
            return
        self._protocol.data_received(data)
        self._unacknowledged += flow_controlled_length
        if self._unacknowledged >= self._ack_batch:
            self._acknowledge()

    def on_remote_end(self) -> None:
        self._remote_ended = True
        if not self._held and not self._read_paused:
            self._deliver_eof()

    def on_reset(self, error_code: int) -> None:
        self._unacknowledged += sum(length for _, length in self._held)
        self._held.clear()
        self._acknowledge()
        self._drop_pending()
        self._connection_lost(
            ConnectionResetError(f"the HBONE stream was reset (HTTP/2 error code {error_code:#x})")
        )

    def on_writable(self) -> None:
        if self._pending and not self._send_pending():
            return
        if self._write_paused and self._pending_size <= WRITE_LOW_WATER and not self._lost:
            self._write_paused = False
            self._protocol.resume_writing()

    # --- reading -------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        if not self._read_paused:
            return
        self._read_paused = False
        if (self._held or self._remote_ended) and not self._delivering:
            # Later, as asyncio's transports do: never data_received() from inside the call
            # (the protocol pausing us again meanwhile would find its own state half-updated).
            self._delivering = True
            self._loop.call_soon(self._deliver_held)

    def _deliver_held(self) -> None:
        self._delivering = False
        held = self._held
        while held and not self._read_paused and not self._lost:
            data, length = held.popleft()
            self._protocol.data_received(data)
            self._unacknowledged += length
        self._acknowledge()
        if self._remote_ended and not held and not self._read_paused:
            self._deliver_eof()

    def is_reading(self) -> bool:
        return not self._read_paused

    def _deliver_eof(self) -> None:
        if self._eof_delivered or self._lost:
            return
        self._eof_delivered = True
        self._acknowledge()  # nothing more comes: give back what the batch still holds
        if not self._protocol.eof_received():
            self.close()

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` now, as far as the windows allow; the rest goes as they open."""
        if self._end_requested or self._lost:
            return  # as a closed socket's transport drops writes
        if type(data) is not bytes:
            data = bytes(data)  # the stream keeps views of what it queued: it must not change
        if not self._pending:
            try:
                sent = self._stream.send_some(data)
            except HboneError:
                self.abort()
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._queue(memoryview(data))
        if self._pending_size > WRITE_HIGH_WATER and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def _gone(self) -> bool:
        return self._lost

    def _ended(self) -> None:
        if self._closing:  # close() waited for the queued bytes: now it is complete
            self._connection_lost(None)

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """END_STREAM after what is written, as a socket's close() sends FIN; bytes held unread,
        or arriving later, reset the stream instead (as TCP answers them with RST)."""
        if self._closing or self._lost:
            return
        self._closing = True
        if self._held:
            self.abort()
            return
        self._acknowledge()
        self.write_eof()
        if not self._pending:
            self._connection_lost(None)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def abort(self) -> None:
        """Reset the stream (RST_STREAM), as a TCP RST would."""
        self._connection_lost(None)  # our own abort: no error for the protocol (if not yet)
        self._stream.abort(CONNECT_ERROR)  # on_reset() comes back here and cleans up

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            if not self.lost.done():
                self.lost.set_result(None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a StreamTransport keeps the protocol it was made with")
