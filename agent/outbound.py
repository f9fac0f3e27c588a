"""Outbound (port 15001): where a captured connection goes, and the asyncio shell taking it there.

`plan_route` is the pure part, in ztunnel's vocabulary: the original destination (a service VIP
or a workload address) -> a service port -> an endpoint picked by the load balancer -> a route:
same node (authorize, connect locally), another node (HBONE to its agent on 15008), or outside
the mesh (plain TCP). Anything it cannot place fails closed, never bypassing the mesh.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Protocol

from agent.addresses import address_text, parse_address
from agent.bpf.maps import NodeMaps
from agent.state import NodeState, endpoints_in_order, workload_name
from agent.telemetry import ConnectionRecord, Telemetry, accounted
from agent.tunnel.kernel_splice import splice_connections
from agent.tunnel.pipe import pipe
from weft.hbone import HboneError, HbonePool, TunnelRefusedError, relay
from weft.hbone.relay import abort_tcp
from weft.identity import Identity
from weft.model import DestinationRule, Kind, LoadBalancerPolicy, Waypoint, Workload

log = logging.getLogger(__name__)

HBONE_PORT = 15008


class RouteKind(StrEnum):
    SAME_NODE = "same-node"
    HBONE = "hbone"
    WAYPOINT = "waypoint"
    PASSTHROUGH = "passthrough"
    REFUSED = "refused"


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    address: IPv4Address  # where to connect: the endpoint (or the HBONE peer's pod address)
    port: int
    endpoint: Workload | None = None
    service: str = ""  # "<name>.<namespace>" when the destination was a service
    peer: tuple[str, int] | None = None  # HBONE: the destination node agent
    reason: str = ""
    waypoint: Waypoint | None = None  # WAYPOINT: tunnel to it with the VIP as authority


class LoadBalancer:
    """Pick an endpoint per service: round robin by default, random when a DestinationRule asks."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._rng = rng or random.Random()

    def pick(
        self, key: str, endpoints: tuple[Workload, ...], policy: LoadBalancerPolicy
    ) -> Workload:
        if policy == LoadBalancerPolicy.RANDOM:
            return self._rng.choice(endpoints)
        counter = self._counters.setdefault(key, itertools.count())
        return endpoints[next(counter) % len(endpoints)]


def load_balancer_policy(state: NodeState, service: str, namespace: str) -> LoadBalancerPolicy:
    hosts = {service, f"{service}.{namespace}", f"{service}.{namespace}.svc.cluster.local"}
    for rule in state.of_kind(Kind.DESTINATION_RULE):
        if isinstance(rule, DestinationRule) and rule.host in hosts:
            lb = rule.traffic_policy.load_balancer
            simple = getattr(lb, "simple", None) if lb is not None else None
            if isinstance(simple, LoadBalancerPolicy):
                return simple
    return LoadBalancerPolicy.ROUND_ROBIN


def plan_route(
    state: NodeState,
    balancer: LoadBalancer,
    address: IPv4Address,
    port: int,
    source: IPv4Address | None = None,
) -> Route:
    """Where a captured connection from `source` to address:port goes."""
    service_name = ""
    target = state.service_target(address, port)
    if target is not None:
        service = target.service
        service_name = f"{service.metadata.name}.{service.metadata.namespace}"
        waypoint = state.waypoint_for(service)
        # The waypoint's own connections to the service's endpoints must not come back to it.
        if waypoint is not None and waypoint.address != source:
            return Route(
                RouteKind.WAYPOINT, address, port, service=service_name,
                peer=(str(waypoint.address), waypoint.port), waypoint=waypoint,
            )  # fmt: skip
        endpoints = endpoints_in_order(target.endpoints)
        if not endpoints:
            return Route(
                RouteKind.REFUSED, address, port, service=service_name,
                reason=f"service {service_name} has no endpoints",
            )  # fmt: skip
        policy = load_balancer_policy(state, service.metadata.name, service.metadata.namespace)
        endpoint = balancer.pick(f"{service_name}:{port}", endpoints, policy)
        port = target.port.target_port or port
    else:
        found = state.workload_at(address)
        if found is None:
            return Route(RouteKind.PASSTHROUGH, address, port, reason="not a mesh address")
        endpoint = found
    if not state.in_mesh(endpoint):
        return Route(
            RouteKind.PASSTHROUGH, endpoint.address, port, endpoint, service_name,
            reason=f"{workload_name(endpoint)} is not in the mesh",
        )  # fmt: skip
    if endpoint.node == state.node:
        return Route(RouteKind.SAME_NODE, endpoint.address, port, endpoint, service_name)
    # As in Istio ambient, the tunnel is addressed to the endpoint's own address on 15008; its
    # node delivers that port to its agent (agent.tunnel.delivery), so no node table is needed.
    return Route(
        RouteKind.HBONE, endpoint.address, port, endpoint, service_name,
        peer=(str(endpoint.address), HBONE_PORT),
    )  # fmt: skip


# (peer, local) of an accepted connection -> (address, port, source cgroup id) it was meant for
OriginalDestination = Callable[
    [tuple[str, int], tuple[str, int]], tuple[IPv4Address, int, int] | None
]


class OutboundProxy:
    """The 15001 listener: one task per captured connection."""

    def __init__(
        self,
        state: Callable[[], NodeState],
        original_destination: OriginalDestination,
        pool: HbonePool,
        local_inbound: LocalInbound,
        telemetry: Telemetry,
        *,
        splice_maps: Callable[[], NodeMaps | None] = lambda: None,
    ) -> None:
        self._splice_maps = splice_maps
        self._state = state
        self._original_destination = original_destination
        self._pool = pool
        self._local = local_inbound
        self._telemetry = telemetry
        telemetry.track_pool(pool.stats)
        self.balancer = LoadBalancer()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self.handle, host, port, reuse_address=True, backlog=1024
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        record = ConnectionRecord("outbound", f"{peer[0]}:{peer[1]}", "?")
        await accounted(
            self._telemetry,
            record,
            writer,
            self._serve(reader, writer, (peer[0], peer[1]), (local[0], local[1]), record),
        )

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: tuple[str, int],
        local: tuple[str, int],
        record: ConnectionRecord,
    ) -> None:
        original = self._original_destination(peer, local)
        if original is None:
            record.outcome, record.reason = "error", "original destination not recorded"
            abort_tcp(writer)
            return
        address, port, cgroup_id = original
        record.dst = f"{address_text(address)}:{port}"
        state = self._state()
        source_ip = parse_address(peer[0])
        source = state.workload_at(source_ip)
        if source is None or source.node != state.node:
            record.outcome, record.reason = "error", "source is not a workload of this node"
            abort_tcp(writer)
            return
        source_identity = state.identity(source)
        record.source_workload = source.metadata.name
        record.source_namespace = source.metadata.namespace
        record.source_principal = source_identity.uri
        route = plan_route(state, self.balancer, address, port, source_ip)
        record.route = route.kind.value
        record.destination_service = route.service
        record.endpoint = f"{address_text(route.address)}:{route.port}"
        if route.endpoint is not None:
            record.destination_workload = route.endpoint.metadata.name
            record.destination_namespace = route.endpoint.metadata.namespace
        if route.kind == RouteKind.REFUSED:
            record.outcome, record.reason = "unavailable", route.reason
            abort_tcp(writer)
            return
        if route.kind == RouteKind.PASSTHROUGH:
            record.security = "none"
            await self._plain(reader, writer, route, record)
        elif route.kind == RouteKind.SAME_NODE:
            assert route.endpoint is not None
            record.security = "mutual_tls"  # authorized as if it had crossed HBONE
            record.destination_principal = state.identity(route.endpoint).uri
            upstream = await self._local.connect_local(
                route.endpoint, source_identity, source_ip, route.port, record
            )
            if upstream is None:
                abort_tcp(writer)
                return
            self._telemetry.connection_opened(record)
            maps = self._splice_maps()
            if maps is not None:
                record.route = "same-node-splice"
                result = await splice_connections(maps, (reader, writer), upstream, cgroup_id)
            else:
                result = await pipe((reader, writer), upstream)
            record.sent_bytes, record.received_bytes = result.a_to_b, result.b_to_a
            record.outcome = "reset" if result.reset else "ok"
        elif route.kind == RouteKind.WAYPOINT:
            assert route.waypoint is not None
            waypoint_identity = Identity.for_workload(
                route.waypoint.metadata.namespace, route.waypoint.service_account,
                state.trust_domain,
            )  # fmt: skip
            await self._hbone(
                reader, writer, state=state, source=source_identity, route=route, peer=peer,
                record=record, destination=waypoint_identity,
            )  # fmt: skip
        else:
            await self._hbone(
                reader, writer, state=state, source=source_identity, route=route, peer=peer,
                record=record,
            )  # fmt: skip

    async def _plain(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: Route,
        record: ConnectionRecord,
    ) -> None:
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(str(route.address), route.port), 5
            )
        except (OSError, TimeoutError) as err:
            record.outcome, record.reason = "unavailable", repr(err)
            abort_tcp(writer)
            return
        self._telemetry.connection_opened(record)
        result = await pipe((reader, writer), upstream)
        record.sent_bytes, record.received_bytes = result.a_to_b, result.b_to_a
        record.outcome = "reset" if result.reset else "ok"

    async def _hbone(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        state: NodeState,
        source: Identity,
        route: Route,
        peer: tuple[str, int],
        record: ConnectionRecord,
        destination: Identity | None = None,
    ) -> None:
        assert route.peer is not None
        if destination is None:
            assert route.endpoint is not None
            destination = state.identity(route.endpoint)
        record.security = "mutual_tls"
        record.destination_principal = destination.uri
        authority = record.endpoint  # the route's address:port
        # baggage names the source workload for the destination's telemetry, as ztunnel's does:
        # the destination node is not told about workloads that are no service's endpoint.
        headers = (
            ("forwarded", f"for={peer[0]}"),
            (
                "baggage",
                f"k8s.namespace.name={record.source_namespace},"
                f"k8s.pod.name={record.source_workload}",
            ),
        )
        try:
            stream = await self._pool.open_stream(
                source, destination, route.peer, authority, headers
            )
        except (HboneError, LookupError) as err:
            record.outcome, record.reason = "unavailable", str(err)
            if isinstance(err, TunnelRefusedError) and err.status == 401:
                record.outcome = "denied"
            abort_tcp(writer)
            return
        self._telemetry.connection_opened(record)
        result = await relay(stream, reader, writer)
        record.sent_bytes, record.received_bytes = result.bytes_to_tunnel, result.bytes_from_tunnel
        record.outcome = "reset" if result.reset else "ok"


class LocalInbound(Protocol):
    """What outbound needs from inbound for a same-node destination: authorize, then connect."""

    async def connect_local(
        self,
        endpoint: Workload,
        source: Identity,
        source_ip: IPv4Address,
        port: int,
        record: ConnectionRecord,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None: ...
