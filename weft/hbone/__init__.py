"""HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS, spoken by agents and waypoints.

`connection` is the sans-I/O protocol core (h2 underneath); `session`, `stream`, `server`, `pool`
and `relay` are the asyncio shell around it. Inbound (port 15008), an agent or waypoint runs

    server = HboneServer(weft.tls.server_context(svid, bundle), authorize, connect)
    await server.start("0.0.0.0", 15008)

where `authorize(peer_identity, authority, headers) -> bool` answers 401 when false and
`connect(authority) -> (reader, writer)` answers 503 when it raises OSError or LookupError.
Outbound, one pool per process reuses TLS connections per (source, destination, peer):

    stream = await pool.open_stream(source, destination, (node_ip, 15008), "10.1.2.3:8080")
    await relay(stream, app_reader, app_writer)

Both take `data_path="native"` to run their connections on weft._native (`native_session`): C
then speaks all of HTTP/2 (there is no h2 object) and owns each relayed stream's TCP socket; such
streams can only be relay()ed, or opened and answered with a socket in one call
(`HbonePool.open_socket_now`, `HboneServer(connect_socket=...)`). The node agent uses it by
default.
"""

from weft.hbone.connection import ClientConnection, ServerConnection, TunnelSettings
from weft.hbone.errors import (
    HboneError,
    StreamClosedError,
    StreamResetError,
    TunnelRefusedError,
    TunnelUnavailableError,
)
from weft.hbone.native_session import native_available
from weft.hbone.pool import HbonePool, PoolKey
from weft.hbone.relay import RelayResult, relay
from weft.hbone.server import HboneServer
from weft.hbone.stream import HboneStream

__all__ = [
    "ClientConnection",
    "HboneError",
    "HbonePool",
    "HboneServer",
    "HboneStream",
    "PoolKey",
    "RelayResult",
    "ServerConnection",
    "StreamClosedError",
    "StreamResetError",
    "TunnelRefusedError",
    "TunnelSettings",
    "TunnelUnavailableError",
    "native_available",
    "relay",
]
