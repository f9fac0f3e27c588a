"""HBONE in: the waypoint's port 15008, where each mTLS CONNECT stream is one client connection.

weft.hbone's server terminates TLS, checks ALPN and the peer's SPIFFE ID and parses each CONNECT;
here every tunnel's target is the proxy itself, so the stream is served where it arrives, with
the tunnel's facts (the peer's SVID, its VIP:port target, the original source address from
`forwarded`): by the fast path's FastFront over a StreamTransport (requests relayed from the
stream's callbacks; the first it cannot serve hands the tunnel to the general path), or, with
the fast path off, by the general path through a TunnelChannel (no socket pair, no relay).
L7 policy is decided per request by the proxy; the tunnel itself is refused (503) only when the
waypoint serves no such destination.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl

from waypoint.downstream import Downstream
from waypoint.fastpath import FastFront
from waypoint.proxy import WaypointProxy
from waypoint.stream_transport import StreamTransport
from waypoint.tunnel_channel import TunnelChannel
from weft.hbone import HboneServer, HboneStream, StreamClosedError, TunnelSettings
from weft.hbone.events import TunnelRequested
from weft.hbone.session import TunnelSession
from weft.identity import Identity

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]

# RFC 7239 `for=` node: a bare IPv4, or a quoted "[v6]" / "ip:port".
_FORWARDED_FOR = re.compile(r'(?i)(?:^|[;,\s])for="?\[?([0-9A-Fa-f.:]+?)\]?(?::\d+)?"?(?:[;,\s]|$)')


def forwarded_for(headers: Headers) -> str | None:
    """The first `for=` address of the `forwarded` header, or None."""
    for name, value in headers:
        if name.lower() == "forwarded":
            matched = _FORWARDED_FOR.search(value)
            if matched is not None:
                return matched.group(1)
    return None


class HboneInbound:
    """Accepts HBONE tunnels and serves each with `proxy.serve_connection`."""

    def __init__(
        self,
        proxy: WaypointProxy,
        ssl_context: ssl.SSLContext,
        settings: TunnelSettings | None = None,
    ) -> None:
        self.proxy = proxy
        self.server = _ProxyServer(proxy, ssl_context, settings)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, host: str = "127.0.0.1", port: int = 15008) -> None:
        await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()  # cancels the tunnels' tasks: each resets its stream


class _ProxyServer(HboneServer):
    """weft.hbone's server whose tunnels the proxy serves in place of connect() and relay().

    It overrides the server's per-stream hook (`serve_stream`, Python data path only): the
    stream is handed to the proxy instead of being spliced to a TCP connection. Every
    authenticated peer may open a tunnel (what it may do is L7 policy, per request), so
    authorize() is not consulted.
    """

    def __init__(
        self, proxy: WaypointProxy, ssl_context: ssl.SSLContext, settings: TunnelSettings | None
    ) -> None:
        super().__init__(ssl_context, _allow, _no_connect, settings=settings)
        self.proxy = proxy

    async def serve_stream(
        self,
        session: TunnelSession,
        peer: Identity,
        stream: HboneStream,
        request: TunnelRequested,
    ) -> None:
        if not self.proxy.serves(request.authority):
            log.info("HBONE target %s: this waypoint serves no such service", request.authority)
            self.stats.tunnels_unavailable += 1
            session.reject(stream, 503)
            return
        try:
            session.accept(stream)
        except StreamClosedError:  # the client gave up already
            return
        self.stats.tunnels_opened += 1
        downstream = Downstream(forwarded_for(request.headers), peer, request.authority)
        if self.proxy.fast_path:
            await _serve_fast(self.proxy, stream, downstream)
            return
        channel = TunnelChannel(stream)
        try:
            await self.proxy.serve_connection(channel, channel, downstream)
        except asyncio.CancelledError:  # the server is closing: the tunnel is reset
            channel.abort()
            raise
        except Exception:
            # serve_connection() answers every client and backend failure itself; anything
            # else is a bug in it, and must cost this tunnel only.
            log.exception("serving the HBONE tunnel to %s failed", request.authority)
            channel.abort()


async def _serve_fast(proxy: WaypointProxy, stream: HboneStream, downstream: Downstream) -> None:
    """The tunnel served by the fast path from the stream's callbacks (its first request it
    cannot serve hands the tunnel to the general path); returns once the tunnel is closed."""
    transport = StreamTransport(stream, FastFront(proxy, downstream))
    transport.start()
    try:
        await transport.lost
    except asyncio.CancelledError:  # the server is closing: the tunnel is reset
        transport.abort()
        raise


async def _allow(peer: Identity, authority: str, headers: Headers) -> bool:
    return True  # never called: _ProxyServer serves its tunnels itself


async def _no_connect(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    raise LookupError(f"the waypoint serves {authority} itself; nothing to connect to")
