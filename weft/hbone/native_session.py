"""NativeSession: an HBONE connection whose HTTP/2 and data path run in C (weft._native).

weft._native (weft/native/hbone.c) owns the TLS socket and speaks all of HTTP/2 on it: preface,
SETTINGS, PING, GOAWAY, RST_STREAM, HEADERS/CONTINUATION (HPACK, weft/native/hpack.c), DATA,
flow control, stream states and limits, and the splice of each stream to its TCP socket. There
is no h2 object: Python hears once when a stream opens (a server's CONNECT fields, a client's
response status) and once when it ends (bytes each way, reset). A NativeStream can only be
relayed (weft.hbone.relay), not read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from weft.hbone.connect_block import header_block
from weft.hbone.connection import TunnelSettings
from weft.hbone.errors import (
    HboneError,
    StreamClosedError,
    TunnelRefusedError,
    TunnelUnavailableError,
)
from weft.hbone.events import CANCEL, CONNECT_ERROR, REFUSED_STREAM
from weft.hbone.request import parse_authority
from weft.hbone.stream import HboneStream

log = logging.getLogger(__name__)

# The C module this code speaks to; a build from older sources is not used (`pip install -e .`
# rebuilds it; scripts/setup.sh does when weft/native/ changed).
API_VERSION = 3
try:
    from weft import _native  # type: ignore[attr-defined]
except ImportError:  # not built (e.g. no libssl headers): the python data path only
    _native = None
if _native is not None and getattr(_native, "API_VERSION", None) != API_VERSION:
    _native = None
# weft._native.accept(listener fd): (fd, peer host, peer port), the socket non-blocking from
# accept4(); None when nothing waits. None itself without the module.
native_accept: Callable[[int], tuple[int, str, int] | None] | None = (
    None if _native is None else _native.accept
)

DATA_PATHS = ("python", "native")
# handshake() results of the C object
_WANT_READ, _WANT_WRITE = 1, 2
# (bytes to the tunnel, bytes from the tunnel, reset)
RelayCounts = tuple[int, int, bool]
# on_response(status, error_code): 200, another status, or 0 with the HTTP/2 error code that
# ended the stream before an answer (0: the connection closed)
ResponseCallback = Callable[[int, int], None]
# on_end(to_tunnel, from_tunnel, reset): the stream is finished
EndCallback = Callable[[int, int, bool], None]
# a server's request(session, stream id, header fields as HPACK decoded them)
RequestCallback = Callable[["NativeSession", int, list[tuple[bytes, bytes]]], None]


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


def unanswered_error(error_code: int) -> TunnelUnavailableError:
    """Why a CONNECT got no response: the stream was reset, refused, or the connection ended."""
    if error_code == REFUSED_STREAM:
        return TunnelUnavailableError(
            "the peer refused the stream unserved (GOAWAY or its stream limit)",
            hint="retry on another connection",
        )
    if error_code:
        return TunnelUnavailableError(
            f"the peer reset the CONNECT (HTTP/2 error code {error_code:#x})",
            hint="the destination agent refused the stream; see its log",
        )
    return TunnelUnavailableError("the HBONE connection closed before the peer answered")


class NativeStream(HboneStream):
    """A stream whose bytes are moved by weft._native once it has a socket (attach_tcp())."""

    native = True

    def __init__(self, session: NativeSession, stream_id: int, authority: str) -> None:
        # Not HboneStream.__init__: nothing of a stream's bytes is kept in Python.
        self.native_session = session
        self.stream_id = stream_id
        self.authority = authority
        self.bytes_sent = 0
        self.bytes_received = 0
        self._reset_code: int | None = None
        self._finished = False
        self._finished_callbacks: list[Callable[[HboneStream], None]] = []
        self.attached = False
        self.relayed: asyncio.Future[RelayCounts] | None = None
        self.on_end: EndCallback | None = None

    def attach_tcp(self, fd: int, buffered: bytes, eof: bool) -> None:
        """Hand the TCP socket `fd` (owned by C from now on) and what was read of it to C."""
        conn = self.native_session.conn
        if self._finished or conn is None:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
            raise StreamClosedError(f"HBONE stream {self.stream_id} is closed")
        self.attached = True
        try:
            conn.attach(self.stream_id, fd, buffered, eof)
        except ConnectionError as error:  # C closed fd
            self.on_native_finished(0, 0, True)
            raise StreamClosedError(str(error)) from error

    def wait_relayed(self) -> asyncio.Future[RelayCounts]:
        """The end of the splice: (bytes to the tunnel, bytes from it, reset)."""
        if self.relayed is None:
            self.relayed = asyncio.get_running_loop().create_future()
            if self._finished:
                self.relayed.set_result((self.bytes_sent, self.bytes_received, True))
        return self.relayed

    async def read(self) -> bytes:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    async def write(self, data: bytes | memoryview) -> None:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    def send_some(self, data: bytes | memoryview) -> int:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    def close_write(self) -> None:
        raise HboneError("a native HBONE stream is moved by weft._native; relay() it")

    def acknowledge(self, flow_controlled_length: int) -> None:
        return None  # C gives the window back

    def abort(self, error_code: int = CONNECT_ERROR) -> None:
        """RST_STREAM(error_code); C aborts the TCP side (RST) and reports the end."""
        if self._finished:
            return
        conn = self.native_session.conn
        if conn is not None:
            conn.reset_stream(self.stream_id, error_code)
        self.on_native_finished(self.bytes_sent, self.bytes_received, True)

    def on_reset(self, error_code: int) -> None:
        self.on_native_finished(self.bytes_sent, self.bytes_received, True)

    def on_native_finished(self, to_tunnel: int, from_tunnel: int, reset: bool) -> None:
        if self._finished:
            return
        self.bytes_sent, self.bytes_received = to_tunnel, from_tunnel
        if reset:
            self._reset_code = CONNECT_ERROR
        self.native_session.streams.pop(self.stream_id, None)
        if self.relayed is not None and not self.relayed.done():
            self.relayed.set_result((to_tunnel, from_tunnel, reset))
        if self.on_end is not None:
            self.on_end(to_tunnel, from_tunnel, reset)
        self._finish()


class NativeSession:
    """One HBONE TLS connection on a weft._native.Connection: the pool's and the server's view."""

    def __init__(self, settings: TunnelSettings, *, server_side: bool) -> None:
        self.settings = settings
        self.server_side = server_side
        self.conn: Any = None  # weft._native.Connection once handshake() began
        self.streams: dict[int, NativeStream] = {}  # C's streams Python knows of
        self.on_request: RequestCallback | None = None
        self._responses: dict[int, ResponseCallback] = {}
        self._next_stream_id = 1  # client: C checks open() names the next odd id
        self._lost = False
        self._goaway = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handshake(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, timeout: float
    ) -> None:
        """TLS handshake on the connected `sock` (owned from now on); ConnectionError on failure."""
        assert _native is not None
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        fd = sock.detach()
        settings = self.settings
        self.conn = _native.Connection(
            context,
            fd,
            server_side,
            loop,
            self,
            settings.stream_window,
            settings.connection_window,
            settings.max_frame_size,
            settings.max_concurrent_streams,
            settings.max_header_list_size,
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
        """Begin moving bytes: our preface and SETTINGS go out, the peer's are read."""
        self.conn.start()

    def stats(self) -> dict[str, Any]:
        """The C side's buffer sizes and windows (tests check memory stays bounded)."""
        return dict(self.conn.stats())

    @property
    def lost(self) -> bool:
        """The connection is gone (the peer closed it, or it was aborted)."""
        return self._lost

    @property
    def usable(self) -> bool:
        return not self._lost and not self._goaway and self.conn is not None

    def has_room(self) -> bool:
        """One more stream fits now (both ends' limits; no GOAWAY either way)."""
        return not self._lost and self.conn is not None and self.conn.room() > 0

    # --- client ---------------------------------------------------------------------------------

    def open_socket(
        self,
        authority: str,
        headers: tuple[tuple[str, str], ...],
        fd: int,
        on_response: ResponseCallback,
        on_end: EndCallback,
        *,
        nodelay_set: bool = False,
    ) -> NativeStream:
        """CONNECT `authority` and splice the TCP socket `fd` (owned by C from now on): its
        first bytes leave with the HEADERS; a status other than 200 resets it. No task, future
        or await: C calls on_response once, then on_end once. StreamClosedError (fd closed) if
        this connection takes no new stream. `nodelay_set`: fd has TCP_NODELAY already (an
        accepted socket inherits it from its listener), C does not set it again."""
        block = header_block(authority, headers)
        stream_id = self._next_stream_id
        stream = self._register(stream_id, authority)  # C may report on it within open()
        stream.attached = True
        stream.on_end = on_end
        self._responses[stream_id] = on_response
        try:
            self.conn.open(stream_id, block, fd, b"", nodelay_set)
        except ConnectionError as error:  # C closed fd
            self.streams.pop(stream_id, None)
            self._responses.pop(stream_id, None)
            raise StreamClosedError(f"cannot open a stream on this connection: {error}") from error
        self._next_stream_id += 2
        return stream

    async def open_tunnel(
        self, authority: str, headers: Iterable[tuple[str, str]] = ()
    ) -> NativeStream:
        """Send a CONNECT and wait for the answer; TunnelRefusedError unless it is 200."""
        parse_authority(authority)
        if self.conn is None or not self.usable:
            raise StreamClosedError("this HBONE connection is closing; open a new one")
        try:
            block = header_block(authority, tuple(headers))
            stream_id = self._next_stream_id
            self.conn.open(stream_id, block)
        except (ConnectionError, ValueError) as error:
            raise StreamClosedError(f"cannot open a stream on this connection: {error}") from error
        self._next_stream_id += 2
        stream = self._register(stream_id, authority)  # no callback comes without a socket
        response: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def answered(status: int, error_code: int) -> None:
            if response.done():
                return
            if status:
                response.set_result(status)
            else:
                response.set_exception(unanswered_error(error_code))

        self._responses[stream_id] = answered
        try:
            status = await response
        except asyncio.CancelledError:
            stream.abort(CANCEL)
            raise
        finally:
            self._responses.pop(stream_id, None)
        if status != 200:
            stream.abort(CANCEL)  # C reset it already; this only finishes it here
            raise TunnelRefusedError(authority, status)
        return stream

    # --- server ---------------------------------------------------------------------------------

    def register(self, stream_id: int, authority: str) -> NativeStream:
        """The NativeStream of a request C reported (server side)."""
        return self._register(stream_id, authority)

    def accept(self, stream: HboneStream) -> None:
        """Answer 200; the socket follows with attach_tcp(). StreamClosedError if it is gone."""
        try:
            self.conn.accept(stream.stream_id)
        except ConnectionError as error:
            raise StreamClosedError(str(error)) from error

    def respond(self, stream: NativeStream, sock: socket.socket) -> None:
        """Answer 200 and splice `sock` (owned from now on) in one call."""
        stream.attached = True
        try:
            self.conn.respond(stream.stream_id, sock.detach())
        except ConnectionError as error:  # C closed the descriptor
            stream.on_native_finished(0, 0, True)
            raise StreamClosedError(str(error)) from error

    def reject(self, stream: HboneStream, status: int) -> None:
        """Answer `status` (401, 503, ...) and end the stream."""
        if self.conn is not None:
            self.conn.refuse(stream.stream_id, status)
        if isinstance(stream, NativeStream):
            stream.on_native_finished(0, 0, True)

    # --- the connection ------------------------------------------------------------------------

    def close(self) -> None:
        """GOAWAY, then close once it is written (open streams are reset)."""
        if self.conn is not None and not self._lost:
            self.conn.close()

    def drain(self) -> None:
        """GOAWAY; streams already open finish, then the connection closes."""
        if self.conn is not None and not self._lost:
            self.conn.drain()

    def abort(self) -> None:
        """Close now (GOAWAY best effort)."""
        if self.conn is None or self._lost:
            return
        self.conn.abort()

    def _register(self, stream_id: int, authority: str) -> NativeStream:
        stream = NativeStream(self, stream_id, authority)
        self.streams[stream_id] = stream
        return stream

    # --- called by weft._native ----------------------------------------------------------------

    def _native_request(self, stream_id: int, fields: list[tuple[bytes, bytes]]) -> None:
        if self.on_request is None:
            self.conn.refuse(stream_id, 503)
        else:
            self.on_request(self, stream_id, fields)

    def _native_response(self, stream_id: int, status: int, error_code: int) -> None:
        callback = self._responses.pop(stream_id, None)
        if callback is not None:
            callback(status, error_code)

    def _native_finished(
        self, stream_id: int, to_tunnel: int, from_tunnel: int, reset: bool
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_native_finished(to_tunnel, from_tunnel, reset)

    def _native_goaway(self, error_code: int, last_stream_id: int, reason: bytes) -> None:
        self._goaway = True
        if error_code:
            log.warning(
                "HBONE peer sent GOAWAY (error code %#x, last stream %d): %s",
                error_code,
                last_stream_id,
                reason.decode("utf-8", "replace"),
            )

    def _native_error(self, error_code: int, reason: str) -> None:
        log.warning("HBONE connection failed: %s (error code %#x)", reason, error_code)

    def _native_lost(self, reason: str) -> None:
        self._lost = True
        for callback in list(self._responses.values()):
            callback(0, 0)
        self._responses.clear()
        for stream in list(self.streams.values()):
            stream.on_native_finished(stream.bytes_sent, stream.bytes_received, True)
        if not self.closed.done():
            self.closed.set_result(None)


async def open_native_session(
    context: ssl.SSLContext,
    host: str,
    port: int,
    settings: TunnelSettings,
    timeout: float,
) -> NativeSession:
    """A client NativeSession to host:port, handshake done (not started); OSError on failure."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    session = NativeSession(settings, server_side=False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    await session.handshake(sock, context, server_side=False, timeout=timeout)
    return session
