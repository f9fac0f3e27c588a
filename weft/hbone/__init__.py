"""HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS, spoken by agents and waypoints.

`connection` is the sans-I/O protocol core; `session`, `stream`, `server`, `pool` and `relay` are
the asyncio shell around it.
"""

from weft.hbone.connection import ClientConnection, ServerConnection, TunnelSettings
from weft.hbone.errors import (
    HboneError,
    StreamClosedError,
    StreamResetError,
    TunnelRefusedError,
    TunnelUnavailableError,
)
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
    "relay",
]
