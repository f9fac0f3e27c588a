"""What each node needs to know: the scoping rules of discovery (see discovery.proto, step 2).

Split in two so a change costs little for many nodes: the node-independent part (services, their
endpoints, namespaces, waypoints, mesh-wide policy) is computed once per revision; the part that
depends on the node (its workloads and the policies selecting them) is small and per node.
Resources are named by catalog ids (strings), see controller.catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.catalog import Catalog, key_of_id
from weft.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Kind,
    PeerAuthentication,
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

    everyone: frozenset[str]
    waypoint_hosts_only: frozenset[str]
    waypoint_nodes: frozenset[str]


def shared_scope(catalog: Catalog) -> SharedScope:
    everyone: set[str] = set()
    for kind in SHARED_KINDS:
        everyone.update(e.id for e in catalog.of_kind(kind))
    everyone.update(_endpoints(catalog))
    hosts_only: set[str] = set()
    for kind in WAYPOINT_KINDS:
        hosts_only.update(e.id for e in catalog.of_kind(kind))
    for kind in POLICY_KINDS:
        for entry in catalog.of_kind(kind):
            policy = entry.resource
            if isinstance(policy, AuthorizationPolicy) and policy.target_refs:
                hosts_only.add(entry.id)
            elif entry.key.namespace == ROOT_NAMESPACE:
                everyone.add(entry.id)
    waypoint_nodes = frozenset(
        e.resource.node for e in catalog.of_kind(Kind.WAYPOINT) if isinstance(e.resource, Waypoint)
    )
    return SharedScope(frozenset(everyone), frozenset(hosts_only), waypoint_nodes)


# Past this many changed workloads a full recomputation is cheaper than the incremental one.
INCREMENTAL_LIMIT = 200


def updated_shared_scope(catalog: Catalog, old: SharedScope, changed: set[str]) -> SharedScope:
    """The shared scope after `changed` (ids), incrementally when only workloads changed.

    A workload's change can only alter whether that workload is an endpoint, which the
    Services of its own namespace decide; anything else is recomputed in full.
    """
    if len(changed) > INCREMENTAL_LIMIT or any(
        not rid.startswith(f"{Kind.WORKLOAD.value}/") for rid in changed
    ):
        return shared_scope(catalog)
    everyone = set(old.everyone)
    for rid in changed:
        entry = catalog.by_id(rid)
        workload = entry.resource if entry is not None else None
        if isinstance(workload, Workload) and any(
            s.selects(workload) for s in catalog.services_in(workload.metadata.namespace)
        ):
            everyone.add(rid)
        else:
            everyone.discard(rid)
    return SharedScope(frozenset(everyone), old.waypoint_hosts_only, old.waypoint_nodes)


def changes_local_scopes(changed: set[str]) -> bool:
    """Whether `changed` may alter every node's local part (policies, waypoints, L7 config)."""
    kinds = {*POLICY_KINDS, *WAYPOINT_KINDS, Kind.WAYPOINT}
    return any(rid.partition("/")[0] in kinds for rid in changed)


def _endpoints(catalog: Catalog) -> set[str]:
    """Workloads selected by some Service: the endpoints any node may have to reach."""
    selected: set[str] = set()
    for entry in catalog.of_kind(Kind.SERVICE):
        service = entry.resource
        assert isinstance(service, Service)
        if service.selector:
            selected |= catalog.workload_ids_matching(entry.key.namespace, service.selector)
    return selected


def local_scope(catalog: Catalog, shared: SharedScope, node: str) -> set[str]:
    """What only `node` needs: its workloads, the policies selecting them, waypoint config."""
    view: set[str] = set(shared.waypoint_hosts_only) if node in shared.waypoint_nodes else set()
    by_namespace: dict[str, list[Workload]] = {}
    for rid in catalog.workload_ids_on(node):
        entry = catalog.by_id(rid)
        if entry is not None and isinstance(entry.resource, Workload):
            view.add(rid)
            by_namespace.setdefault(entry.key.namespace, []).append(entry.resource)
    for kind in POLICY_KINDS:
        for entry in catalog.of_kind(kind):
            workloads = by_namespace.get(entry.key.namespace)
            if not workloads:
                continue
            policy = entry.resource
            assert isinstance(policy, AuthorizationPolicy | PeerAuthentication)
            if isinstance(policy, AuthorizationPolicy) and policy.target_refs:
                continue
            selector = policy.selector
            if selector is None or any(selector.matches(w.selector_labels) for w in workloads):
                view.add(entry.id)
    return view


def waypoint_scope(catalog: Catalog, shared: SharedScope, namespace: str) -> set[str]:
    """What a waypoint of `namespace` needs besides the shared part: the L7 configuration
    (HTTPRoutes, FaultInjections, RateLimits, targetRef policies) of its namespace, where
    the services that can use it live."""
    del catalog  # the signature of local_scope, so the hub treats both alike
    return {rid for rid in shared.waypoint_hosts_only if key_of_id(rid).namespace == namespace}


def node_scope(catalog: Catalog, shared: SharedScope, node: str) -> set[str]:
    """Every resource id `node` needs at the catalog's revision."""
    return set(shared.everyone) | local_scope(catalog, shared, node)
