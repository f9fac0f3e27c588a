"""The demo's waypoint deployment as resources: what `up_mesh(waypoints=DEMO_WAYPOINTS)` applies
validates and compiles into the configuration each waypoint should serve (no lab needed)."""

from __future__ import annotations

from typing import Any

from vm.lab.mesh import lab_resources
from vm.lab.state import WorkloadInfo
from vm.lab.topology import load_topology
from vm.lab.waypoints import DEMO_WAYPOINT_RESOURCES, DEMO_WAYPOINTS, waypoint_documents
from waypoint.compiler import compile_resources
from waypoint.config import RetryOn
from weft.resources import Document, parse_documents, read_documents


def placed_workloads() -> list[WorkloadInfo]:
    topology = load_topology()
    workloads = [(w.name, w.namespace, w.node, w.service_account, dict(w.labels))
                 for w in topology.demo.workloads]  # fmt: skip
    workloads += [(wp.workload, wp.namespace, wp.node, wp.service_account,
                   {"weft.io/dataplane-mode": "none"}) for wp in DEMO_WAYPOINTS]  # fmt: skip
    return [
        WorkloadInfo(name, ns, node, f"10.88.{1 if node == 'node1' else 2}.{i + 2}",
                     f"weft-{node}-{name}", "/cg", sa, labels)
        for i, (name, ns, node, sa, labels) in enumerate(workloads)
    ]  # fmt: skip


def demo_resources() -> tuple[list[Any], dict[str, WorkloadInfo]]:
    workloads = placed_workloads()
    placed = {
        wp.reference: next(w for w in workloads if w.name == wp.workload) for wp in DEMO_WAYPOINTS
    }
    documents = lab_resources(load_topology(), workloads, DEMO_WAYPOINTS)
    documents += waypoint_documents(DEMO_WAYPOINTS, placed)
    parsed = parse_documents(
        [Document("lab", i, d) for i, d in enumerate(documents)]
        + read_documents([str(DEMO_WAYPOINT_RESOURCES)])
    )
    return [p.resource for p in parsed], placed


def test_waypoint_workloads_are_waypoints_and_their_services_use_them() -> None:
    documents = lab_resources(load_topology(), placed_workloads(), DEMO_WAYPOINTS)
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert ("Workload", "shop-wp") not in names  # the Waypoint resource claims its address
    labels = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in documents
              if d["kind"] == "Service"}  # fmt: skip
    assert labels["reviews"] == {"weft.io/use-waypoint": "waypoint"}
    assert labels["ratings"] == {"weft.io/use-waypoint": "waypoint"}
    assert labels["catalog"] == {}


def test_demo_l7_resources_compile_into_what_each_waypoint_serves() -> None:
    resources, placed = demo_resources()
    shop = compile_resources(resources, "waypoint", "shop")
    [reviews] = shop.config.services
    assert (reviews.hostname, reviews.port) == ("reviews.shop.svc.cluster.local", 8080)
    [route] = reviews.routes
    assert [(b.name, b.weight) for b in route.backends] == [("reviews-v1", 90), ("reviews-v2", 10)]
    [policy] = reviews.authorization_policies
    assert policy.name == "reviews-readers"
    assert shop.endpoints["reviews-v1.shop:8080"] == (f"{ip('reviews-v1')}:8080",)
    assert dict(shop.config.traffic_policies)["reviews-v2.shop:8080"].outlier_detection
    ratings = compile_resources(resources, "waypoint", "ratings")
    [service] = ratings.config.services
    [rule] = service.routes
    assert rule.retry is not None
    assert rule.retry.attempts == 3
    assert RetryOn.RETRIABLE_STATUS_CODES in rule.retry.retry_on
    assert placed["shop/waypoint"].node == "node2"


def ip(name: str) -> str:
    return next(w.ip for w in placed_workloads() if w.name == name)
