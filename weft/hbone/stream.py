"""One tunnelled TCP connection as an asyncio object: read, write, close_write, abort."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from weft.hbone.errors import StreamClosedError, StreamResetError
from weft.hbone.events import CONNECT_ERROR

if TYPE_CHECKING:
    from weft.hbone.session import TunnelSession


class StreamSink(Protocol):
    """Takes a stream's events as they happen, instead of read() (see HboneStream.attach)."""

    def on_data(self, data: bytes, flow_controlled_length: int) -> None: ...

    def on_remote_end(self) -> None: ...

    def on_reset(self, error_code: int) -> None: ...

    def on_writable(self) -> None: ...


class HboneStream:
    """An HTTP/2 CONNECT stream carrying one TCP connection; made by TunnelSession.

    Two ways to use it: read()/write() from a task, or attach() a sink that is called as
    events arrive and send_some() from callbacks (the relay does that: no task wake-up per
    message). Received bytes are acknowledged (their flow-control window given back to the
    peer) only when read() hands them over, or when the sink calls acknowledge(), so a slow
    reader throttles the sender.
    """

    def __init__(self, session: TunnelSession, stream_id: int, authority: str) -> None:
        self.session = session
        self.stream_id = stream_id
        self.authority = authority
        self.bytes_sent = 0
        self.bytes_received = 0
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._remote_ended = False
        self._local_ended = False
        self._reset_code: int | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._finished_callbacks: list[Callable[[HboneStream], None]] = []
        self._finished = False
        self._sink: StreamSink | None = None

    @property
    def finished(self) -> bool:
        """True once both directions are closed or the stream was reset."""
        return self._finished

    def add_finished_callback(self, callback: Callable[[HboneStream], None]) -> None:
        if self._finished:
            callback(self)
        else:
            self._finished_callbacks.append(callback)

    async def read(self) -> bytes:
        """The next received bytes; b"" once the peer half-closed. StreamResetError on reset."""
        while not self._chunks:
            if self._reset_code is not None:
                raise StreamResetError(self.stream_id, self._reset_code)
            if self._remote_ended:
                return b""
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        data, flow_controlled_length = self._chunks.popleft()
        self.session.acknowledge(self.stream_id, flow_controlled_length)
        return data

    async def write(self, data: bytes | memoryview) -> None:
        """Send `data`, waiting while the peer's window or the TLS write buffer is full."""
        # The core queues views of `data` until the transport takes them: a caller's mutable
        # buffer must not change under it, so only immutable bytes are used uncopied.
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        while view:
            self._check_writable()
            await self.session.wait_transport_writable()
            self._check_writable()
            sent = self.session.send_data(self.stream_id, view)
            if sent:
                self.bytes_sent += sent
                view = view[sent:]
                continue
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None

    def attach(self, sink: StreamSink) -> None:
        """Deliver this stream's data, end, reset and window events to `sink` from now on.

        What arrived before is delivered first. The sink must acknowledge() the
        flow-controlled length of every on_data() once it has passed the bytes on.
        """
        self._sink = sink
        while self._chunks:
            sink.on_data(*self._chunks.popleft())
        if self._reset_code is not None:
            sink.on_reset(self._reset_code)
        elif self._remote_ended:
            sink.on_remote_end()

    def send_some(self, data: bytes | memoryview) -> int:
        """Send as much of `data` as the windows and the TLS buffer take now, without waiting.

        0 means wait for the sink's on_writable(). The caller keeps `data` unchanged until the
        transport has taken it (the core queues views of it).
        """
        if self._reset_code is not None or self._local_ended:
            self._check_writable()  # raises
        session = self.session
        if session._paused or session._lost:  # not session.writable, without a property call
            return 0
        sent = session.send_data(self.stream_id, data)
        self.bytes_sent += sent
        return sent

    def acknowledge(self, flow_controlled_length: int) -> None:
        """The sink has passed on bytes: give their window back to the peer."""
        self.session.acknowledge(self.stream_id, flow_controlled_length)

    def close_write(self) -> None:
        """Half-close our direction (END_STREAM), as a TCP FIN would."""
        if self._local_ended or self._reset_code is not None:
            return
        self._local_ended = True
        # If the connection already went away, the reset that follows finishes the stream.
        with contextlib.suppress(StreamClosedError):
            self.session.end_stream(self.stream_id)
        self._maybe_finish()

    def abort(self, error_code: int = CONNECT_ERROR) -> None:
        """Reset the stream (RST_STREAM), as a TCP RST would; pending bytes are dropped."""
        if self._finished:
            return
        self.session.reset_stream(self.stream_id, error_code)
        self.on_reset(error_code)

    def _check_writable(self) -> None:
        if self._reset_code is not None:
            raise StreamResetError(self.stream_id, self._reset_code)
        if self._local_ended:
            raise StreamClosedError(f"HBONE stream {self.stream_id} was closed for writing")

    # The session calls these as the protocol core reports events.

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        if self._reset_code is not None:
            self.session.acknowledge(self.stream_id, flow_controlled_length)
            return
        self.bytes_received += len(data)
        if self._sink is not None:
            self._sink.on_data(data, flow_controlled_length)
            return
        self._chunks.append((data, flow_controlled_length))
        self._wake_reader()

    def on_remote_end(self) -> None:
        self._remote_ended = True
        if self._sink is not None:
            self._sink.on_remote_end()
        self._wake_reader()
        self._maybe_finish()

    def on_reset(self, error_code: int) -> None:
        if self._reset_code is not None:
            return
        self._reset_code = error_code
        # Bytes nobody will read still hold connection window: hand it back.
        for _, flow_controlled_length in self._chunks:
            self.session.acknowledge(self.stream_id, flow_controlled_length)
        self._chunks.clear()
        if self._sink is not None:
            self._sink.on_reset(error_code)
        self._wake_reader()
        self.on_window_opened()
        self._finish()

    def on_window_opened(self) -> None:
        """The peer's window or the TLS write buffer has room again (or the stream ended)."""
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._sink is not None and self._reset_code is None:
            self._sink.on_writable()

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _maybe_finish(self) -> None:
        if self._local_ended and self._remote_ended:
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        callbacks, self._finished_callbacks = self._finished_callbacks, []
        for callback in callbacks:
            callback(self)
