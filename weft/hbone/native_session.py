"""NativeSession: an HBONE connection whose data path (TLS, DATA, flow control, splice) is in C.

weft._native (weft/native/hbone.c) owns the TLS socket: it reads and writes TLS records, cuts
frames, handles every DATA and WINDOW_UPDATE frame itself and splices each attached stream to its
TCP socket, so a message costs no Python call. It hands every other frame to this session, which
feeds them to the same h2-based HboneConnection as TunnelSession (HEADERS, SETTINGS, PING,
RST_STREAM, GOAWAY, stream lifecycle), and sends h2's output through the C object's single
write queue. A NativeStream can only be relayed (weft.hbone.relay), not read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from weft.hbone.connection import ClientConnection, HboneConnection, TunnelSettings
from weft.hbone.errors import HboneError, StreamClosedError
from weft.hbone.events import (
    CONNECT_ERROR,
    ConnectionClosed,
    Event,
    TunnelRejected,
    TunnelRequested,
)
from weft.hbone.session import TunnelSession, refuse_unserved
from weft.hbone.stream import HboneStream

# The C module this code speaks to; a build from older sources is not used (`pip install -e .`
# rebuilds it; scripts/setup.sh does when weft/native/ changed).
API_VERSION = 1
try:
    from weft import _native  # type: ignore[attr-defined]
except ImportError:  # not built (e.g. no libssl headers): the python data path only
    _native = None
if _native is not None and getattr(_native, "API_VERSION", None) != API_VERSION:
    _native = None

DATA_PATHS = ("python", "native")
# handshake() results of the C object
_WANT_READ, _WANT_WRITE = 1, 2
# (bytes to the tunnel, bytes from the tunnel, reset)
RelayCounts = tuple[int, int, bool]


def native_available() -> bool:
    """True if weft._native was built (pip install -e . with libssl-dev present)."""
    return _native is not None


def check_data_path(data_path: str) -> str:
    """`data_path` if it is usable here; HboneError naming what to do otherwise."""
    if data_path not in DATA_PATHS:
        raise HboneError(
            f"unknown HBONE data path {data_path!r}",
            hint=f"use one of {', '.join(DATA_PATHS)}",
        )
    if data_path == "native" and _native is None:
        raise HboneError(
            "the native HBONE data path (weft._native) is not built in this install, or was "
            "built from older sources",
            hint="install libssl-dev and re-run `pip install -e .` (scripts/setup.sh does), "
            "or run with --data-path python",
        )
    return data_path


class NativeStream(HboneStream):
    """A stream whose bytes are moved by weft._native once attach_tcp() gave it a socket."""

    native = True

    def __init__(self, session: NativeSession, stream_id: int, authority: str) -> None:
        super().__init__(session, stream_id, authority)
        self.native_session = session
        self.attached = False
        self.relayed: asyncio.Future[RelayCounts] = asyncio.get_running_loop().create_future()

    def attach_tcp(self, fd: int, buffered: bytes, eof: bool) -> None:
        """Hand the TCP socket `fd` (owned by C from now on) and what was read of it to C."""
        conn = self.native_session.conn
        if self._reset_code is not None or conn is None or self.native_session.lost:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
            raise StreamClosedError(f"HBONE stream {self.stream_id} is closed")
        self.attached = True
        self.native_session.attached[self.stream_id] = self
        try:
            conn.attach(self.stream_id, fd, buffered, eof)
        except ConnectionError as error:  # C closed fd
            self.native_session.attached.pop(self.stream_id, None)
            raise StreamClosedError(str(error)) from error

    async def read(self) -> bytes:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    async def write(self, data: bytes | memoryview) -> None:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    def on_remote_end(self) -> None:
        self._remote_ended = True
        conn = self.native_session.conn
        if conn is not None:
            conn.remote_end(self.stream_id)
        self._wake_reader()
        self._maybe_finish()

    def on_reset(self, error_code: int) -> None:
        if self._reset_code is None:
            conn = self.native_session.conn
            if conn is not None:
                conn.reset_stream(self.stream_id)  # aborts the TCP side (RST)
        super().on_reset(error_code)
        if not self.attached and not self.relayed.done():
            self.relayed.set_result((self.bytes_sent, self.bytes_received, True))

    def on_native_finished(self, to_tunnel: int, from_tunnel: int, reset: bool) -> None:
        self.bytes_sent, self.bytes_received = to_tunnel, from_tunnel
        if not self.relayed.done():
            self.relayed.set_result((to_tunnel, from_tunnel, reset))
        self._finish()

    def _maybe_finish(self) -> None:
        # An attached stream is finished when C says so: it may still be writing to TCP.
        if not self.attached:
            super()._maybe_finish()


class NativeSession(TunnelSession):
    """TunnelSession's interface over a weft._native.Connection instead of a TLS transport."""

    def __init__(
        self,
        core: HboneConnection,
        on_tunnel_requested: Callable[[TunnelSession, HboneStream, TunnelRequested], None]
        | None = None,
    ) -> None:
        super().__init__(core, on_tunnel_requested)
        core.on_data = None  # C owns DATA; h2 only sees END_STREAM carriers
        self.conn: Any = None  # weft._native.Connection once handshake() began
        self.attached: dict[int, NativeStream] = {}
        self._buffer = bytearray()  # TunnelSession's receive buffer is not used
        self._buffer_view = memoryview(self._buffer)

    async def handshake(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, timeout: float
    ) -> None:
        """TLS handshake on the connected `sock` (owned from now on); ConnectionError on failure."""
        assert _native is not None
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        fd = sock.detach()
        settings = self.core.settings
        self.conn = _native.Connection(
            context,
            fd,
            server_side,
            loop,
            self,
            settings.stream_window,
            settings.connection_window,
            settings.max_frame_size,
        )
        try:
            async with asyncio.timeout(timeout):
                while want := self.conn.handshake():
                    ready = loop.create_future()

                    def wake(ready: asyncio.Future[None] = ready) -> None:
                        if not ready.done():
                            ready.set_result(None)

                    if want == _WANT_READ:
                        loop.add_reader(fd, wake)
                    else:
                        loop.add_writer(fd, wake)
                    try:
                        await ready
                    finally:
                        if want == _WANT_READ:
                            loop.remove_reader(fd)
                        else:
                            loop.remove_writer(fd)
        except BaseException:
            self._lost = True
            self.conn.abort()
            raise

    @property
    def alpn(self) -> str | None:
        return None if self.conn is None else self.conn.alpn()

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's verified certificate (DER), for weft.tls.peer_identity_der()."""
        return None if self.conn is None else self.conn.peer_certificate()

    def start(self) -> None:
        """Begin moving bytes: h2's preface and settings go out, the peer's are read."""
        self._flush()
        self.conn.start()

    def stats(self) -> dict[str, Any]:
        """The C side's buffer sizes and windows (tests check memory stays bounded)."""
        return dict(self.conn.stats())

    # --- called by weft._native --------------------------------------------------------------

    def _native_frames(self, data: bytes) -> None:
        """Every frame but DATA and WINDOW_UPDATE, in order, for h2."""
        events = self.core.receive_data(data)
        if events:
            self._dispatch(events)
        if self.core.has_output:
            self._flush()

    def _native_error(self, error_code: int, reason: str) -> None:
        """C found a connection error (a window overrun, an oversized frame): GOAWAY."""
        self._dispatch([*self.core._fail(error_code, reason)])

    def _native_lost(self, reason: str) -> None:
        if not self._lost:
            self.connection_lost(None)

    def _native_tcp_eof(self, stream_id: int) -> None:
        """The workload half-closed and all its bytes are framed: END_STREAM."""
        stream = self.attached.get(stream_id)
        if stream is not None:
            stream.close_write()

    def _native_tcp_reset(self, stream_id: int) -> None:
        """The workload's connection failed (RST, error): RST_STREAM(CONNECT_ERROR)."""
        stream = self.attached.get(stream_id)
        if stream is not None:
            stream.abort(CONNECT_ERROR)

    def _native_finished(
        self, stream_id: int, to_tunnel: int, from_tunnel: int, reset: bool
    ) -> None:
        stream = self.attached.pop(stream_id, None)
        if stream is not None:
            stream.on_native_finished(to_tunnel, from_tunnel, reset)

    # --- TunnelSession's transport-facing parts ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise TypeError("a NativeSession has no transport")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for stream in list(self.attached.values()):
            stream.on_native_finished(stream.bytes_sent, stream.bytes_received, True)
        self.attached.clear()

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    def _register(self, stream_id: int, authority: str) -> HboneStream:
        stream = NativeStream(self, stream_id, authority)
        self.streams[stream_id] = stream
        stream.add_finished_callback(self._forget)
        if self.conn is not None:
            self.conn.open_stream(stream_id)  # C holds its DATA until attach_tcp()
        return stream

    def _dispatch(self, events: list[Event]) -> None:
        super()._dispatch(events)
        for event in events:
            # A 400 answered by the core: C may hold DATA for that stream.
            if isinstance(event, TunnelRejected) and self.conn is not None:
                self.conn.reset_stream(event.stream_id)

    def _forget(self, stream: HboneStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.core.closed and not self.streams:
            self._close_transport()

    def _on_connection_closed(self, event: ConnectionClosed) -> None:
        if event.remote:
            if isinstance(self.core, ClientConnection):
                refuse_unserved(event, self._responses, self.streams)
            if not self.streams:
                self._close_transport()
            return
        self._flush()
        self._close_transport()

    def _schedule_flush(self) -> None:
        self._flush()  # C coalesces what one loop callback queues

    def _flush(self) -> None:
        self._flush_scheduled = False
        buffers = self.core.buffers_to_send()
        if not buffers or self.conn is None or self._lost:
            return
        self.conn.send(buffers[0] if len(buffers) == 1 else b"".join(buffers))

    def close(self) -> None:
        self.core.close()
        self._flush()
        self._close_transport()

    def abort(self) -> None:
        self.core.close()
        if self.conn is None or self._lost:
            return
        self._flush()
        self.conn.abort()

    def _close_transport(self) -> None:
        if self.conn is not None and not self._transport_closed:
            self._transport_closed = True
            self.conn.close()


async def open_native_session(
    context: ssl.SSLContext,
    host: str,
    port: int,
    settings: TunnelSettings,
    timeout: float,
) -> NativeSession:
    """A client NativeSession to host:port, handshake done and started; OSError on failure."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    session = NativeSession(ClientConnection(settings))
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    await session.handshake(sock, context, server_side=False, timeout=timeout)
    return session
