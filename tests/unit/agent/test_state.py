from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from agent.state import NodeState, StateRejectedError
from tests.unit.agent.mesh_config import SHOP, node_state, received, snapshot
from weft.api.convert import ConfigUpdate
from weft.model import Kind, MutualTLSMode, ResourceKey


def test_snapshot_then_delta_adds_and_removes_resources() -> None:
    state = node_state("node1")
    assert {w.metadata.name for w in state.local_workloads()} == {"frontend", "reviews-v1"}
    delta = ConfigUpdate(2, False, (), (ResourceKey(Kind.WORKLOAD, "shop", "reviews-v1"),))
    after = state.apply(delta)
    assert after.version == 2
    assert {w.metadata.name for w in after.local_workloads()} == {"frontend"}
    assert state.version == 1  # the old state is untouched: it stays the last good one


def test_a_later_snapshot_replaces_everything() -> None:
    state = node_state("node1")
    only_namespaces = "\n---\n".join(SHOP.split("---\n")[:2])
    after = state.apply(snapshot(only_namespaces, version=7))
    assert after.workloads() == []


def test_a_delta_that_is_not_newer_is_rejected() -> None:
    state = node_state("node1")
    with pytest.raises(StateRejectedError, match="not newer"):
        state.apply(ConfigUpdate(1, False, (), ()))


def test_two_workloads_claiming_one_address_are_rejected() -> None:
    clash = """\
apiVersion: weft.io/v1
kind: Workload
metadata: {name: impostor, namespace: shop}
spec: {address: 10.88.1.2, node: node1}
"""
    with pytest.raises(StateRejectedError, match=r"10\.88\.1\.2"):
        node_state("node1").apply(ConfigUpdate(2, False, received(clash), ()))


def test_mesh_membership_follows_the_namespace_label() -> None:
    state = node_state("node2")
    catalog = state.workload_at(IPv4Address("10.88.2.2"))
    old = state.workload_at(IPv4Address("10.88.2.9"))
    assert catalog is not None
    assert state.in_mesh(catalog)
    assert old is not None
    assert not state.in_mesh(old)
    assert {i.uri for i in state.local_identities()} == {
        "spiffe://cluster.local/ns/shop/sa/catalog",
        "spiffe://cluster.local/ns/shop/sa/reviews",
    }


def test_service_target_lists_the_selected_endpoints() -> None:
    target = node_state("node1").service_target(IPv4Address("10.96.0.12"), 80)
    assert target is not None
    assert target.port.target_port == 8080
    assert {w.metadata.name for w in target.endpoints} == {"reviews-v1", "reviews-v2"}
    assert node_state("node1").service_target(IPv4Address("10.96.0.12"), 81) is None


def test_peer_authentication_workload_beats_namespace_beats_mesh_default() -> None:
    policies = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-wide, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: frontend, namespace: shop}
spec: {selector: {matchLabels: {app: frontend}}, mtls: {mode: PERMISSIVE}}
"""
    state = node_state("node1", extra=policies)
    frontend = state.workload_at(IPv4Address("10.88.1.2"))
    reviews = state.workload_at(IPv4Address("10.88.1.3"))
    assert frontend is not None
    assert reviews is not None
    assert state.mtls_mode(frontend, 8080) == MutualTLSMode.PERMISSIVE
    assert state.mtls_mode(reviews, 8080) == MutualTLSMode.STRICT
    assert NodeState("node1").apply(snapshot(SHOP)).mtls_mode(reviews, 1) == (
        MutualTLSMode.PERMISSIVE
    )


def test_lookups_answer_for_the_state_they_were_built_from_after_a_delta() -> None:
    """The indexes are built once per state: a delta's state answers from its own."""
    state = node_state("node1")
    catalog_vip = IPv4Address("10.96.0.11")
    before = state.service_target(catalog_vip, 8080)
    assert before is not None
    assert state.workload_at(IPv4Address("10.88.2.2")) is not None
    delta = ConfigUpdate(2, False, (), (ResourceKey(Kind.WORKLOAD, "shop", "catalog"),))
    after = state.apply(delta)
    assert after.workload_at(IPv4Address("10.88.2.2")) is None
    target = after.service_target(catalog_vip, 8080)
    assert target is not None
    assert target.endpoints == ()
    assert [w.metadata.name for w in before.endpoints] == ["catalog"]  # the old state's answer
    reviews = state.workload_at(IPv4Address("10.88.1.3"))
    assert reviews is not None
    assert state.identity(reviews).uri == "spiffe://cluster.local/ns/shop/sa/reviews"
    assert [s.metadata.name for s in state.services_of(reviews)] == ["reviews"]


def test_a_vip_port_two_services_claim_goes_to_the_first_in_resource_order() -> None:
    second = """\
apiVersion: v1
kind: Service
metadata: {name: zz-shadow, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: reviews}
  ports: [{name: http, port: 8080, targetPort: 9090}]
"""
    target = node_state("node1", SHOP, second).service_target(IPv4Address("10.96.0.11"), 8080)
    assert target is not None
    assert target.service.metadata.name == "catalog"
