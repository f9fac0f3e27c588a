"""AdminService over real gRPC: all-or-nothing apply, fuzzed input, restart, auth, HTTP status."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from controller_testkit import (
    admin_credentials,
    grpc_address,
    namespace_doc,
    service_doc,
    start_controller,
    workload_doc,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.admin_client import AdminClient
from controller.server import Controller
from weft.api.v1 import admin_pb2, admin_pb2_grpc
from weft.controller_client import CHANNEL_OPTIONS, Credentials
from weft.errors import UnavailableError, UsageError
from weft.model import Kind
from weft.resources import Document


def admin(controller: Controller) -> AdminClient:
    return AdminClient(grpc_address(controller), admin_credentials(controller))


def docs(*bodies: object) -> list[Document]:
    return [Document("mesh.yaml", i, b) for i, b in enumerate(bodies)]


def test_one_invalid_resource_among_valid_ones_changes_nothing(controller: Controller) -> None:
    bad = workload_doc("w2", "n1", ip="10.1.0.2")
    bad["spec"]["address"] = "10.1.0.300"  # type: ignore[index]
    with admin(controller) as client:
        before = client.get()
        with pytest.raises(UsageError) as exc:
            client.apply(docs(namespace_doc("shop"), workload_doc("w1", "n1"), bad))
        assert client.get() == before == []
    message = str(exc.value)
    assert "mesh.yaml document 2 (Workload shop/w2)" in message
    assert "spec.address" in message
    assert "an IPv4 address" in message
    assert controller.store.revision() == 0


def test_apply_get_delete_round_trip(controller: Controller) -> None:
    with admin(controller) as client:
        first = client.apply(docs(namespace_doc("shop"), service_doc("cart", "cart")))
        assert len(first.created) == 2
        again = client.apply(docs(namespace_doc("shop")))
        assert len(again.unchanged) == 1
        assert again.revision == first.revision
        [(key, document, revision)] = client.get(Kind.SERVICE, "shop", "cart")
        assert document["spec"]["clusterIP"] == "10.96.0.1"
        assert revision == first.revision
        _, deleted = client.delete([key])
        assert deleted == (key,)
        assert client.get(Kind.SERVICE) == []


def test_restart_loses_nothing_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_controller(state)
    try:
        with admin(first) as client:
            applied = client.apply(
                docs(*(workload_doc(f"w{i}", "n1", ip=f"10.1.0.{i + 1}") for i in range(30)))
            )
    finally:
        first.stop(grace=0.2)
    second = start_controller(state)
    try:
        with admin(second) as client:
            assert len(client.get(Kind.WORKLOAD)) == 30
            assert client.status().revision == applied.revision
    finally:
        second.stop(grace=0.2)


def test_call_without_a_client_certificate_is_refused(controller: Controller) -> None:
    bundle = admin_credentials(controller).bundle_pem
    with (
        AdminClient(grpc_address(controller), Credentials(bundle)) as client,
        pytest.raises(UnavailableError),
    ):
        client.status()


def test_garbage_json_document_is_invalid_argument_not_a_crash(controller: Controller) -> None:
    creds = admin_credentials(controller)
    channel = grpc.secure_channel(
        grpc_address(controller), creds.channel_credentials(), options=CHANNEL_OPTIONS
    )
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.ApplyRequest(
        documents=[admin_pb2.Document(source="x", index=0, body_json="{{{")]
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.Apply(request, timeout=5)
    channel.close()
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=JSON_VALUES)
def test_garbage_next_to_valid_resources_never_crashes_or_half_applies(
    controller: Controller, garbage: object
) -> None:
    with admin(controller) as client:
        before = controller.store.revision()
        try:
            client.apply(docs(namespace_doc("fuzz"), garbage))
        except UsageError:
            assert controller.store.revision() == before
        assert controller.store.revision() == 0  # garbage can never be a valid second resource
        assert client.status().trust_domain == "cluster.local"  # and the controller still serves


def test_metrics_and_healthz_are_served_over_http(controller: Controller) -> None:
    with admin(controller) as client:
        client.apply(docs(namespace_doc("shop")))
    base = f"http://127.0.0.1:{controller.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert "weft_controller_revision 1.0" in text
    assert 'weft_controller_resources{kind="Namespace"} 1.0' in text
    assert 'weft_controller_applies_total{result="applied"} 1.0' in text


def test_workload_address_already_used_is_refused_naming_both(controller: Controller) -> None:
    with admin(controller) as client:
        client.apply(docs(workload_doc("w1", "n1", ip="10.1.0.1")))
        with pytest.raises(UsageError) as exc:
            client.apply(docs(workload_doc("w2", "n2", ip="10.1.0.1")))
        assert (
            "Workload/shop/w2: endpoint address 10.1.0.1 is already used by Workload/shop/w1"
            in str(exc.value)
        )
        assert len(client.get(Kind.WORKLOAD)) == 1


def test_same_vip_twice_in_one_batch_is_refused(controller: Controller) -> None:
    with admin(controller) as client, pytest.raises(UsageError, match=r"service VIP 10\.96\.0\.9"):
        client.apply(
            docs(service_doc("a", "a", vip="10.96.0.9"), service_doc("b", "b", vip="10.96.0.9"))
        )


def test_reapplying_or_moving_an_address_is_not_a_conflict(controller: Controller) -> None:
    with admin(controller) as client:
        client.apply(docs(workload_doc("w1", "n1", ip="10.1.0.1")))
        client.apply(docs(workload_doc("w1", "n1", ip="10.1.0.1")))
        # w1 moves away from .1 and w2 takes it, in one batch.
        client.apply(
            docs(workload_doc("w1", "n1", ip="10.1.0.7"), workload_doc("w2", "n1", ip="10.1.0.1"))
        )
        assert len(client.get(Kind.WORKLOAD)) == 2
