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
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, ip_address
from typing import Protocol

from agent.addresses import address_text as _address_text
from agent.addresses import parse_address
from agent.bpf.maps import NodeMaps
from agent.state import NodeState, endpoints_in_order, workload_name
from agent.telemetry import ConnectionRecord, Telemetry
from agent.tunnel.kernel_splice import splice_connections
from agent.tunnel.pipe import pipe
from weft.hbone import HboneError, HbonePool, TunnelRefusedError, relay
from weft.hbone.accept import accept_descriptors, accept_waiting, listening_socket
from weft.hbone.native_session import NativeStream, unanswered_error
from weft.hbone.pool import PoolKey
from weft.hbone.relay import abort_socket, abort_tcp, relay_socket
from weft.hbone.run_now import Pending, in_task, run_now
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
        peer=(_address_text(endpoint.address), HBONE_PORT),
    )  # fmt: skip


# (peer, local) of an accepted connection -> (address, port, source cgroup id) it was meant for
OriginalDestination = Callable[
    [tuple[str, int], tuple[str, int]], tuple[IPv4Address, int, int] | None
]


class _Accepted:
    """One captured connection as accepted: a bare descriptor, made into a socket object only
    when a route needs one (an HBONE tunnel on the native data path hands the descriptor to C as
    it is) and into asyncio streams only for the routes that need them."""

    __slots__ = ("_sock", "family", "fd", "reader", "writer")

    def __init__(self, fd: int, family: int, sock: socket.socket | None = None) -> None:
        self.fd = fd  # non-blocking
        self.family = family
        self._sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            # SOCK_NONBLOCK: the object knows the descriptor is non-blocking (no ioctl)
            self._sock = socket.socket(
                self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, self.fd
            )
        return self._sock

    def handed_over(self) -> None:
        """C owns the descriptor now (or closed it): forget it without closing it."""
        if self._sock is not None:
            self._sock.detach()

    async def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
        return self.reader, self.writer

    def abort(self) -> None:
        """Close with RST, so the application sees the failure."""
        if self.writer is not None:
            abort_tcp(self.writer)
        else:
            abort_socket(self.sock)


class OutboundProxy:
    """The 15001 listener: one task per captured connection, accepted from a bare listening
    socket (no asyncio transport or streams until a route needs them)."""

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
        self._listener: socket.socket | None = None
        # The listener's own address when it is bound to one (not the wildcard): then every
        # connection it accepts has that local address (it is not IP_TRANSPARENT, and capture
        # rewrites connect() to it), so no getsockname() per connection.
        self._local_address: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._listener is not None, "start() the proxy first"
        return int(self._listener.getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        sock = listening_socket(host, port)
        # Set once here: Linux copies it to every socket accepted from this listener, so C
        # need not set it per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener = sock
        local = sock.getsockname()
        self._local_address = None if ip_address(local[0]).is_unspecified else (local[0], local[1])
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self) -> None:
        """The listener is readable: take every waiting connection."""
        assert self._listener is not None
        if not accept_descriptors(self._listener, self._start, "outbound"):
            accept_waiting(self._listener, self._start_socket, "outbound")

    def _start_socket(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """_start() for a socket object (accepted without weft._native)."""
        sock.setblocking(False)
        self._start(sock.fileno(), peer, sock)

    def _start(self, fd: int, peer: tuple[str, int], sock: socket.socket | None = None) -> None:
        """Serve one accepted connection, its descriptor non-blocking and TCP_NODELAY (from the
        listener)."""
        assert self._listener is not None
        accepted = _Accepted(fd, self._listener.family, sock)
        # Served within this callback as far as it goes without waiting (an HBONE tunnel on a
        # ready native connection goes all the way: no task per connection); a task goes on
        # from where it had to wait.
        outcome = run_now(self._handle(accepted, peer))
        if isinstance(outcome, Pending):
            task = asyncio.get_running_loop().create_task(outcome.resume())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, accepted: _Accepted, peer: tuple[str, int]) -> None:
        local = self._local_address or accepted.sock.getsockname()
        record = ConnectionRecord("outbound", f"{peer[0]}:{peer[1]}", "?")
        handed_off = False  # C reports the end (the record is closed then)
        try:
            handed_off = await self._serve(accepted, peer, (local[0], local[1]), record)
        except Exception as err:
            log.exception("outbound connection from %s failed", record.src)
            record.outcome, record.reason = "error", repr(err)
            accepted.abort()
        except asyncio.CancelledError:  # the proxy is closing
            accepted.abort()
            raise
        finally:
            if not handed_off:
                self._telemetry.connection_closed(record)

    async def _serve(
        self,
        accepted: _Accepted,
        peer: tuple[str, int],
        local: tuple[str, int],
        record: ConnectionRecord,
    ) -> bool:
        """Serve one accepted connection; True if C took it and will report its end."""
        original = self._original_destination(peer, local)
        if original is None:
            record.outcome, record.reason = "error", "original destination not recorded"
            accepted.abort()
            return False
        address, port, cgroup_id = original
        record.dst = f"{_address_text(address)}:{port}"
        state = self._state()
        source_ip = parse_address(peer[0])
        source = state.workload_at(source_ip)
        if source is None or source.node != state.node:
            record.outcome, record.reason = "error", "source is not a workload of this node"
            accepted.abort()
            return False
        source_identity = state.identity(source)
        record.source_workload = source.metadata.name
        record.source_namespace = source.metadata.namespace
        record.source_principal = source_identity.uri
        route = plan_route(state, self.balancer, address, port, source_ip)
        record.route = route.kind._value_  # the value, without Enum's property (two calls)
        record.destination_service = route.service
        record.endpoint = f"{_address_text(route.address)}:{route.port}"
        if route.endpoint is not None:
            record.destination_workload = route.endpoint.metadata.name
            record.destination_namespace = route.endpoint.metadata.namespace
        if route.kind == RouteKind.REFUSED:
            record.outcome, record.reason = "unavailable", route.reason
            accepted.abort()
            return False
        if route.kind == RouteKind.PASSTHROUGH:
            record.security = "none"
            await in_task()
            await self._plain(accepted, route, record)
        elif route.kind == RouteKind.SAME_NODE:
            assert route.endpoint is not None
            record.security = "mutual_tls"  # authorized as if it had crossed HBONE
            record.destination_principal = state.identity(route.endpoint).uri
            await in_task()
            upstream = await self._local.connect_local(
                route.endpoint, source_identity, source_ip, route.port, record
            )
            if upstream is None:
                accepted.abort()
                return False
            self._telemetry.connection_opened(record)
            client = await accepted.streams()
            maps = self._splice_maps()
            if maps is not None:
                record.route = "same-node-splice"
                result = await splice_connections(maps, client, upstream, cgroup_id)
            else:
                result = await pipe(client, upstream)
            record.sent_bytes, record.received_bytes = result.a_to_b, result.b_to_a
            record.outcome = "reset" if result.reset else "ok"
        elif route.kind == RouteKind.WAYPOINT:
            assert route.waypoint is not None
            waypoint_identity = Identity.for_workload(
                route.waypoint.metadata.namespace, route.waypoint.service_account,
                state.trust_domain,
            )  # fmt: skip
            return await self._hbone(
                accepted, state=state, source=source_identity, route=route, peer=peer,
                record=record, destination=waypoint_identity,
            )  # fmt: skip
        else:
            return await self._hbone(
                accepted, state=state, source=source_identity, route=route, peer=peer,
                record=record,
            )  # fmt: skip
        return False

    async def _plain(self, accepted: _Accepted, route: Route, record: ConnectionRecord) -> None:
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(str(route.address), route.port), 5
            )
        except (OSError, TimeoutError) as err:
            record.outcome, record.reason = "unavailable", repr(err)
            accepted.abort()
            return
        self._telemetry.connection_opened(record)
        result = await pipe(await accepted.streams(), upstream)
        record.sent_bytes, record.received_bytes = result.a_to_b, result.b_to_a
        record.outcome = "reset" if result.reset else "ok"

    async def _hbone(
        self,
        accepted: _Accepted,
        *,
        state: NodeState,
        source: Identity,
        route: Route,
        peer: tuple[str, int],
        record: ConnectionRecord,
        destination: Identity | None = None,
    ) -> bool:
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
        if accepted.writer is None and self._pool.data_path == "native":
            key = PoolKey(source, destination, route.peer)
            if self._open_now(accepted, key, authority, headers, record):
                return True
        await in_task()
        try:
            stream = await self._pool.open_stream(
                source, destination, route.peer, authority, headers
            )
        except (HboneError, LookupError) as err:
            record.outcome, record.reason = "unavailable", str(err)
            if isinstance(err, TunnelRefusedError) and err.status == 401:
                record.outcome = "denied"
            accepted.abort()
            return False
        self._telemetry.connection_opened(record)
        if isinstance(stream, NativeStream) and accepted.writer is None:
            # C takes the accepted socket as it is: no asyncio transport was ever made for it.
            result = await relay_socket(stream, accepted.sock)
        else:
            result = await relay(stream, *await accepted.streams())
        record.sent_bytes, record.received_bytes = result.bytes_to_tunnel, result.bytes_from_tunnel
        record.outcome = "reset" if result.reset else "ok"
        return False

    def _open_now(
        self,
        accepted: _Accepted,
        key: PoolKey,
        authority: str,
        headers: tuple[tuple[str, str], ...],
        record: ConnectionRecord,
    ) -> bool:
        """The native fast path: a ready pooled connection with room takes the accepted socket
        in one call (C sends the CONNECT and the client's first bytes together, splices on 200,
        resets the client on any other answer). True if it did; the record is then completed
        and closed by C's two callbacks."""
        telemetry = self._telemetry
        opened = False

        def on_response(status: int, error_code: int) -> None:
            nonlocal opened
            if status == 200:
                opened = True
                telemetry.connection_opened(record)
                return
            error = (
                TunnelRefusedError(authority, status) if status else unanswered_error(error_code)
            )
            record.outcome = "denied" if status == 401 else "unavailable"
            record.reason = str(error)

        def on_end(to_tunnel: int, from_tunnel: int, reset: bool) -> None:
            record.sent_bytes, record.received_bytes = to_tunnel, from_tunnel
            if opened:
                record.outcome = "reset" if reset else "ok"
            telemetry.connection_closed(record)

        try:
            stream = self._pool.open_socket_now(
                key, authority, headers, accepted.fd, on_response=on_response, on_end=on_end,
                nodelay_set=True,  # inherited from the listener
            )  # fmt: skip
        except HboneError as err:  # C closed the socket
            accepted.handed_over()
            record.outcome, record.reason = "unavailable", str(err)
            telemetry.connection_closed(record)
            return True
        if stream is None:
            return False
        accepted.handed_over()  # C owns the descriptor now
        return True


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
