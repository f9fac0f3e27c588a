"""HBONE out: reach a backend endpoint through a CONNECT tunnel to the node agent in front of it.

The waypoint opens the tunnel with its own SVID (as Istio's waypoint does), to the destination
node's agent on 15008, with `:authority` = the endpoint's `ip:port`; the agent checks that SVID
against its L4 policy. Tunnels come from weft.hbone's pool, so many requests' connections share
one TLS connection. The proxy's general path reads and writes each tunnel through a
TunnelChannel attached to its stream (no socket pair, no relay in between); the fast path's
keep-alive backend connections (`dial`) are tunnels driving a FastUpstream through a
StreamTransport. (The original client's address is not sent
in `forwarded` yet: connect() learns only the endpoint.) Each CONNECT carries W3C `baggage` naming
the waypoint's namespace and workload, as source agents do, so destination agents label its
connections with a source workload instead of "unknown".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from waypoint.stream_transport import StreamTransport
from waypoint.tunnel_channel import TunnelChannel
from weft.hbone import HboneError, HbonePool, HboneStream
from weft.identity import Identity


@dataclass(frozen=True)
class EndpointRoute:
    """How to reach one endpoint: the HBONE peer (its node agent) and the identity it must prove."""

    peer: tuple[str, int]  # the node agent's address and HBONE port
    peer_identity: Identity  # the agent's SVID identity, checked during the TLS handshake


P = TypeVar("P", bound=asyncio.Protocol)

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
        self._open: dict[HboneStream, TunnelChannel] = {}  # reset by close()
        self._dialled: dict[HboneStream, StreamTransport] = {}  # the fast path's; the same

    async def connect(self, endpoint: str) -> tuple[TunnelChannel, TunnelChannel]:
        route = self.resolve(endpoint)
        if route is None:
            raise LookupError(f"endpoint {endpoint} has no node agent known to this waypoint")
        try:
            stream = await self.pool.open_stream(
                self.source, route.peer_identity, route.peer, endpoint, self.headers
            )
        except HboneError as error:
            raise ConnectionRefusedError(str(error)) from error
        channel = self._open[stream] = TunnelChannel(stream)
        stream.add_finished_callback(self._forget)
        return channel, channel

    async def dial(self, endpoint: str, factory: Callable[[], P]) -> P:
        """The fast path's connect: a tunnel to `endpoint` driving the protocol `factory` makes
        through a StreamTransport (no task, no channel). ConnectionRefusedError if it fails."""
        stream = await self._open_stream(endpoint)
        protocol = factory()
        transport = self._dialled[stream] = StreamTransport(stream, protocol)
        stream.add_finished_callback(self._forget)
        transport.start()
        return protocol

    async def _open_stream(self, endpoint: str) -> HboneStream:
        route = self.resolve(endpoint)
        if route is None:
            raise ConnectionRefusedError(
                f"endpoint {endpoint} has no node agent known to this waypoint"
            )
        try:
            return await self.pool.open_stream(
                self.source, route.peer_identity, route.peer, endpoint, self.headers
            )
        except HboneError as error:
            raise ConnectionRefusedError(str(error)) from error

    def _forget(self, stream: HboneStream) -> None:
        self._open.pop(stream, None)
        self._dialled.pop(stream, None)

    async def close(self) -> None:
        """Reset the tunnels still open (the proxy closes those it is done with itself)."""
        for channel in list(self._open.values()):
            channel.abort()
        self._open.clear()
        for transport in list(self._dialled.values()):
            transport.abort()
        self._dialled.clear()
