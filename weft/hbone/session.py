"""The asyncio driver of one HBONE TLS connection: moves bytes between a transport and a core."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import cast

from weft.hbone.connection import ClientConnection, HboneConnection, ServerConnection
from weft.hbone.errors import StreamClosedError, TunnelRefusedError, TunnelUnavailableError
from weft.hbone.events import (
    CANCEL,
    CONNECT_ERROR,
    ConnectionClosed,
    DataReceived,
    Event,
    StreamEnded,
    StreamReset,
    TunnelEstablished,
    TunnelRefused,
    TunnelRejected,
    TunnelRequested,
    WindowOpened,
)
from weft.hbone.stream import HboneStream

log = logging.getLogger(__name__)

# The TLS transport pauses us above this many unsent bytes: enough to keep a 256 KiB read
# in flight while the previous one is being encrypted, small enough to bound memory.
WRITE_BUFFER_HIGH = 1024 * 1024
# Below this many queued bytes, frames are joined into one TLS record before writing.
COALESCE_LIMIT = 64 * 1024
# Decrypted bytes are read into one buffer of this size per connection (see get_buffer()).
RECEIVE_BUFFER = 256 * 1024


def refuse_unserved(
    event: ConnectionClosed,
    responses: dict[int, asyncio.Future[int]],
    streams: dict[int, HboneStream],
) -> None:
    """A client's part of the peer's GOAWAY: streams the server never saw (above its last stream
    id) will not be served, so their pending responses fail and they are reset; the rest may
    finish. Shared by both data paths' sessions."""
    for stream_id, response in responses.items():
        if stream_id > event.last_stream_id and not response.done():
            response.set_exception(TunnelUnavailableError("the peer sent GOAWAY"))
    for stream_id, stream in list(streams.items()):
        if stream_id > event.last_stream_id:
            stream.on_reset(event.error_code or CANCEL)


class TunnelSession(asyncio.BufferedProtocol):
    """One TLS connection carrying many tunnels; the asyncio shell around an HboneConnection.

    A BufferedProtocol: the TLS transport decrypts into a buffer this session keeps. With a
    plain Protocol, uvloop's TLS layer asks OpenSSL for a new 256 KiB bytes object per read,
    which glibc maps and unmaps (mmap, mremap, munmap and a page fault) for every small message.
    """

    def __init__(
        self,
        core: HboneConnection,
        on_tunnel_requested: Callable[[TunnelSession, HboneStream, TunnelRequested], None]
        | None = None,
    ) -> None:
        self.core = core
        core.on_data = self._on_stream_data
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, HboneStream] = {}
        self._on_tunnel_requested = on_tunnel_requested
        self._responses: dict[int, asyncio.Future[int]] = {}
        self._write_waiters: list[asyncio.Future[None]] = []
        self._paused = False
        self._flush_scheduled = False
        self._lost = False
        self._transport_closed = False
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._buffer_view = memoryview(self._buffer)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass but has its interface.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer_view

    def buffer_updated(self, nbytes: int) -> None:
        # The core copies what it keeps: the buffer is reused by the next read.
        core = self.core
        events = core.receive_data(self._buffer_view[:nbytes])
        if events:
            self._dispatch(events)
        if core.has_output:  # SETTINGS/PING ACKs, 400s, RST_STREAMs, GOAWAY
            self._flush()

    def eof_received(self) -> bool:
        return False  # a TLS peer that stops sending is gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.core.close()
        for future in self._responses.values():
            if not future.done():
                future.set_exception(
                    TunnelUnavailableError("the HBONE connection closed before the peer answered")
                )
        for stream in list(self.streams.values()):
            stream.on_reset(CONNECT_ERROR)
        self.streams.clear()
        self._wake_transport_writers()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_transport_writers()
        # Streams relayed by callbacks (HboneStream.attach) wait for this, not for a future.
        for stream in list(self.streams.values()):
            stream.on_window_opened()

    # Used by HboneStream and the pool.

    @property
    def usable(self) -> bool:
        return not self._lost and not self.core.closed

    def has_room(self) -> bool:
        """One more tunnel fits under both ends' stream limits (no GOAWAY either way)."""
        assert isinstance(self.core, ClientConnection)
        return self.usable and self.core.can_open_tunnel

    @property
    def writable(self) -> bool:
        """The TLS transport takes more bytes now (it has not paused us)."""
        return not self._paused and not self._lost

    async def open_tunnel(
        self, authority: str, headers: Iterable[tuple[str, str]] = ()
    ) -> HboneStream:
        """Send a CONNECT and wait for the answer; TunnelRefusedError unless it is 200."""
        assert isinstance(self.core, ClientConnection)
        if not self.usable:
            raise StreamClosedError("this HBONE connection is closing; open a new one")
        stream_id = self.core.open_tunnel(authority, headers)
        stream = self._register(stream_id, authority)
        response = asyncio.get_running_loop().create_future()
        self._responses[stream_id] = response
        self._flush()
        try:
            status = await response
        except asyncio.CancelledError:
            stream.abort(CANCEL)
            self._flush()
            raise
        finally:
            self._responses.pop(stream_id, None)
        if status != 200:
            stream.abort(CANCEL)
            self._flush()
            raise TunnelRefusedError(authority, status)
        return stream

    def accept(self, stream: HboneStream) -> None:
        assert isinstance(self.core, ServerConnection)
        self.core.accept(stream.stream_id)
        self._flush()

    def reject(self, stream: HboneStream, status: int) -> None:
        assert isinstance(self.core, ServerConnection)
        self.core.reject(stream.stream_id, status)
        stream.on_reset(0)
        self._flush()

    @property
    def lost(self) -> bool:
        """The transport is gone (the peer closed it, or it was aborted)."""
        return self._lost

    def close(self) -> None:
        """GOAWAY, then close the transport once what is queued has been written."""
        self.core.close()
        self._flush()
        if self.transport is not None:
            self._close_transport()

    def abort(self) -> None:
        """GOAWAY (best effort), then drop the connection without waiting for the peer.

        A transport already lost is left alone. See _close_transport() for why the transport
        is closed at most once.
        """
        self.core.close()
        if self.transport is None or self._lost:
            return
        self._flush()
        self.transport.abort()

    def _close_transport(self) -> None:
        """Close the transport once. asyncio's SSL transport forgets its protocol when closed a
        second time, after which abort() raises AttributeError: HboneServer.close() used to hit
        that when a client hung up while the server was closing (close() by _forget() or a
        GOAWAY, then close() and abort() by the server; reproduced on asyncio's loop)."""
        if self.transport is not None and not self._transport_closed:
            self._transport_closed = True
            self.transport.close()

    async def wait_transport_writable(self) -> None:
        while self._paused and not self._lost:
            waiter = asyncio.get_running_loop().create_future()
            self._write_waiters.append(waiter)
            await waiter
        if self._lost:
            raise StreamClosedError("the HBONE connection is closed")

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        sent = self.core.send_data(stream_id, data)
        if sent:
            # Straight to TLS: waiting a loop iteration to coalesce would add latency to every
            # request; acknowledgements and half-closes (below) are the small frames that wait.
            self._flush()
        return sent

    def end_stream(self, stream_id: int) -> None:
        self.core.end_stream(stream_id)
        self._schedule_flush()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.core.reset_stream(stream_id, error_code)
        self._schedule_flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.core.acknowledge(stream_id, size)
        # Most reads give back too little window for h2 to send a WINDOW_UPDATE yet.
        if self.core.has_output:
            self._schedule_flush()

    # Internals

    def _register(self, stream_id: int, authority: str) -> HboneStream:
        stream = HboneStream(self, stream_id, authority)
        self.streams[stream_id] = stream
        stream.add_finished_callback(self._forget)
        return stream

    def _forget(self, stream: HboneStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.core.closed and not self.streams and self.transport is not None:
            self._flush()
            self._close_transport()

    def _on_stream_data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        """DATA as the core parses it (HboneConnection.on_data): straight to the stream."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self.core.acknowledge(stream_id, flow_controlled_length)
        else:
            stream.on_data(data, flow_controlled_length)

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.core.acknowledge(event.stream_id, event.flow_controlled_length)
                else:
                    stream.on_data(event.data, event.flow_controlled_length)
            elif isinstance(event, WindowOpened):
                self._on_window_opened(event.stream_id)
            elif isinstance(event, StreamEnded):
                if (stream := self.streams.get(event.stream_id)) is not None:
                    stream.on_remote_end()
            elif isinstance(event, StreamReset):
                self._on_stream_reset(event)
            elif isinstance(event, TunnelRequested):
                self._on_request(event)
            elif isinstance(event, TunnelEstablished | TunnelRefused):
                status = 200 if isinstance(event, TunnelEstablished) else event.status
                response = self._responses.get(event.stream_id)
                if response is not None and not response.done():
                    response.set_result(status)
            elif isinstance(event, TunnelRejected):
                log.info(
                    "HBONE stream %d answered %d: %s", event.stream_id, event.status, event.reason
                )
            elif isinstance(event, ConnectionClosed):
                self._on_connection_closed(event)

    def _on_request(self, event: TunnelRequested) -> None:
        stream = self._register(event.stream_id, event.authority)
        if self._on_tunnel_requested is None:
            self.reject(stream, 503)
        else:
            self._on_tunnel_requested(self, stream, event)

    def _on_window_opened(self, stream_id: int) -> None:
        if stream_id:
            if (stream := self.streams.get(stream_id)) is not None:
                stream.on_window_opened()
            return
        for stream in list(self.streams.values()):
            stream.on_window_opened()

    def _on_stream_reset(self, event: StreamReset) -> None:
        response = self._responses.get(event.stream_id)
        if response is not None and not response.done():
            response.set_exception(
                TunnelUnavailableError(
                    f"the peer reset the CONNECT (HTTP/2 error code {event.error_code:#x})",
                    hint="the destination agent refused the stream; see its log",
                )
            )
        if (stream := self.streams.get(event.stream_id)) is not None:
            stream.on_reset(event.error_code)

    def _on_connection_closed(self, event: ConnectionClosed) -> None:
        if event.remote:
            if isinstance(self.core, ClientConnection):
                refuse_unserved(event, self._responses, self.streams)
            if not self.streams and self.transport is not None:
                self._close_transport()
            return
        log.warning("HBONE connection failed: %s (error code %#x)", event.reason, event.error_code)
        self._flush()
        if self.transport is not None:
            self._close_transport()

    def _schedule_flush(self) -> None:
        # Writes made in one loop iteration (DATA from many streams, WINDOW_UPDATEs) leave in
        # one transport write, so small messages are coalesced into fewer TLS records.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        buffers = self.core.buffers_to_send()
        if not buffers or self.transport is None or self._lost:
            return
        # The TLS transport makes one record per buffer: small frames are joined so that a
        # 1 KiB message is one record, not a 9-byte header record plus a payload record;
        # bulk payloads are handed over as they are, without a join copy.
        if len(buffers) == 1:
            self.transport.write(buffers[0])
        elif sum(map(len, buffers)) <= COALESCE_LIMIT:
            self.transport.write(b"".join(buffers))
        else:
            self.transport.writelines(buffers)

    def _wake_transport_writers(self) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
