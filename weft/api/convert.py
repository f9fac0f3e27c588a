"""The one module converting protobuf messages to and from the domain model.

Controller, agent and CLI all go through here; a resource on the wire is its normalized document
in JSON, re-validated by weft.resources on the way in, so no code outside this module touches
wire types' fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weft.api.v1 import admin_pb2, discovery_pb2, resources_pb2
from weft.model import (
    AgentReport,
    ControllerStatus,
    Kind,
    NodeCertificateReport,
    ResourceKey,
)
from weft.resources import Document, ParsedResource, parse_stored


class WireFormatError(ValueError):
    """A message from the peer that does not decode into the model."""


def key_to_proto(key: ResourceKey) -> resources_pb2.ResourceKey:
    return resources_pb2.ResourceKey(kind=key.kind.value, namespace=key.namespace, name=key.name)


def key_from_proto(message: resources_pb2.ResourceKey) -> ResourceKey:
    try:
        return ResourceKey(Kind(message.kind), message.namespace, message.name)
    except ValueError as err:
        raise WireFormatError(f"unknown resource kind {message.kind!r}") from err


def document_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def resource_to_proto(
    key: ResourceKey, document: Mapping[str, Any] | str, revision: int
) -> resources_pb2.Resource:
    text = document if isinstance(document, str) else document_json(document)
    return resources_pb2.Resource(key=key_to_proto(key), revision=revision, document_json=text)


@dataclass(frozen=True)
class ReceivedResource:
    """A resource as received: the model object, its normalized document and its revision."""

    parsed: ParsedResource
    revision: int


def resource_from_proto(message: resources_pb2.Resource) -> ReceivedResource:
    try:
        document = json.loads(message.document_json)
    except ValueError as err:
        raise WireFormatError(f"resource {message.key.name!r}: document is not JSON") from err
    try:
        parsed = parse_stored(document)
    except Exception as err:
        raise WireFormatError(f"resource {message.key.name!r}: {err}") from err
    if parsed.key != key_from_proto(message.key):
        raise WireFormatError(f"resource key {parsed.key} does not match its document")
    return ReceivedResource(parsed, message.revision)


# --- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigUpdate:
    """One versioned discovery update, in model types."""

    version: int
    snapshot: bool
    upserts: tuple[ReceivedResource, ...]
    removals: tuple[ResourceKey, ...]


def update_to_proto(
    version: int,
    snapshot: bool,
    upserts: Iterable[resources_pb2.Resource],
    removals: Iterable[ResourceKey],
) -> discovery_pb2.WatchUpdate:
    return discovery_pb2.WatchUpdate(
        version=version,
        snapshot=snapshot,
        upserts=upserts,
        removals=[key_to_proto(k) for k in removals],
    )


def update_from_proto(message: discovery_pb2.WatchUpdate) -> ConfigUpdate:
    return ConfigUpdate(
        version=message.version,
        snapshot=message.snapshot,
        upserts=tuple(resource_from_proto(r) for r in message.upserts),
        removals=tuple(key_from_proto(k) for k in message.removals),
    )


def subscribe_request(node: str, waypoint: str = "") -> discovery_pb2.WatchRequest:
    """An agent subscribes for its node; a waypoint also names itself ("namespace/name")."""
    return discovery_pb2.WatchRequest(
        subscribe=discovery_pb2.Subscribe(node=node, waypoint=waypoint)
    )


def ack_request(version: int, error: str = "") -> discovery_pb2.WatchRequest:
    return discovery_pb2.WatchRequest(ack=discovery_pb2.Ack(version=version, error=error))


# --- admin -------------------------------------------------------------------------------------


def documents_to_proto(documents: Sequence[Document]) -> list[admin_pb2.Document]:
    """Bodies must be JSON-serializable: validate them with weft.resources first."""
    return [
        admin_pb2.Document(source=d.source, index=d.index, body_json=json.dumps(d.body))
        for d in documents
    ]


def documents_from_proto(messages: Iterable[admin_pb2.Document]) -> list[Document]:
    documents = []
    for m in messages:
        try:
            body = json.loads(m.body_json)
        except ValueError:
            # Let validation report it like any other bad document, with file and index.
            body = m.body_json
        documents.append(Document(m.source, m.index, body))
    return documents


# --- status ------------------------------------------------------------------------------------


def status_to_proto(status: ControllerStatus) -> admin_pb2.StatusResponse:
    return admin_pb2.StatusResponse(
        trust_domain=status.trust_domain,
        revision=status.revision,
        resources=status.resources,
        started_at=status.started_at,
        agents=[
            admin_pb2.AgentStatus(
                node=a.node,
                connected=a.connected,
                sent_version=a.sent_version,
                acked_version=a.acked_version,
                lag=a.lag,
                nacked_version=a.nacked_version,
                nack_error=a.nack_error,
                connected_since=a.connected_since,
            )
            for a in status.agents
        ],
        node_certificates=[
            admin_pb2.NodeCertificate(node=c.node, serial=c.serial, not_after=c.not_after)
            for c in status.node_certificates
        ],
        root_not_after=list(status.root_not_after),
    )


def status_from_proto(message: admin_pb2.StatusResponse) -> ControllerStatus:
    return ControllerStatus(
        trust_domain=message.trust_domain,
        revision=message.revision,
        resources=message.resources,
        started_at=message.started_at,
        agents=tuple(
            AgentReport(
                node=a.node,
                connected=a.connected,
                sent_version=a.sent_version,
                acked_version=a.acked_version,
                lag=a.lag,
                nacked_version=a.nacked_version,
                nack_error=a.nack_error,
                connected_since=a.connected_since,
            )
            for a in message.agents
        ),
        node_certificates=tuple(
            NodeCertificateReport(c.node, c.serial, c.not_after) for c in message.node_certificates
        ),
        root_not_after=tuple(message.root_not_after),
    )
