"""The node's view of the mesh, built from the controller's Watch: snapshot then deltas.

Pure: `NodeState.apply(update)` returns the next state or raises StateRejectedError (the agent NACKs
and keeps the last good state). Lookups answer the questions the data path asks: which local
workload owns this address, which service owns this VIP:port, is a destination in the mesh.
A state never changes, so the data path's lookups are answered from indexes built once per
state (on first use) instead of scanning and sorting every resource per connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address

from weft.api.convert import ConfigUpdate
from weft.identity import DEFAULT_TRUST_DOMAIN, Identity
from weft.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    DataplaneMode,
    Kind,
    MutualTLSMode,
    Namespace,
    PeerAuthentication,
    ResourceKey,
    Service,
    ServicePort,
    Waypoint,
    WaypointTrafficType,
    Workload,
    WorkloadSelector,
)


class StateRejectedError(ValueError):
    """An update the agent cannot apply; the message goes back to the controller in the NACK."""


@dataclass(frozen=True)
class ServiceTarget:
    """A service port addressed by VIP:port, and the endpoints behind it."""

    service: Service
    port: ServicePort
    endpoints: tuple[Workload, ...]


@dataclass(frozen=True)
class NodeState:
    """Every resource the controller sent this node, at one version, with derived indexes."""

    node: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    version: int = 0
    resources: Mapping[ResourceKey, object] = field(default_factory=dict)

    # --- applying updates -----------------------------------------------------------------

    def apply(self, update: ConfigUpdate) -> NodeState:
        """The state after `update`; a snapshot replaces everything, a delta edits it."""
        if not update.snapshot and update.version <= self.version:
            raise StateRejectedError(
                f"version {update.version} is not newer than the applied {self.version}"
            )
        resources: dict[ResourceKey, object] = {} if update.snapshot else dict(self.resources)
        for key in update.removals:
            resources.pop(key, None)
        for received in update.upserts:
            resources[received.parsed.key] = received.parsed.resource
        next_state = NodeState(self.node, self.trust_domain, update.version, resources)
        next_state.check()
        return next_state

    def check(self) -> None:
        """Refuse a view the data path could not serve unambiguously."""
        owners: dict[IPv4Address, str] = {}
        for workload in self.workloads():
            name = f"{workload.metadata.namespace}/{workload.metadata.name}"
            other = owners.setdefault(workload.address, name)
            if other != name:
                raise StateRejectedError(
                    f"workloads {other} and {name} both claim address {workload.address}"
                )

    # --- lookups --------------------------------------------------------------------------
    # Built once per state on first use (the state is immutable); the lists returned are shared:
    # callers must not change them.

    @cached_property
    def _by_kind(self) -> dict[Kind, list[object]]:
        by_kind: dict[Kind, list[object]] = {}
        for key, resource in sorted(self.resources.items()):
            by_kind.setdefault(key.kind, []).append(resource)
        return by_kind

    @cached_property
    def _index(self) -> _Index:
        return _Index(self)

    def of_kind(self, kind: Kind) -> list[object]:
        return self._by_kind.get(kind, [])

    def workloads(self) -> list[Workload]:
        return self._index.workloads

    def services(self) -> list[Service]:
        return self._index.services

    def local_workloads(self) -> list[Workload]:
        return self._index.local_workloads

    def workload_at(self, address: IPv4Address) -> Workload | None:
        return self._index.by_address.get(address._ip)  # type: ignore[attr-defined]

    def namespace(self, name: str) -> Namespace | None:
        found = self.resources.get(ResourceKey(Kind.NAMESPACE, "", name))
        return found if isinstance(found, Namespace) else None

    def in_mesh(self, workload: Workload) -> bool:
        """Captured and reachable over HBONE: its namespace opted in and it did not opt out."""
        # Asked per connection; answered once per workload (ten Python calls otherwise).
        cache = self._index.in_mesh
        found = cache.get(id(workload))
        if found is None or found[0] is not workload:
            found = cache[id(workload)] = (workload, self._in_mesh(workload))
        return found[1]

    def _in_mesh(self, workload: Workload) -> bool:
        namespace = self.namespace(workload.metadata.namespace)
        if namespace is None or namespace.dataplane_mode != DataplaneMode.AMBIENT:
            return False
        return not workload.meshed_opt_out

    def identity(self, workload: Workload) -> Identity:
        known = self._index.identities.get(id(workload))
        # Identity() validates its parts with regular expressions: made once per workload.
        return known if known is not None else workload.identity(self.trust_domain)

    def local_identities(self) -> set[Identity]:
        return {self.identity(w) for w in self.local_workloads() if self.in_mesh(w)}

    def service_target(self, address: IPv4Address, port: int) -> ServiceTarget | None:
        return self._index.service_targets.get((address._ip, port))  # type: ignore[attr-defined]

    def waypoint_for(self, service: Service) -> Waypoint | None:
        """The waypoint a service uses (its label, else its namespace's), if it exists."""
        name = service.use_waypoint
        if name is None:
            namespace = self.namespace(service.metadata.namespace)
            name = namespace.use_waypoint if namespace is not None else None
        if name is None:
            return None
        found = self.resources.get(ResourceKey(Kind.WAYPOINT, service.metadata.namespace, name))
        if isinstance(found, Waypoint) and found.traffic_type != WaypointTrafficType.WORKLOAD:
            return found
        return None

    def services_of(self, workload: Workload) -> list[Service]:
        cache = self._index.services_of
        found = cache.get(id(workload))
        if found is None or found[0] is not workload:
            found = cache[id(workload)] = (
                workload, [s for s in self.services() if s.selects(workload)]
            )  # fmt: skip
        return found[1]

    def authorization_policies(self, workload: Workload) -> list[AuthorizationPolicy]:
        """Policies in force for `workload`: the root namespace's, then its own namespace's."""
        cache = self._index.policies_of
        found = cache.get(id(workload))
        if found is None or found[0] is not workload:
            found = cache[id(workload)] = (
                workload,
                [
                    p
                    for p in self.of_kind(Kind.AUTHORIZATION_POLICY)
                    if isinstance(p, AuthorizationPolicy)
                    and not p.target_refs
                    and _applies(p.metadata.namespace, p.selector, workload)
                ],
            )
        return found[1]

    def mtls_mode(self, workload: Workload, port: int) -> MutualTLSMode:
        """PeerAuthentication: workload-selected beats namespace-wide beats mesh-wide; the
        default is PERMISSIVE, as in Istio."""
        cache = self._index.mtls_modes
        found = cache.get((id(workload), port))
        if found is None or found[0] is not workload:
            found = cache[(id(workload), port)] = (workload, self._mtls_mode(workload, port))
        return found[1]

    def _mtls_mode(self, workload: Workload, port: int) -> MutualTLSMode:
        candidates = [
            p
            for p in self.of_kind(Kind.PEER_AUTHENTICATION)
            if isinstance(p, PeerAuthentication)
            and _applies(p.metadata.namespace, p.selector, workload)
        ]

        def rank(p: PeerAuthentication) -> int:
            if p.selector is not None:
                return 0
            return 1 if p.metadata.namespace == workload.metadata.namespace else 2

        for policy in sorted(candidates, key=rank):
            mode = policy.port_level.get(port) or policy.mode
            if mode is not None:
                return mode
        return MutualTLSMode.PERMISSIVE


class _Index:
    """The lookups of one NodeState, computed once. Per-workload answers are keyed by the
    workload object's id() and hold the object, so a stale id is never mistaken for another.
    Addresses are keyed by their integer (read as IPv4Address._ip, the attribute int() returns):
    an IPv4Address hashes in three Python calls (hash(hex(int))), and the data path asks up to
    six such lookups a connection. Only IPv4Addresses are asked (an IPv6Address's integer could
    equal a v4 one's)."""

    def __init__(self, state: NodeState) -> None:
        self.workloads = [r for r in state.of_kind(Kind.WORKLOAD) if isinstance(r, Workload)]
        self.services = [r for r in state.of_kind(Kind.SERVICE) if isinstance(r, Service)]
        self.local_workloads = [w for w in self.workloads if w.node == state.node]
        self.by_address: dict[int, Workload] = {}
        self.identities: dict[int, Identity] = {}
        for workload in self.workloads:
            self.by_address.setdefault(int(workload.address), workload)
            self.identities[id(workload)] = workload.identity(state.trust_domain)
        self.service_targets: dict[tuple[int, int], ServiceTarget] = {}
        for service in self.services:
            if service.vip is None:
                continue
            endpoints: tuple[Workload, ...] | None = None
            for service_port in service.ports:
                key = (int(service.vip), service_port.port)
                if key in self.service_targets:
                    continue  # the first service (in resource order) owns a VIP:port
                if endpoints is None:
                    endpoints = tuple(w for w in self.workloads if service.selects(w))
                self.service_targets[key] = ServiceTarget(service, service_port, endpoints)
        # Filled as the data path asks: id(workload) -> (workload, answer).
        self.services_of: dict[int, tuple[Workload, list[Service]]] = {}
        self.in_mesh: dict[int, tuple[Workload, bool]] = {}
        self.policies_of: dict[int, tuple[Workload, list[AuthorizationPolicy]]] = {}
        self.mtls_modes: dict[tuple[int, int], tuple[Workload, MutualTLSMode]] = {}


def _applies(namespace: str, selector: WorkloadSelector | None, workload: Workload) -> bool:
    if namespace not in (ROOT_NAMESPACE, workload.metadata.namespace):
        return False
    if selector is None:
        return True
    return selector.matches(workload.selector_labels)


def workload_name(workload: Workload) -> str:
    return f"{workload.metadata.namespace}/{workload.metadata.name}"


def endpoints_in_order(endpoints: Iterable[Workload]) -> tuple[Workload, ...]:
    return tuple(sorted(endpoints, key=lambda w: int(w.address)))
