"""vm.lab.plumbing and vm.lab.services: the lab's network layout and VIP rules, without root."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from vm.lab.plumbing import (
    POD_GATEWAY,
    add_node_uplinks,
    add_workload_link,
    attach_workload_to_node,
    configure_node,
    configure_workload,
    next_pod_ip,
)
from vm.lab.services import ServiceEndpoints, render_ruleset
from vm.lab.state import WorkloadInfo
from vm.lab.topology import load_topology

WORKLOAD = WorkloadInfo(
    name="frontend",
    namespace="shop",
    node="node1",
    ip="10.88.1.2",
    netns="weft-node1-frontend",
    cgroup="/sys/fs/cgroup/unified/weft/node1/workloads/frontend",
)


def test_veths_are_created_directly_inside_their_namespaces():
    topology = load_topology()
    uplinks = add_node_uplinks(topology.nodes)
    assert uplinks[1] == (
        "link add n-node1 netns weft-fabric type veth peer name eth0 netns weft-node1"
    )
    link = add_workload_link(WORKLOAD, topology.node("node1"))
    assert link == (
        "link add p-frontend netns weft-node1 type veth peer name eth0 netns weft-node1-frontend"
    )


def test_node_routes_every_other_workers_pod_cidr_via_its_fabric_ip():
    topology = load_topology()
    lines = configure_node(topology, topology.node("node1"))
    routes = [line for line in lines if line.startswith("route add")]
    assert routes == ["route add 10.88.2.0/24 via 10.77.0.12 dev eth0"]
    assert "address add 10.77.0.11/24 dev eth0" in lines
    assert f"address add {POD_GATEWAY}/32 dev lo" in lines


def test_control_node_routes_to_every_worker():
    topology = load_topology()
    routes = [line for line in configure_node(topology, topology.node("control")) if "via" in line]
    assert len(routes) == len(topology.workers)


def test_workload_has_a_host_route_and_a_default_via_the_onlink_gateway():
    lines = configure_workload(WORKLOAD)
    assert "address add 10.88.1.2/32 dev eth0" in lines
    assert lines[-1] == f"route add default via {POD_GATEWAY} dev eth0 onlink"
    assert attach_workload_to_node(WORKLOAD) == [
        "link set p-frontend up",
        "route add 10.88.1.2/32 dev p-frontend",
    ]


def test_next_pod_ip_starts_at_dot_two_and_skips_used_addresses():
    cidr = IPv4Network("10.88.1.0/24")
    assert str(next_pod_ip(cidr, [])) == "10.88.1.2"
    assert str(next_pod_ip(cidr, ["10.88.1.2", "10.88.1.3"])) == "10.88.1.4"


def test_next_pod_ip_says_when_the_cidr_is_full():
    with pytest.raises(ValueError, match="full"):
        next_pod_ip(IPv4Network("10.88.1.0/30"), ["10.88.1.2"])


def test_service_with_two_endpoints_picks_one_at_random():
    ruleset = render_ruleset(
        [ServiceEndpoints("reviews.shop", "10.96.0.12", 8080, 8080, ["10.88.1.3", "10.88.2.3"])],
        [],
    )
    assert (
        "ip daddr 10.96.0.12 tcp dport 8080 dnat to numgen random mod 2 "
        "map { 0 : 10.88.1.3 . 8080, 1 : 10.88.2.3 . 8080 }"
    ) in ruleset


def test_service_port_is_translated_to_the_target_port():
    ruleset = render_ruleset(
        [ServiceEndpoints("catalog.shop", "10.96.0.11", 80, 8080, ["10.88.2.2"])], []
    )
    assert "ip daddr 10.96.0.11 tcp dport 80 dnat to 10.88.2.2:8080" in ruleset


def test_service_without_endpoints_resets_connections():
    ruleset = render_ruleset([ServiceEndpoints("empty.shop", "10.96.0.30", 80, 80, [])], [])
    assert "ip daddr 10.96.0.30 tcp dport 80 reject with tcp reset" in ruleset
    assert "dnat to" not in ruleset


def test_local_workloads_are_masqueraded_when_they_reach_themselves_through_a_vip():
    ruleset = render_ruleset([], ["10.88.1.3", "10.88.1.2"])
    assert "elements = { 10.88.1.2 . 10.88.1.2, 10.88.1.3 . 10.88.1.3 }" in ruleset
    assert "ct status dnat ip saddr . ip daddr @hairpin masquerade" in ruleset


def test_ruleset_replaces_the_table_atomically():
    lines = render_ruleset([], []).splitlines()
    assert lines[:3] == ["table ip weft", "delete table ip weft", "table ip weft {"]
