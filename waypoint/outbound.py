"""HBONE out: reach a backend endpoint through a CONNECT tunnel to the node agent in front of it.

The waypoint opens the tunnel with its own SVID (as Istio's waypoint does), to the destination
node's agent on 15008, with `:authority` = the endpoint's `ip:port`; the agent checks that SVID
against its L4 policy. Tunnels come from weft.hbone's pool, so many requests' connections share
one TLS connection. The proxy reads and writes each tunnel through a TunnelChannel attached to
its stream (no socket pair, no relay in between). (The original client's address is not sent
in `forwarded` yet: connect() learns only the endpoint.) Each CONNECT carries W3C `baggage` naming
the waypoint's namespace and workload, as source agents do, so destination agents label its
connections with a source workload instead of "unknown".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from waypoint.tunnel_channel import TunnelChannel
from weft.hbone import HboneError, HbonePool, HboneStream
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
        self._open: dict[HboneStream, TunnelChannel] = {}  # reset by close()

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

    def _forget(self, stream: HboneStream) -> None:
        self._open.pop(stream, None)

    async def close(self) -> None:
        """Reset the tunnels still open (the proxy closes those it is done with itself)."""
        for channel in list(self._open.values()):
            channel.abort()
        self._open.clear()
