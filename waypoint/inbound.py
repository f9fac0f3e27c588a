"""HBONE in: the waypoint's port 15008, where each mTLS CONNECT stream is one client connection.

weft.hbone's server authorizes a tunnel, asks for a connection to its target and splices the two.
Here the "target" is the proxy itself: each tunnel gets one end of a socket pair, and the proxy
serves HTTP/1.1 on the other end with the tunnel's facts (the peer's SVID, its VIP:port target,
the original source address from `forwarded`). L7 policy is decided per request by the proxy;
the tunnel itself is refused (503) only when the waypoint serves no such destination.

The peer identity seen by authorize() reaches connect() through a context variable: the HBONE
server awaits both in the one task it runs per tunnel, so the value cannot leak across tunnels.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import socket
import ssl
from dataclasses import dataclass

from waypoint.downstream import Downstream
from waypoint.proxy import WaypointProxy
from weft.hbone import HboneServer, TunnelSettings
from weft.identity import Identity

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


@dataclass(frozen=True)
class _TunnelOrigin:
    identity: Identity
    source_ip: str | None


_origin: contextvars.ContextVar[_TunnelOrigin | None] = contextvars.ContextVar(
    "waypoint_tunnel_origin", default=None
)


class HboneInbound:
    """Accepts HBONE tunnels and hands each to `proxy.serve_connection`."""

    def __init__(
        self,
        proxy: WaypointProxy,
        ssl_context: ssl.SSLContext,
        settings: TunnelSettings | None = None,
    ) -> None:
        self.proxy = proxy
        self.server = HboneServer(ssl_context, self._authorize, self._connect, settings=settings)
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, host: str = "127.0.0.1", port: int = 15008) -> None:
        await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _authorize(self, peer: Identity, authority: str, headers: Headers) -> bool:
        # Every authenticated peer may open a tunnel; what it may do is L7 policy, per request.
        _origin.set(_TunnelOrigin(peer, forwarded_for(headers)))
        return True

    async def _connect(self, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        origin = _origin.get()
        if origin is None:
            raise LookupError("tunnel origin unknown: connect() ran outside its tunnel's task")
        if not self.proxy.serves(authority):
            raise LookupError(f"this waypoint serves no service at {authority}")
        tunnel_end, proxy_end = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=proxy_end)
        downstream = Downstream(origin.source_ip, origin.identity, authority)
        task = asyncio.get_running_loop().create_task(
            self.proxy.serve_connection(reader, writer, downstream)
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return await asyncio.open_connection(sock=tunnel_end)
