from __future__ import annotations

from ipaddress import IPv4Address

from agent.outbound import LoadBalancer, RouteKind, plan_route
from tests.unit.agent.mesh_config import SHOP, node_state


def route(node: str, address: str, port: int, balancer: LoadBalancer | None = None):  # type: ignore[no-untyped-def]
    return plan_route(node_state(node), balancer or LoadBalancer(), IPv4Address(address), port)


def test_service_vip_on_another_node_goes_over_hbone_to_the_endpoint_address() -> None:
    r = route("node1", "10.96.0.11", 8080)
    assert r.kind == RouteKind.HBONE
    assert (str(r.address), r.port, r.peer, r.service) == (
        "10.88.2.2",
        8080,
        ("10.88.2.2", 15008),
        "catalog.shop",
    )


def test_round_robin_alternates_endpoints_and_maps_the_target_port() -> None:
    balancer = LoadBalancer()
    picks = [route("node1", "10.96.0.12", 80, balancer) for _ in range(4)]
    assert [p.port for p in picks] == [8080] * 4
    assert [p.kind for p in picks] == [
        RouteKind.SAME_NODE,
        RouteKind.HBONE,
        RouteKind.SAME_NODE,
        RouteKind.HBONE,
    ]


def test_workload_address_on_this_node_is_same_node() -> None:
    r = route("node1", "10.88.1.3", 8080)
    assert r.kind == RouteKind.SAME_NODE
    assert r.endpoint is not None
    assert r.endpoint.metadata.name == "reviews-v1"


def test_destinations_outside_the_mesh_are_plain_tcp() -> None:
    assert route("node1", "192.0.2.1", 443).kind == RouteKind.PASSTHROUGH
    legacy = route("node1", "10.96.0.40", 8080)
    assert (legacy.kind, str(legacy.address)) == (RouteKind.PASSTHROUGH, "10.88.2.9")


def test_service_without_endpoints_is_refused_not_bypassed() -> None:
    r = route("node1", "10.96.0.30", 8080)
    assert r.kind == RouteKind.REFUSED
    assert "no endpoints" in r.reason


WAYPOINT = """\
apiVersion: weft.io/v1
kind: Waypoint
metadata: {name: shop-waypoint, namespace: shop}
spec: {address: 10.88.2.50, node: node2}
"""


def test_service_with_a_waypoint_is_tunnelled_to_the_waypoint_with_the_vip_as_authority() -> None:
    labelled = SHOP.replace(
        "metadata: {name: catalog, namespace: shop}\nspec:\n  clusterIP",
        "metadata: {name: catalog, namespace: shop, labels: {weft.io/use-waypoint: shop-waypoint}}"
        "\nspec:\n  clusterIP",
    )
    state = node_state("node1", labelled, WAYPOINT)
    r = plan_route(state, LoadBalancer(), IPv4Address("10.96.0.11"), 8080, IPv4Address("10.88.1.2"))
    assert r.kind == RouteKind.WAYPOINT
    assert (str(r.address), r.port, r.peer) == ("10.96.0.11", 8080, ("10.88.2.50", 15008))
    # the waypoint's own connection to the service goes to an endpoint, not back to itself
    r = plan_route(
        state, LoadBalancer(), IPv4Address("10.96.0.11"), 8080, IPv4Address("10.88.2.50")
    )
    assert r.kind == RouteKind.HBONE
    # a service without the label is not sent to the waypoint
    assert route("node1", "10.96.0.12", 80).kind != RouteKind.WAYPOINT
