"""What each node needs to know: the scoping rules of discovery (see discovery.proto, step 2).

Split in two so a change costs little for many nodes: the node-independent part (services, their
endpoints, namespaces, waypoints, mesh-wide policy) is computed once per revision; the part that
depends on the node (its workloads and the policies selecting them) is small and per node.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.catalog import Catalog
from weft.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Kind,
    PeerAuthentication,
    ResourceKey,
    Service,
    Waypoint,
    Workload,
)

SHARED_KINDS = (Kind.NAMESPACE, Kind.SERVICE, Kind.WAYPOINT, Kind.DESTINATION_RULE)
# L7 configuration is applied by waypoints, so only nodes that host one receive it.
WAYPOINT_KINDS = (Kind.HTTP_ROUTE, Kind.FAULT_INJECTION, Kind.RATE_LIMIT)
POLICY_KINDS = (Kind.AUTHORIZATION_POLICY, Kind.PEER_AUTHENTICATION)


@dataclass(frozen=True)
class SharedScope:
    """The node-independent part of every node's view at one revision."""

    everyone: frozenset[ResourceKey]
    waypoint_hosts_only: frozenset[ResourceKey]
    waypoint_nodes: frozenset[str]


def shared_scope(catalog: Catalog) -> SharedScope:
    everyone: set[ResourceKey] = set()
    for kind in SHARED_KINDS:
        everyone.update(e.key for e in catalog.of_kind(kind))
    everyone.update(_endpoints(catalog))
    hosts_only: set[ResourceKey] = set()
    for kind in WAYPOINT_KINDS:
        hosts_only.update(e.key for e in catalog.of_kind(kind))
    for kind in POLICY_KINDS:
        for entry in catalog.of_kind(kind):
            policy = entry.resource
            if isinstance(policy, AuthorizationPolicy) and policy.target_refs:
                hosts_only.add(entry.key)
            elif entry.key.namespace == ROOT_NAMESPACE:
                everyone.add(entry.key)
    waypoint_nodes = frozenset(
        e.resource.node for e in catalog.of_kind(Kind.WAYPOINT) if isinstance(e.resource, Waypoint)
    )
    return SharedScope(frozenset(everyone), frozenset(hosts_only), waypoint_nodes)


def _endpoints(catalog: Catalog) -> set[ResourceKey]:
    """Workloads selected by some Service: the endpoints any node may have to reach."""
    selected: set[ResourceKey] = set()
    for entry in catalog.of_kind(Kind.SERVICE):
        service = entry.resource
        assert isinstance(service, Service)
        selected |= catalog.workload_keys_matching(entry.key.namespace, service.selector)
    return selected


def node_scope(catalog: Catalog, shared: SharedScope, node: str) -> set[ResourceKey]:
    """Every resource key `node` needs at the catalog's revision."""
    view = set(shared.everyone)
    if node in shared.waypoint_nodes:
        view |= shared.waypoint_hosts_only
    local = [catalog.get(k) for k in catalog.workload_keys_on(node)]
    by_namespace: dict[str, list[Workload]] = {}
    for entry in local:
        if entry is not None and isinstance(entry.resource, Workload):
            view.add(entry.key)
            by_namespace.setdefault(entry.key.namespace, []).append(entry.resource)
    for kind in POLICY_KINDS:
        for entry in catalog.of_kind(kind):
            policy = entry.resource
            workloads = by_namespace.get(entry.key.namespace)
            if not workloads:
                continue
            assert isinstance(policy, AuthorizationPolicy | PeerAuthentication)
            if isinstance(policy, AuthorizationPolicy) and policy.target_refs:
                continue
            selector = policy.selector
            if selector is None or any(selector.matches(w.selector_labels) for w in workloads):
                view.add(entry.key)
    return view
