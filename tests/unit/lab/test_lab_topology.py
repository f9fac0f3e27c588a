"""vm.lab.topology: the default lab loads; every invalid input names the file and the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from vm.lab.topology import (
    DEFAULT_TOPOLOGY,
    load_topology,
    parse_topology,
    with_workers,
)
from weft.errors import ConfigError, UsageError

SOURCE = "lab.yaml"


def default_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    return document


def rejected(document: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_topology(document, SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}: field '{caught.value.field}'")
    return caught.value


def test_default_topology_has_a_control_node_and_two_workers():
    topology = load_topology()
    assert [(n.name, n.role, str(n.ip)) for n in topology.nodes] == [
        ("control", "control", "10.77.0.2"),
        ("node1", "worker", "10.77.0.11"),
        ("node2", "worker", "10.77.0.12"),
    ]
    assert [str(n.pod_cidr) for n in topology.workers] == ["10.88.1.0/24", "10.88.2.0/24"]


def test_default_demo_spans_two_nodes_and_two_mesh_namespaces_plus_legacy():
    demo = load_topology().demo
    assert {w.node for w in demo.workloads} == {"node1", "node2"}
    assert {ns.name for ns in demo.namespaces if ns.in_mesh} == {"shop", "ratings"}
    legacy = next(ns for ns in demo.namespaces if ns.name == "legacy")
    assert not legacy.in_mesh
    assert {w.name for w in demo.workloads if w.namespace == "legacy"} == {"legacy-client"}
    reviews = next(s for s in demo.services if s.name == "reviews")
    assert {w.name for w in demo.workloads if reviews.selects(w)} == {"reviews-v1", "reviews-v2"}


def test_document_round_trips_through_parse():
    topology = load_topology()
    again = parse_topology(topology.to_document(), str(DEFAULT_TOPOLOGY))
    assert again == topology


def test_unreadable_file_names_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_topology(tmp_path / "missing.yaml")


def test_invalid_yaml_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*valid YAML"):
        load_topology(bad)


def test_unknown_field_is_rejected_by_name():
    doc = default_document()
    doc["nodes"][1]["podCidr"] = "10.88.9.0/24"
    error = rejected(doc)
    assert error.field == "nodes[1].podCidr"
    assert "podCIDR" in str(error)  # the known fields are listed


def test_unknown_top_level_field_is_rejected():
    doc = default_document()
    doc["node"] = []
    assert rejected(doc).field == "node"


def test_duplicate_node_name_is_rejected():
    doc = default_document()
    doc["nodes"][2]["name"] = "node1"
    assert rejected(doc).field == "nodes[2].name"


def test_overlapping_pod_cidrs_are_rejected():
    doc = default_document()
    doc["nodes"][2]["podCIDR"] = "10.88.1.0/25"
    error = rejected(doc)
    assert error.field == "nodes[2].podCIDR"
    assert "node1" in str(error)


def test_pod_cidr_outside_the_pool_is_rejected():
    doc = default_document()
    doc["nodes"][2]["podCIDR"] = "10.99.2.0/24"
    assert rejected(doc).field == "nodes[2].podCIDR"


def test_worker_without_pod_cidr_is_rejected():
    doc = default_document()
    del doc["nodes"][1]["podCIDR"]
    assert rejected(doc).field == "nodes[1].podCIDR"


def test_node_ip_outside_the_fabric_is_rejected():
    doc = default_document()
    doc["nodes"][0]["ip"] = "10.78.0.2"
    assert rejected(doc).field == "nodes[0].ip"


def test_duplicate_node_ip_is_rejected():
    doc = default_document()
    doc["nodes"][2]["ip"] = "10.77.0.11"
    assert rejected(doc).field == "nodes[2].ip"


def test_unknown_role_is_rejected():
    doc = default_document()
    doc["nodes"][0]["role"] = "master"
    assert rejected(doc).field == "nodes[0].role"


def test_node_name_too_long_for_an_interface_name_is_rejected():
    doc = default_document()
    doc["nodes"][1]["name"] = "a-very-long-node"
    error = rejected(doc)
    assert error.field == "nodes[1].name"
    assert "at most 13 characters" in str(error)


def test_workload_name_too_long_for_a_veth_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["name"] = "frontend-canary"
    assert rejected(doc).field == "demo.workloads[0].name"


def test_name_that_is_not_a_dns_label_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["name"] = "Front_End"
    assert rejected(doc).field == "demo.workloads[0].name"


def test_vip_outside_the_service_range_is_rejected():
    doc = default_document()
    doc["demo"]["services"][1]["vip"] = "10.97.0.1"
    error = rejected(doc)
    assert error.field == "demo.services[1].vip"
    assert "10.96.0.0/16" in str(error)


def test_duplicate_vip_is_rejected():
    doc = default_document()
    doc["demo"]["services"][1]["vip"] = doc["demo"]["services"][0]["vip"]
    assert rejected(doc).field == "demo.services[1].vip"


def test_workload_on_an_unknown_node_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][3]["node"] = "node9"
    error = rejected(doc)
    assert error.field == "demo.workloads[3].node"
    assert "node1, node2" in str(error)


def test_workload_on_the_control_node_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["node"] = "control"
    assert rejected(doc).field == "demo.workloads[0].node"


def test_workload_in_an_undeclared_namespace_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["namespace"] = "billing"
    assert rejected(doc).field == "demo.workloads[0].namespace"


def test_duplicate_workload_name_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][1]["name"] = doc["demo"]["workloads"][0]["name"]
    assert rejected(doc).field == "demo.workloads[1].name"


def test_bad_port_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["ports"] = [70000]
    assert rejected(doc).field == "demo.workloads[0].ports[0]"


def test_command_naming_an_unknown_service_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["command"] = ["{python}", "--to", "{vip:billing.shop}:80"]
    error = rejected(doc)
    assert error.field == "demo.workloads[0].command[2]"
    assert "billing.shop" in str(error)


def test_unknown_placeholder_is_rejected():
    doc = default_document()
    doc["demo"]["workloads"][0]["command"] = ["{pyhton}", "-m", "demo.frontend"]
    assert rejected(doc).field == "demo.workloads[0].command[0]"


def test_netns_name_collision_is_rejected():
    # Node "node1-frontend" would get netns weft-node1-frontend: workload frontend's on node1.
    doc = default_document()
    doc["nodes"].append(
        {"name": "node1-web", "role": "worker", "ip": "10.77.0.20", "podCIDR": "10.88.20.0/24"}
    )
    doc["demo"]["workloads"].append(
        {"name": "web", "namespace": "shop", "node": "node1", "labels": {"app": "web"}}
    )
    error = rejected(doc)
    assert error.field == f"demo.workloads[{len(doc['demo']['workloads']) - 1}].name"
    assert "weft-node1-web" in str(error)


def test_overlapping_ranges_are_rejected():
    doc = default_document()
    doc["serviceCIDR"] = "10.88.0.0/16"
    assert rejected(doc).field == "serviceCIDR"


def test_non_mapping_document_is_rejected():
    assert rejected(["nodes"]).field == "(top level)"


def test_label_values_must_be_strings():
    doc = default_document()
    doc["demo"]["workloads"][0]["labels"] = {"version": 2}
    assert rejected(doc).field == "demo.workloads[0].labels.version"


def test_with_workers_adds_numbered_nodes_on_the_address_pattern():
    topology = with_workers(load_topology(), 4)
    assert [(n.name, str(n.ip), str(n.pod_cidr)) for n in topology.workers] == [
        ("node1", "10.77.0.11", "10.88.1.0/24"),
        ("node2", "10.77.0.12", "10.88.2.0/24"),
        ("node3", "10.77.0.13", "10.88.3.0/24"),
        ("node4", "10.77.0.14", "10.88.4.0/24"),
    ]
    assert topology.nodes[0].name == "control"
    assert topology.demo == load_topology().demo  # workloads stay where they were


def test_with_one_worker_moves_every_demo_workload_onto_it():
    topology = with_workers(load_topology(), 1)
    assert [n.name for n in topology.workers] == ["node1"]
    assert {w.node for w in topology.demo.workloads} == {"node1"}


def test_with_workers_rejects_zero():
    with pytest.raises(UsageError, match="at least 1"):
        with_workers(load_topology(), 0)


def test_with_workers_rejects_more_than_the_ranges_hold():
    with pytest.raises(UsageError, match="does not fit"):
        with_workers(load_topology(), 300)


def test_with_workers_skips_addresses_already_taken():
    doc = default_document()
    doc["nodes"][2] = {
        "name": "edge",
        "role": "worker",
        "ip": "10.77.0.12",
        "podCIDR": "10.88.2.0/24",
    }
    del doc["demo"]
    base = parse_topology(copy.deepcopy(doc), SOURCE)
    grown = with_workers(base, 3)
    assert [(n.name, str(n.pod_cidr)) for n in grown.workers] == [
        ("node1", "10.88.1.0/24"),
        ("edge", "10.88.2.0/24"),
        ("node3", "10.88.3.0/24"),
    ]
