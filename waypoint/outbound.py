"""HBONE out: reach a backend endpoint through a CONNECT tunnel to the node agent in front of it.

The waypoint opens the tunnel with its own SVID (as Istio's waypoint does), to the destination
node's agent on 15008, with `:authority` = the endpoint's `ip:port`; the agent checks that SVID
against its L4 policy. Tunnels come from weft.hbone's pool, so many requests' connections share
one TLS connection. The proxy reads and writes plain asyncio streams; a socket pair and
weft.hbone's relay join such a stream to the tunnel. (The original client's address is not sent
in `forwarded` yet: connect() learns only the endpoint.) Each CONNECT carries W3C `baggage` naming
the waypoint's namespace and workload, as source agents do, so destination agents label its
connections with a source workload instead of "unknown".
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

from weft.hbone import HboneError, HbonePool, relay
from weft.identity import Identity


@dataclass(frozen=True)
class EndpointRoute:
    """How to reach one endpoint: the HBONE peer (its node agent) and the identity it must prove."""

    peer: tuple[str, int]  # the node agent's address and HBONE port
    peer_identity: Identity  # the agent's SVID identity, checked during the TLS handshake


# resolve(endpoint "ip:port") -> how to reach it; None if the endpoint is not in the mesh.
ResolveEndpoint = Callable[[str], EndpointRoute | None]


class HboneOutbound:
    """A `connect(endpoint)` for the proxy's upstream side that tunnels over HBONE."""

    def __init__(
        self, pool: HbonePool, source: Identity, resolve: ResolveEndpoint, workload: str = ""
    ) -> None:
        self.pool = pool
        self.source = source
        self.resolve = resolve
        # the key ztunnel reads first for a workload's name; Istio names a waypoint's deployment
        # after its Gateway, as the lab names a waypoint's workload after its Waypoint resource
        self.headers: tuple[tuple[str, str], ...] = (
            (
                (
                    "baggage",
                    f"k8s.namespace.name={source.namespace},k8s.deployment.name={workload}",
                ),
            )
            if workload
            else ()
        )
        self._relays: set[asyncio.Task[object]] = set()

    async def connect(self, endpoint: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        route = self.resolve(endpoint)
        if route is None:
            raise LookupError(f"endpoint {endpoint} has no node agent known to this waypoint")
        try:
            stream = await self.pool.open_stream(
                self.source, route.peer_identity, route.peer, endpoint, self.headers
            )
        except HboneError as error:
            raise ConnectionRefusedError(str(error)) from error
        proxy_end, tunnel_end = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=tunnel_end)
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            relay(stream, reader, writer)
        )
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return await asyncio.open_connection(sock=proxy_end)

    async def close(self) -> None:
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
