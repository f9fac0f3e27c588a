"""weft.api: generated code is fresh; protobuf <-> model conversion round-trips and validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weft.api import convert
from weft.api.protogen import API_DIR, generate
from weft.api.v1 import admin_pb2, resources_pb2
from weft.model import (
    AgentReport,
    ControllerStatus,
    Kind,
    NodeCertificateReport,
    ResourceKey,
    Workload,
)
from weft.resources import Document, parse_body

WORKLOAD = {
    "apiVersion": "weft.io/v1",
    "kind": "Workload",
    "metadata": {"name": "a", "namespace": "shop"},
    "spec": {"address": "10.1.0.9", "node": "n1"},
}


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    stale = []
    for fresh in generate(tmp_path):
        committed = API_DIR / fresh.name
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(fresh.name)
    assert not stale, f"run 'make proto' and commit: stale {stale}"


def test_resource_round_trips_through_the_wire() -> None:
    parsed = parse_body(WORKLOAD)
    wire = convert.resource_to_proto(parsed.key, parsed.document, 7).SerializeToString()
    received = convert.resource_from_proto(resources_pb2.Resource.FromString(wire))
    assert received.revision == 7
    assert received.parsed.resource == parsed.resource
    assert isinstance(received.parsed.resource, Workload)


def test_invalid_document_on_the_wire_is_a_wire_format_error() -> None:
    bad = dict(WORKLOAD, spec={"address": "nope", "node": "n1"})
    message = resources_pb2.Resource(
        key=convert.key_to_proto(ResourceKey(Kind.WORKLOAD, "shop", "a")),
        document_json=json.dumps(bad),
    )
    with pytest.raises(convert.WireFormatError, match=r"spec\.address"):
        convert.resource_from_proto(message)


def test_key_mismatch_between_envelope_and_document_is_refused() -> None:
    parsed = parse_body(WORKLOAD)
    message = convert.resource_to_proto(ResourceKey(Kind.WORKLOAD, "shop", "b"), parsed.document, 1)
    with pytest.raises(convert.WireFormatError, match="does not match"):
        convert.resource_from_proto(message)


def test_unknown_kind_is_a_wire_format_error() -> None:
    with pytest.raises(convert.WireFormatError, match="unknown resource kind"):
        convert.key_from_proto(resources_pb2.ResourceKey(kind="Gateway", name="x"))


def test_update_carries_version_upserts_and_removals() -> None:
    parsed = parse_body(WORKLOAD)
    gone = ResourceKey(Kind.SERVICE, "shop", "old")
    message = convert.update_to_proto(
        3, False, [convert.resource_to_proto(parsed.key, parsed.document, 3)], [gone]
    )
    update = convert.update_from_proto(message)
    assert (update.version, update.snapshot, update.removals) == (3, False, (gone,))
    assert update.upserts[0].parsed.key == parsed.key


def test_admin_documents_keep_source_and_index_even_when_not_json() -> None:
    docs = convert.documents_to_proto([Document("f.yaml", 2, WORKLOAD)])
    docs.append(admin_pb2.Document(source="g.yaml", index=0, body_json="{not json"))
    back = convert.documents_from_proto(docs)
    assert back[0] == Document("f.yaml", 2, WORKLOAD)
    assert back[1] == Document("g.yaml", 0, "{not json")


def test_controller_status_round_trips() -> None:
    status = ControllerStatus(
        trust_domain="cluster.local",
        revision=9,
        resources=4,
        started_at=1.5,
        agents=(AgentReport("n1", True, 9, 8, 1, 9, "bad route", 2.0),),
        node_certificates=(NodeCertificateReport("n1", "ab", 3.0),),
        root_not_after=(4.0,),
    )
    wire = convert.status_to_proto(status).SerializeToString()
    assert convert.status_from_proto(admin_pb2.StatusResponse.FromString(wire)) == status
