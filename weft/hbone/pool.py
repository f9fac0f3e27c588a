"""HbonePool: reuse TLS connections so that a new tunnel costs an HTTP/2 stream, not a handshake."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from weft.hbone.connection import ClientConnection, TunnelSettings
from weft.hbone.errors import HboneError, TunnelUnavailableError
from weft.hbone.native_session import (
    EndCallback,
    NativeSession,
    NativeStream,
    ResponseCallback,
    check_data_path,
    open_native_session,
)
from weft.hbone.session import TunnelSession
from weft.hbone.stream import HboneStream
from weft.identity import Identity
from weft.tls import ALPN_HBONE, PeerIdentityError, peer_identity, peer_identity_der

# The SSLContext that presents `source`'s SVID; the agent keeps one per local workload identity.
ClientContextFor = Callable[[Identity], ssl.SSLContext]
PeerAddress = tuple[str, int]


@dataclass(frozen=True)
class PoolKey:
    """Tunnels share a connection only if source, destination identity and peer all match."""

    source: Identity
    destination: Identity
    peer: PeerAddress


@dataclass
class PoolStats:
    handshakes: int = 0  # TLS connections opened
    streams_opened: int = 0


class HbonePool:
    """Client side of HBONE: pooled mTLS connections, up to `max_streams` tunnels each."""

    def __init__(
        self,
        client_context: ClientContextFor,
        *,
        max_streams: int = 100,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        response_timeout: float = 10.0,
        settings: TunnelSettings | None = None,
        data_path: str = "python",
    ) -> None:
        self.client_context = client_context
        # "native": connections run on weft._native (C moves the bytes), see native_session.
        self.data_path = check_data_path(data_path)
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        # The peer answers a CONNECT after its policy check and its own TCP connect.
        self.response_timeout = response_timeout
        self.settings = settings or TunnelSettings(max_concurrent_streams=max_streams)
        self.stats = PoolStats()
        self._connections: dict[PoolKey, list[_PooledConnection]] = {}

    def connection_count(self, key: PoolKey | None = None) -> int:
        """Open (or opening) TLS connections, for one key or in total."""
        if key is not None:
            return len(self._connections.get(key, []))
        return sum(len(connections) for connections in self._connections.values())

    async def open_stream(
        self,
        source: Identity,
        destination: Identity,
        peer: PeerAddress,
        authority: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> HboneStream:
        """Open a CONNECT tunnel to `authority` via `peer`, reusing a pooled connection if any.

        Raises TunnelRefusedError (the peer answered 401/503/400) or TunnelUnavailableError
        (no connection could be made, or the peer is not `destination`).
        """
        key = PoolKey(source, destination, peer)
        connection = self._connection_with_room(key) or self._dial(key)
        connection.reserve()
        try:
            session = connection.session  # set once the handshake is done
            if session is None:  # shielded: one caller's cancel must not cancel the handshake
                session = await asyncio.shield(connection.ready)
            # asyncio.timeout, unlike wait_for, costs no extra task per tunnel.
            async with asyncio.timeout(self.response_timeout):
                stream = await session.open_tunnel(authority, headers)
        except TimeoutError:
            connection.release()
            raise TunnelUnavailableError(
                f"{peer[0]}:{peer[1]} did not answer the CONNECT to {authority} "
                f"within {self.response_timeout:g} s",
                hint="the destination agent is overloaded or stuck; see its log",
            ) from None
        except BaseException:
            connection.release()
            raise
        self.stats.streams_opened += 1
        stream.add_finished_callback(lambda _: connection.release())
        return stream

    def open_socket_now(
        self,
        key: PoolKey,
        authority: str,
        headers: tuple[tuple[str, str], ...],
        fd: int,
        *,
        on_response: ResponseCallback,
        on_end: EndCallback,
        nodelay_set: bool = False,
    ) -> NativeStream | None:
        """The native fast path of open_stream() + relay: if a pooled connection is ready and
        has room, open the tunnel on it with the TCP socket `fd` (C owns it from then on and
        splices it on 200) and return the stream; None (fd untouched) otherwise, for the caller
        to open_stream() and wait. C calls on_response once, then on_end once. `nodelay_set`:
        `fd` has TCP_NODELAY already (inherited from its listener)."""
        for connection in self._connections.get(key, ()):
            session = connection.session
            # a handshaken native session: has_room() then asks the pool's and C's limits
            if isinstance(session, NativeSession) and connection.has_room():
                stream = session.open_socket(
                    authority, headers, fd, on_response, on_end, nodelay_set=nodelay_set
                )
                connection.reserve()
                self.stats.streams_opened += 1
                stream.add_finished_callback(connection.release_stream)
                return stream
        return None

    async def close(self) -> None:
        """Close every pooled connection (their tunnels are reset)."""
        connections = [c for group in self._connections.values() for c in group]
        for connection in connections:
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in connections), return_exceptions=True)

    def _connection_with_room(self, key: PoolKey) -> _PooledConnection | None:
        for connection in self._connections.get(key, []):
            if connection.has_room():
                return connection
        return None

    def _dial(self, key: PoolKey) -> _PooledConnection:
        connection = _PooledConnection(self, key)
        self._connections.setdefault(key, []).append(connection)
        return connection

    def _forget(self, connection: _PooledConnection) -> None:
        group = self._connections.get(connection.key, [])
        if connection in group:
            group.remove(connection)
        if not group:
            self._connections.pop(connection.key, None)


class _PooledConnection:
    """One pooled TLS connection: its handshake, its reserved stream slots and its idle timer."""

    def __init__(self, pool: HbonePool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.reserved = 0
        self.session: TunnelSession | NativeSession | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.ready: asyncio.Task[TunnelSession | NativeSession] = (
            asyncio.get_running_loop().create_task(self._connect())
        )
        # The handshake's outcome is read by every waiting open_stream(); nobody may be left
        # with an unretrieved exception when all of them were cancelled.
        self.ready.add_done_callback(self._on_ready)

    def has_room(self) -> bool:
        if self._closing or self.reserved >= self.pool.max_streams:
            return False
        if self.session is None:
            return not self.ready.done()  # still handshaking: streams may queue on it
        return self.session.has_room()

    def reserve(self) -> None:
        self.reserved += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def release_stream(self, stream: HboneStream) -> None:
        self.release()

    def release(self) -> None:
        self.reserved -= 1
        if self.reserved == 0:
            self._start_idle_timer()

    def close(self) -> None:
        self._closing = True
        self.pool._forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.session is not None:
            self.session.close()
        elif not self.ready.done():
            self.ready.cancel()

    async def wait_closed(self) -> None:
        if self.session is not None:
            await self.session.closed

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self.reserved == 0:
            self.close()

    def _on_ready(self, ready: asyncio.Task[TunnelSession | NativeSession]) -> None:
        if ready.cancelled() or ready.exception() is not None:
            self._closing = True
            self.pool._forget(self)
            return
        self.session = ready.result()
        self.session.closed.add_done_callback(lambda _: self._on_session_closed())
        if self.reserved == 0:  # every open_stream() waiting on the handshake was cancelled
            self._start_idle_timer()

    def _start_idle_timer(self) -> None:
        if not self._closing and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.pool.idle_timeout, self._close_if_idle
            )

    def _on_session_closed(self) -> None:
        self._closing = True
        self.pool._forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    async def _connect(self) -> TunnelSession | NativeSession:
        source, destination, (host, port) = self.key.source, self.key.destination, self.key.peer
        loop = asyncio.get_running_loop()
        if self.pool.data_path == "native":
            return await self._connect_native()
        try:
            context = self.pool.client_context(source)
            transport, session = await asyncio.wait_for(
                loop.create_connection(
                    lambda: TunnelSession(ClientConnection(self.pool.settings)),
                    host,
                    port,
                    ssl=context,
                    server_hostname="",
                ),
                self.pool.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:  # ConnectionError is an OSError
            raise _unreachable(host, port, source, error) from error
        self.pool.stats.handshakes += 1
        try:
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            _check_peer(alpn, lambda: peer_identity(ssl_object), destination, host, port)
        except HboneError:
            transport.abort()
            raise
        return session

    async def _connect_native(self) -> NativeSession:
        """_connect() on the native data path: C does the TLS handshake and then the I/O."""
        source, destination, (host, port) = self.key.source, self.key.destination, self.key.peer
        try:
            context = self.pool.client_context(source)
            session = await open_native_session(
                context, host, port, self.pool.settings, self.pool.connect_timeout
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:  # ConnectionError is an OSError
            raise _unreachable(host, port, source, error) from error
        self.pool.stats.handshakes += 1
        try:
            _check_peer(
                session.alpn,
                lambda: peer_identity_der(session.peer_certificate),
                destination,
                host,
                port,
            )
        except HboneError:
            session.abort()
            raise
        session.start()
        return session


def _unreachable(
    host: str, port: int, source: Identity, error: Exception
) -> TunnelUnavailableError:
    return TunnelUnavailableError(
        f"cannot open HBONE to {host}:{port} as {source}: {error!r}",
        hint=f"check that the destination agent listens on {port} (HBONE) and that "
        "no network policy blocks it",
    )


def _check_peer(
    alpn: str | None,
    identity: Callable[[], Identity],
    destination: Identity,
    host: str,
    port: int,
) -> None:
    if alpn != ALPN_HBONE:
        raise TunnelUnavailableError(
            f"{host}:{port} did not agree to ALPN {ALPN_HBONE!r} (got {alpn!r})",
            hint=f"is {host}:{port} an HBONE listener (port 15008)?",
        )
    try:
        actual = identity()
    except PeerIdentityError as error:
        raise TunnelUnavailableError(f"{host}:{port}: {error.message}", hint=error.hint) from error
    if actual != destination:
        raise TunnelUnavailableError(
            f"{host}:{port} presented identity {actual}, expected {destination}",
            hint="the endpoint's workload moved or the peer is impersonating it; "
            "check the workload registry and the destination agent",
        )
