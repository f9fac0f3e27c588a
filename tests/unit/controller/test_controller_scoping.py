"""controller.scoping and the hub: what a node receives equals what it needs, after any changes."""

from __future__ import annotations

from controller_testkit import namespace_doc, parsed, service_doc, workload_doc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.catalog import Catalog, resource_id
from controller.discovery import DiscoveryHub, Watcher
from controller.scoping import node_scope, shared_scope
from weft.api.v1 import discovery_pb2
from weft.model import Kind, ResourceKey

NODES = ["n1", "n2", "n3"]
APPS = ["a", "b", "c"]


def policy_doc(name: str, app: str | None) -> dict[str, object]:
    spec: dict[str, object] = {"action": "ALLOW"}
    if app:
        spec["selector"] = {"matchLabels": {"app": app}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def waypoint_doc(node: str) -> dict[str, object]:
    return {
        "apiVersion": "weft.io/v1",
        "kind": "Waypoint",
        "metadata": {"name": "wp", "namespace": "shop"},
        "spec": {"address": "10.1.9.9", "node": node},
    }


def route_doc() -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "svc-a"}]},
    }


CHANGES = st.one_of(
    st.tuples(
        st.just("workload"),
        st.integers(0, 5),
        st.sampled_from(NODES),
        st.sampled_from(APPS),
    ),
    st.tuples(st.just("service"), st.sampled_from(APPS), st.booleans()),
    st.tuples(st.just("policy"), st.integers(0, 2), st.sampled_from([*APPS, None])),
    st.tuples(st.just("waypoint"), st.sampled_from(NODES)),
    st.tuples(st.just("route"), st.booleans()),
    st.tuples(st.just("delete-workload"), st.integers(0, 5)),
)


class ClientView:
    """What an agent holds after applying every update it received, in order."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.ids: set[str] = set()

    def drain(self) -> None:
        while not self.watcher.updates.empty():
            data = self.watcher.updates.get_nowait()
            assert data is not None
            update = discovery_pb2.WatchUpdate.FromString(data)
            if update.snapshot:
                self.ids = set()
            for r in update.upserts:
                self.ids.add(str(ResourceKey(Kind(r.key.kind), r.key.namespace, r.key.name)))
            for k in update.removals:
                self.ids.discard(str(ResourceKey(Kind(k.kind), k.namespace, k.name)))


def apply_change(hub: DiscoveryHub, change: tuple[object, ...], revision: int) -> None:
    kind = change[0]
    catalog = hub.catalog
    if kind == "delete-workload":
        key = ResourceKey(Kind.WORKLOAD, "shop", f"w{change[1]}")
        catalog.delete([key], revision)
        hub.publish({key})
        return
    if kind == "workload":
        _, i, node, app = change
        doc = workload_doc(f"w{i}", str(node), app=str(app), ip=f"10.1.0.{i}")
    elif kind == "service":
        _, app, present = change
        if not present:
            key = ResourceKey(Kind.SERVICE, "shop", f"svc-{app}")
            catalog.delete([key], revision)
            hub.publish({key})
            return
        doc = service_doc(f"svc-{app}", str(app))
    elif kind == "policy":
        doc = policy_doc(f"p{change[1]}", change[2])  # type: ignore[arg-type]
    elif kind == "waypoint":
        doc = waypoint_doc(str(change[1]))
    else:
        if not change[1]:
            key = ResourceKey(Kind.HTTP_ROUTE, "shop", "r")
            catalog.delete([key], revision)
            hub.publish({key})
            return
        doc = route_doc()
    batch = parsed(doc)
    catalog.apply(batch, {batch[0].key}, revision)
    hub.publish({batch[0].key})


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(CHANGES, min_size=1, max_size=25))
def test_every_node_holds_exactly_its_scope_after_any_sequence_of_changes(
    changes: list[tuple[object, ...]],
) -> None:
    catalog = Catalog()
    first = parsed(namespace_doc("shop"))
    catalog.apply(first, {first[0].key}, 1)
    hub = DiscoveryHub(catalog)
    views = {node: ClientView(hub.subscribe(node)) for node in NODES}
    for revision, change in enumerate(changes, start=2):
        apply_change(hub, change, revision)
        shared = shared_scope(catalog)
        for node, view in views.items():
            view.drain()
            assert view.ids == node_scope(catalog, shared, node), (node, change)


def test_endpoints_are_shared_but_other_nodes_workloads_are_not() -> None:
    catalog = Catalog()
    batch = parsed(
        workload_doc("a1", "n1", app="a"),
        workload_doc("b1", "n2", app="b"),
        service_doc("svc-a", "a"),
    )
    catalog.apply(batch, {b.key for b in batch}, 1)
    view = node_scope(catalog, shared_scope(catalog), "n3")
    assert resource_id(ResourceKey(Kind.WORKLOAD, "shop", "a1")) in view
    assert resource_id(ResourceKey(Kind.WORKLOAD, "shop", "b1")) not in view
