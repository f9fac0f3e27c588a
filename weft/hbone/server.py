"""HboneServer: accept mTLS HBONE connections, authorize each CONNECT, connect and splice."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from weft.hbone.accept import accept_waiting, listening_socket
from weft.hbone.connection import ServerConnection, TunnelSettings
from weft.hbone.errors import HboneError, StreamClosedError
from weft.hbone.events import TunnelRequested
from weft.hbone.native_session import NativeSession, NativeStream, check_data_path
from weft.hbone.relay import RelayResult, relay
from weft.hbone.request import ConnectRequest, MalformedRequestError, validate_connect_fields
from weft.hbone.run_now import Pending, run_now
from weft.hbone.session import TunnelSession
from weft.hbone.stream import HboneStream
from weft.identity import Identity
from weft.tls import ALPN_HBONE, PeerIdentityError, peer_identity, peer_identity_der

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]
# authorize(peer, authority, headers) -> True to allow; the agent evaluates L4 policy here.
Authorize = Callable[[Identity, str, Headers], Awaitable[bool]]
# connect(authority) -> an open TCP connection to the target; OSError/LookupError mean 503.
Connect = Callable[[str], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
# relayed(result): a tunnel's relay ended; called in the task that ran authorize() and connect().
Relayed = Callable[[RelayResult], None]
# connect_socket(authority) -> connect() as a bare connected socket, for native streams (C takes
# the descriptor: no asyncio transport or streams are made per tunnel).
ConnectSocket = Callable[[str], Awaitable[socket.socket]]


@dataclass
class ServerStats:
    """Counters an operator reads to tell handshakes from tunnels and refusals from failures."""

    connections_accepted: int = 0
    connections_refused: int = 0  # TLS succeeded but ALPN or the peer identity was wrong
    tunnels_opened: int = 0
    tunnels_denied: int = 0  # 401
    tunnels_unavailable: int = 0  # 503


class HboneServer:
    """The HBONE listener (port 15008): one TLS connection per peer, one stream per tunnel.

    On the Python data path each authenticated CONNECT is served by `serve_stream()`, whose
    default authorizes, connects and relays; a subclass overrides it to serve the stream itself
    (the waypoint hands it to its proxy). The native path has no HboneStream to hand out, so a
    server that overrides `serve_stream()` must run on the Python path.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        authorize: Authorize,
        connect: Connect,
        *,
        settings: TunnelSettings | None = None,
        handshake_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        relayed: Relayed | None = None,
        data_path: str = "python",
        connect_socket: ConnectSocket | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        # Checked before check_data_path: that this server cannot run natively matters more than
        # whether C is built.
        if data_path == "native" and type(self).serve_stream is not HboneServer.serve_stream:
            raise HboneError(
                f"{type(self).__name__} overrides serve_stream(), which only the Python HBONE "
                "data path calls (the native path hands out no HboneStream)",
                hint='construct it with data_path="python"',
            )
        # "native": connections run on weft._native (C moves the bytes), see native_session.
        self.data_path = check_data_path(data_path)
        self.authorize = authorize
        self.connect = connect
        self.relayed = relayed
        self.connect_socket = connect_socket
        self.settings = settings or TunnelSettings()
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None  # the native data path's own
        self._sessions: set[TunnelSession | NativeSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        assert self._server is not None, "start() the server first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        """TLS connections currently open (each carries up to 100 tunnels)."""
        return len(self._sessions)

    async def start(self, host: str, port: int, *, transparent: bool = False) -> None:
        """Listen on host:port. `transparent` (IP_TRANSPARENT, needs CAP_NET_ADMIN) lets the
        listener answer for an address this host does not own, as an agent does for its
        workloads' addresses: without it the kernel finds no route for the SYN-ACK."""
        loop = asyncio.get_running_loop()
        try:
            if self.data_path == "native":
                self._listener = listening_socket(host, port, transparent=transparent)
                loop.add_reader(self._listener.fileno(), self._accept_native)
            elif transparent:
                self._server = await loop.create_server(
                    self._new_session,
                    sock=listening_socket(host, port, transparent=True),
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.handshake_timeout,
                )
            else:
                self._server = await loop.create_server(
                    self._new_session,
                    host,
                    port,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.handshake_timeout,
                    reuse_address=True,
                )
        except OSError as error:
            raise HboneError(
                f"cannot listen for HBONE on {host}:{port}: {error.strerror}",
                hint=f"is another agent already bound to port {port}?"
                + (" (IP_TRANSPARENT needs CAP_NET_ADMIN)" if transparent else ""),
            ) from error

    async def close(self) -> None:
        """Stop accepting, then close every connection and tunnel."""
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for session in list(self._sessions):
            session.abort()  # rather than wait for slow peers
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _new_session(self) -> TunnelSession:
        session = _ServerSession(self)
        self._sessions.add(session)
        session.closed.add_done_callback(lambda _: self._sessions.discard(session))
        return session

    def _accept_native(self) -> None:
        """The native listener is readable: take every waiting connection and handshake it."""
        assert self._listener is not None
        accept_waiting(self._listener, self._start_native, "HBONE")

    def _start_native(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._serve_native_connection(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_native_connection(self, sock: socket.socket) -> None:
        peername: object = "?"
        with contextlib.suppress(OSError):
            peername = sock.getpeername()
        session = _NativeServerSession(self.settings)
        try:
            await session.handshake(
                sock, self.ssl_context, server_side=True, timeout=self.handshake_timeout
            )
        except (OSError, TimeoutError) as error:  # ConnectionError is an OSError
            log.info("HBONE handshake with %s failed: %s", peername, error)
            return
        alpn = session.alpn
        try:
            if alpn != ALPN_HBONE:
                raise HboneError(f"client offered no ALPN {ALPN_HBONE!r} (got {alpn!r})")
            session.peer = peer_identity_der(session.peer_certificate)
        except (HboneError, PeerIdentityError) as error:
            log.warning("refusing HBONE connection from %s: %s", peername, error)
            self.stats.connections_refused += 1
            session.abort()
            return
        self.stats.connections_accepted += 1
        self._sessions.add(session)
        session.closed.add_done_callback(lambda _: self._sessions.discard(session))
        session.on_request = self._native_request
        session.start()

    # --- the native data path: one call per request, most answered within it ------------------

    def _native_request(
        self, session: NativeSession, stream_id: int, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """C decoded a CONNECT: validate it (400 on this stream only), then authorize, connect
        and answer, synchronously when nothing has to wait (see run_now)."""
        try:
            request = validate_connect_fields(tuple(fields))
        except MalformedRequestError as error:
            log.info("HBONE stream %d answered 400: %s", stream_id, error)
            session.conn.refuse(stream_id, 400)
            return
        stream = session.register(stream_id, request.authority)
        # authorize(), connect and relayed() of one tunnel share a context (the agent passes
        # the connection's record between them in a context variable), as a task would give.
        context = contextvars.copy_context()
        try:
            outcome = context.run(
                run_now, self._serve_native_tunnel(session, stream, request, context)
            )
        except Exception:  # a bug: it must cost this tunnel only
            log.exception("serving HBONE stream %d failed", stream_id)
            stream.abort()
            return
        if isinstance(outcome, Pending):
            task = asyncio.get_running_loop().create_task(outcome.resume(), context=context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_native_tunnel(
        self,
        session: NativeSession,
        stream: NativeStream,
        request: ConnectRequest,
        context: contextvars.Context,
    ) -> None:
        assert isinstance(session, _NativeServerSession)
        assert session.peer is not None
        if not await self._authorized(session.peer, request.authority, request.headers):
            self.stats.tunnels_denied += 1
            session.reject(stream, 401)
            return
        if self.relayed is not None:
            relayed = self.relayed
            stream.on_end = lambda to, from_, reset: context.run(
                relayed, RelayResult(to, from_, reset)
            )
        try:
            if self.connect_socket is not None:
                sock = await _bounded(self.connect_socket(request.authority), self.connect_timeout)
            else:
                reader, writer = await asyncio.wait_for(
                    self.connect(request.authority), self.connect_timeout
                )
        except (OSError, LookupError, TimeoutError) as error:
            log.info("HBONE target %s unreachable: %r", request.authority, error)
            self.stats.tunnels_unavailable += 1
            stream.on_end = None
            session.reject(stream, 503)
            return
        try:
            if self.connect_socket is not None:
                session.respond(stream, sock)  # 200, and C splices from here on
            else:
                session.accept(stream)
        except StreamClosedError:  # the client gave up while we were connecting
            if self.connect_socket is None:
                writer.close()
            return
        self.stats.tunnels_opened += 1
        if self.connect_socket is None:
            await relay(stream, reader, writer)

    async def _authorized(self, peer: Identity, authority: str, headers: Headers) -> bool:
        """authorize() for both data paths; a failure of it is logged and refuses (401)."""
        try:
            return await self.authorize(peer, authority, headers)
        except Exception:
            log.exception("authorize() failed for %s -> %s; refusing", peer, authority)
            return False

    def _on_tunnel_requested(
        self, session: TunnelSession, stream: HboneStream, request: TunnelRequested
    ) -> None:
        assert isinstance(session, _ServerSession)
        assert session.peer is not None
        task = asyncio.get_running_loop().create_task(
            self.serve_stream(session, session.peer, stream, request)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve_stream(
        self,
        session: TunnelSession,
        peer: Identity,
        stream: HboneStream,
        request: TunnelRequested,
    ) -> None:
        """Serve one CONNECT stream (the Python data path's per-tunnel task; see the class doc).

        `peer` is the client's verified SPIFFE identity and `request` the CONNECT's authority
        and headers. The stream is unanswered: answer it with `session.accept(stream)` (200;
        StreamClosedError if the client gave up) or `session.reject(stream, status)`, then read
        and write it. The default authorizes (401), connects within connect_timeout (503),
        relays and reports the result to `relayed`; an override keeps `self.stats` itself. The
        task is cancelled when the server closes. Nothing catches what escapes an override: catch
        its failures and reset the stream (`stream.abort()`), as the default does.
        """
        if not await self._authorized(peer, request.authority, request.headers):
            self.stats.tunnels_denied += 1
            session.reject(stream, 401)
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await self.connect(request.authority)
        except (OSError, LookupError, TimeoutError) as error:
            log.info("HBONE target %s unreachable: %r", request.authority, error)
            self.stats.tunnels_unavailable += 1
            session.reject(stream, 503)
            return
        try:
            session.accept(stream)
        except StreamClosedError:  # the client gave up while we were connecting
            writer.close()
            return
        self.stats.tunnels_opened += 1
        result = RelayResult(0, 0, reset=True)
        try:
            result = await relay(stream, reader, writer)
        except Exception:
            # relay() maps every I/O failure to a reset; anything else is a bug in it, and
            # must cost this tunnel only.
            log.exception("HBONE relay to %s failed", request.authority)
            stream.abort()
            result = RelayResult(stream.bytes_sent, stream.bytes_received, reset=True)
        except asyncio.CancelledError:  # the server is closing: the tunnel was reset
            result = RelayResult(stream.bytes_sent, stream.bytes_received, reset=True)
            raise
        finally:
            if self.relayed is not None:
                self.relayed(result)


class _ServerSession(TunnelSession):
    """A server-side session that checks ALPN and the client's SPIFFE ID before any stream."""

    def __init__(self, server: HboneServer) -> None:
        super().__init__(ServerConnection(server.settings), server._on_tunnel_requested)
        self.server = server
        self.peer: Identity | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        peername = transport.get_extra_info("peername")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        try:
            if alpn != ALPN_HBONE:
                raise HboneError(f"client offered no ALPN {ALPN_HBONE!r} (got {alpn!r})")
            self.peer = peer_identity(ssl_object)
        except (HboneError, PeerIdentityError) as error:
            log.warning("refusing HBONE connection from %s: %s", peername, error)
            self.server.stats.connections_refused += 1
            self._lost = True
            cast(asyncio.Transport, transport).abort()
            return
        self.server.stats.connections_accepted += 1
        super().connection_made(transport)


class _NativeServerSession(NativeSession):
    """A server-side session on the native data path; the server checks ALPN and peer."""

    def __init__(self, settings: TunnelSettings) -> None:
        super().__init__(settings, server_side=True)
        self.peer: Identity | None = None


async def _bounded(connect: Awaitable[socket.socket], timeout: float) -> socket.socket:
    """`await connect`, but no longer than `timeout` once it has to wait: a connect that
    completes at once (a workload on this node) costs no timer, task or future."""
    coro = cast("Coroutine[Any, Any, socket.socket]", connect)
    outcome = run_now(coro)
    if not isinstance(outcome, Pending):
        return outcome
    return await asyncio.wait_for(outcome.resume(), timeout)
