"""HTTP/2 for the waypoint (gRPC): an asyncio peer around h2's sans-I/O connection, both sides.

h2 does the protocol; this module moves its bytes, hands each stream to the proxy as an
`H2Stream` (headers, a body read piece by piece, trailers) and sends with flow control: a
writer waits for window instead of buffering, and received data is acknowledged only when the
reader takes it, so a slow reader back-pressures its peer. Prior knowledge (h2c) only: the
waypoint's clients reach it through HBONE or the mesh, never through an HTTP/1.1 upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from waypoint.channel import Reader, Writer

Headers = tuple[tuple[str, str], ...]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_SIZE = 64 * 1024
DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 32 * 1024 * 1024


class H2StreamError(ConnectionError):
    """The stream was reset by the peer, or its connection went away."""


class H2Stream:
    """One request/response exchange on an HTTP/2 connection."""

    def __init__(self, peer: H2Peer, stream_id: int) -> None:
        self.peer = peer
        self.stream_id = stream_id
        self.headers: Headers = ()  # request headers (server side) or response headers (client)
        self.trailers: Headers = ()
        self.headers_received = asyncio.Event()
        self._body: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self._window = asyncio.Event()
        self.reset_code: int | None = None
        self.ended = False  # the peer ended its side
        self._unread = b""

    async def read(self) -> bytes:
        """The next piece of the body; b"" once the peer ended the stream."""
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        item = await self._body.get()
        if item is None:
            self._body.put_nowait(None)  # stay at the end for later reads
            if self.reset_code is not None:
                raise H2StreamError(f"stream {self.stream_id} reset ({self.reset_code})")
            return b""
        data, flow_controlled = item
        self.peer.acknowledge(self.stream_id, flow_controlled)
        return data

    def unread(self, data: bytes) -> None:
        """Give back bytes read ahead: the next read() returns them first."""
        self._unread = data + self._unread

    async def response_headers(self) -> Headers:
        """(client side) Wait for the response head; H2StreamError if the stream dies first."""
        await self.headers_received.wait()
        if not self.headers:
            raise H2StreamError(f"stream {self.stream_id} reset before its response")
        return self.headers

    async def send_headers(
        self, headers: Iterable[tuple[str, str]], end_stream: bool = False
    ) -> None:
        self.peer.send_headers(self.stream_id, list(headers), end_stream)
        await self.peer.drain()

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        """Send body bytes, waiting for flow-control window as needed."""
        view = memoryview(data)
        while True:
            window = self.peer.window(self.stream_id)
            if view and window <= 0:
                self._window.clear()
                await self._window.wait()
                if self.reset_code is not None or self.peer.closed:
                    raise H2StreamError(f"stream {self.stream_id} closed while sending")
                continue
            size = min(len(view), window, self.peer.max_frame_size)
            last = size == len(view)
            self.peer.send_data(self.stream_id, bytes(view[:size]), end_stream and last)
            view = view[size:]
            await self.peer.drain()
            if last:
                return

    async def send_trailers(self, trailers: Iterable[tuple[str, str]]) -> None:
        await self.send_headers(trailers, end_stream=True)

    def reset(self, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.peer.reset(self.stream_id, code)

    # called by the peer's read loop
    def _on_data(self, data: bytes, flow_controlled: int) -> None:
        if not data:  # padding only: give the window back, and never read as the end
            self.peer.acknowledge(self.stream_id, flow_controlled)
            return
        self._body.put_nowait((data, flow_controlled))

    def _on_end(self) -> None:
        self.ended = True
        self._body.put_nowait(None)

    def _on_reset(self, code: int) -> None:
        self.reset_code = code
        self.headers_received.set()
        self._body.put_nowait(None)
        self._window.set()


RequestHandler = Callable[[H2Stream], Awaitable[None]]


class H2Peer:
    """One HTTP/2 connection. The server side calls `handler` for each request stream."""

    def __init__(
        self,
        reader: Reader,
        writer: Writer,
        *,
        client_side: bool,
        handler: RequestHandler | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.connection = h2.connection.H2Connection(config=config)
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self._already_received = b""
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def max_frame_size(self) -> int:
        return int(self.connection.max_outbound_frame_size)

    def start(self, already_received: bytes = b"") -> None:
        """Send our preface/SETTINGS; `already_received` (the client's preface, read to tell
        HTTP/2 from HTTP/1.1) is processed first thing in `run()`."""
        self._already_received = already_received
        self.connection.initiate_connection()
        self.connection.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        )
        # A connection window far above one stream's: data a reader has not taken yet on one
        # stream must not use up the window every other stream of the connection needs.
        self.connection.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self._flush()

    async def run(self) -> None:
        """Read until the connection closes; then every open stream fails."""
        try:
            if self._already_received:
                self._receive(self._already_received)
            while not self.closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self._receive(data)
        except h2.exceptions.H2Error:
            self._flush()  # h2 queued a GOAWAY naming the error: send it before closing
        except ConnectionError:
            pass
        finally:
            self._close_all()

    def open_stream(self, headers: Iterable[tuple[str, str]], end_stream: bool = False) -> H2Stream:
        """(client side) Start a request: its stream id is taken when its headers are sent."""
        stream_id = self.connection.get_next_available_stream_id()
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        self.send_headers(stream_id, list(headers), end_stream)
        return stream

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.close_connection()
                self._flush()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- used by H2Stream ------------------------------------------------------------------

    def window(self, stream_id: int) -> int:
        try:
            return int(self.connection.local_flow_control_window(stream_id))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as error:
            raise H2StreamError(f"stream {stream_id} is closed") from error

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        self._guard(lambda: self.connection.send_headers(stream_id, headers, end_stream=end))

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        self._guard(lambda: self.connection.send_data(stream_id, data, end_stream=end))

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.connection.acknowledge_received_data(size, stream_id)
                self._flush()

    def reset(self, stream_id: int, code: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, code)
            self._flush()

    async def drain(self) -> None:
        if not self.closed:
            await self.writer.drain()

    # --- internals -----------------------------------------------------------------------------

    def _guard(self, action: Callable[[], object]) -> None:
        if self.closed:
            raise H2StreamError("the HTTP/2 connection is closed")
        try:
            action()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as error:
            raise H2StreamError(str(error)) from error
        self._flush()

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _receive(self, data: bytes) -> None:
        events = self.connection.receive_data(data)
        for event in events:
            self._dispatch(event)
        self._flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
            stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id)
            stream.headers = _text_headers(event.headers)
            stream.headers_received.set()
            if self.handler is not None:
                task = asyncio.get_running_loop().create_task(self._handle(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if isinstance(event, h2.events.WindowUpdated):
            waiting = list(self.streams.values())
            if event.stream_id:
                waiting = [s for s in waiting if s.stream_id == event.stream_id]
            for stream in waiting:
                stream._window.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self._close_all()
            return
        found = self.streams.get(getattr(event, "stream_id", None) or 0)
        if found is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            found.headers = _text_headers(event.headers)
            found.headers_received.set()
        elif isinstance(event, h2.events.TrailersReceived):
            found.trailers = _text_headers(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            found._on_data(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            found._on_end()
        elif isinstance(event, h2.events.StreamReset):
            del self.streams[found.stream_id]
            found._on_reset(int(event.error_code or 0))

    async def _handle(self, stream: H2Stream) -> None:
        assert self.handler is not None
        try:
            await self.handler(stream)
        except H2StreamError:
            pass
        finally:
            self.streams.pop(stream.stream_id, None)

    def _close_all(self) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream._on_reset(h2.errors.ErrorCodes.CANCEL)
        self.streams.clear()
        self.writer.close()


def _text_headers(headers: object) -> Headers:
    pairs = headers if isinstance(headers, list) else list(headers)  # type: ignore[call-overload]
    return tuple((str(name), str(value)) for name, value in pairs)
