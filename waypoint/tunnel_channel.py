"""An HBONE stream as the general path's reader and writer: no socket pair and no relay between.

(The fast path drives its protocols over a stream through stream_transport.StreamTransport,
which keeps the same TCP-like semantics as a transport.)

`TunnelChannel` is attached to a weft.hbone stream as its sink, so tunnel bytes reach the
waiting reader from the callback that decrypted them, and the proxy's writes go straight into
the stream's DATA frames. It behaves as the socket-pair-and-relay join it replaces did, as TCP
does: write_eof() is END_STREAM once what is queued has gone; close() is END_STREAM too, but
bytes that arrive after it, or that were left unread at it, reset the stream (a TCP RST); a
peer's END_STREAM reads as b"", and its RST_STREAM raises ConnectionResetError from drain() at
once and from read() after what arrived before it. Back-pressure both ways: received bytes are
acknowledged (their window given back to the peer) only once the proxy has read them, and
drain() waits while the peer's window or the TLS connection cannot take what was written.
"""

from __future__ import annotations

import asyncio
from collections import deque

from waypoint.channel import ReadWaiter
from waypoint.stream_side import StreamSide
from weft.hbone import HboneError, HboneStream
from weft.hbone.events import CONNECT_ERROR


class TunnelChannel(StreamSide, ReadWaiter):
    """One tunnelled connection as the StreamReader/StreamWriter calls the proxy uses (`read`,
    `at_eof`, `write`, `drain`, `close`, `is_closing`, `write_eof`), and the stream's sink."""

    def __init__(self, stream: HboneStream) -> None:
        super().__init__(stream)
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[tuple[bytes, int]] = deque()  # (data, its flow-controlled length)
        self._eof = False  # the peer sent END_STREAM
        self._error: ConnectionResetError | None = None  # the stream was reset
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._closed = False  # close(): anything received from now on resets the stream
        stream.attach(self)

    # --- the stream's sink (weft.hbone.stream.StreamSink) ----------------------------------

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if self._closed:  # the proxy closed: as TCP answers bytes to a closed socket, reset
            self._stream.acknowledge(flow_controlled_length)
            self.abort()
            return
        self._chunks.append((data, flow_controlled_length))
        self._wake_reader()

    def on_remote_end(self) -> None:
        self._eof = True
        self._acknowledge()  # nothing more comes: give back what the batch still holds
        self._wake_reader()

    def on_reset(self, error_code: int) -> None:
        if self._error is not None:
            return
        self._error = ConnectionResetError(
            f"the HBONE stream was reset (HTTP/2 error code {error_code:#x})"
        )
        # What came before the reset is still read (as from a TCP socket, then the error), but
        # the stream is gone: its window goes back now.
        self._unacknowledged += sum(length for _, length in self._chunks)
        self._chunks = deque((data, 0) for data, _ in self._chunks)
        self._acknowledge()
        self._drop_pending()
        self._wake_reader()
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_exception(self._error)

    def on_writable(self) -> None:
        if self._pending and not self._send_pending():
            return
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    # --- reading -----------------------------------------------------------------------------

    async def read(self, n: int = -1, timeout_s: float | None = None) -> bytes:
        """The next chunk received (any size; `n` is accepted for StreamReader's signature), or
        b"" once the peer half-closed. A reset raises ConnectionResetError once the bytes that
        came before it have been read; nothing received within `timeout_s` raises TimeoutError."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait_readable(timeout_s)
        data, flow_controlled_length = self._chunks.popleft()
        self._unacknowledged += flow_controlled_length
        if self._unacknowledged >= self._ack_batch:
            self._acknowledge()
        return data

    def at_eof(self) -> bool:
        return (self._eof or self._error is not None) and not self._chunks

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send `data` now, as far as the windows allow; the rest goes as they open."""
        if self._error is not None or self._end_requested:
            return  # as a closed socket's transport drops writes; drain() reports a reset
        if type(data) is not bytes:
            data = bytes(data)  # the stream keeps views of what it queued: it must not change
        if self._pending:
            self._queue(memoryview(data))
            return
        try:
            sent = self._stream.send_some(data)
        except HboneError:
            self.abort()
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:])

    async def drain(self) -> None:
        """Wait while written bytes wait for window; ConnectionResetError once reset."""
        while True:
            if self._error is not None:
                raise self._error
            if not self._pending:
                return
            if self._drainer is None:
                self._drainer = self._loop.create_future()
            await asyncio.shield(self._drainer)

    def close(self) -> None:
        """END_STREAM after what is written, as a socket's close() sends FIN; unread bytes, or
        bytes arriving later, reset the stream instead (as TCP answers them with RST)."""
        if self._closed or self._error is not None:
            return
        self._closed = True
        if self._chunks:
            self.abort()
            return
        self._acknowledge()
        self.write_eof()

    def abort(self) -> None:
        """Reset the stream (RST_STREAM), as a TCP RST would."""
        if self._error is None:
            self._stream.abort(CONNECT_ERROR)  # reports on_reset() back here

    def is_closing(self) -> bool:
        return self._closed or self._error is not None

    def _gone(self) -> bool:
        return self._error is not None
