"""AdminService: apply (validated, all-or-nothing), get, delete and status, for the admin only."""

from __future__ import annotations

import time

import grpc

from controller.callers import require_admin
from controller.conflicts import address_conflicts
from controller.discovery import DiscoveryHub
from controller.metrics import ControllerMetrics
from controller.store import Store
from controller.trust import TrustProvider
from weft.api.convert import (
    WireFormatError,
    documents_from_proto,
    key_from_proto,
    key_to_proto,
    status_to_proto,
)
from weft.api.v1 import admin_pb2, admin_pb2_grpc
from weft.model import AgentReport, ControllerStatus, Kind, NodeCertificateReport
from weft.resources import InvalidResourcesError, parse_documents


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        store: Store,
        trust: TrustProvider,
        hub: DiscoveryHub,
        metrics: ControllerMetrics,
        started_at: float,
    ) -> None:
        self.store = store
        self.trust = trust
        self.hub = hub
        self.metrics = metrics
        self.started_at = started_at

    def _observe_catalog(self) -> None:
        catalog = self.hub.catalog
        self.metrics.revision.set(catalog.revision)
        for kind, count in catalog.counts().items():
            self.metrics.resources.labels(kind.value).set(count)

    def Apply(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ApplyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ApplyResponse:
        require_admin(context, self.trust.trust_domain)
        # Never trust the CLI's validation: every document is checked again here.
        try:
            batch = parse_documents(documents_from_proto(request.documents))
        except InvalidResourcesError as err:
            self.metrics.applies.labels("invalid").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
        with self.hub.lock:
            conflicts = address_conflicts(batch, self.hub.catalog.address_owner)
            if conflicts:
                self.metrics.applies.labels("invalid").inc()
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{len(conflicts)} address conflict(s), nothing was applied:\n  "
                    + "\n  ".join(conflicts),
                )
            if request.dry_run:
                return admin_pb2.ApplyResponse(revision=self.hub.catalog.revision)
            result = self.store.apply(batch)
            changed = set(result.created) | set(result.configured)
            started = time.perf_counter()
            if changed:
                self.hub.catalog.apply(batch, changed, result.revision)
                self.hub.publish(changed)
            self.metrics.push_seconds.observe(time.perf_counter() - started)
        self.metrics.applies.labels("applied").inc()
        self._observe_catalog()
        return admin_pb2.ApplyResponse(
            revision=result.revision,
            created=[key_to_proto(k) for k in result.created],
            configured=[key_to_proto(k) for k in result.configured],
            unchanged=[key_to_proto(k) for k in result.unchanged],
        )

    def Get(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.GetRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetResponse:
        require_admin(context, self.trust.trust_domain)
        kinds = list(Kind)
        if request.kind:
            try:
                kinds = [Kind(request.kind)]
            except ValueError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind!r}")
        with self.hub.lock:
            catalog = self.hub.catalog
            entries = [
                e
                for kind in kinds
                for e in catalog.of_kind(kind)
                if (not request.namespace or e.key.namespace in ("", request.namespace))
                and (not request.name or e.key.name == request.name)
            ]
            entries.sort(key=lambda e: e.key)
            return admin_pb2.GetResponse(
                revision=catalog.revision, resources=[e.wire for e in entries]
            )

    def Delete(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeleteResponse:
        require_admin(context, self.trust.trust_domain)
        try:
            keys = [key_from_proto(k) for k in request.keys]
        except WireFormatError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        with self.hub.lock:
            revision, deleted = self.store.delete(keys)
            if deleted:
                self.hub.catalog.delete(deleted, revision)
                self.hub.publish(set(deleted))
        self._observe_catalog()
        return admin_pb2.DeleteResponse(
            revision=revision, deleted=[key_to_proto(k) for k in deleted]
        )

    def Status(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.StatusResponse:
        require_admin(context, self.trust.trust_domain)
        revision = self.hub.catalog.revision
        status = ControllerStatus(
            trust_domain=self.trust.trust_domain,
            revision=revision,
            resources=len(self.hub.catalog),
            started_at=self.started_at,
            agents=tuple(
                AgentReport(
                    node=a.node,
                    connected=a.connected,
                    sent_version=a.sent_version,
                    acked_version=a.acked_version,
                    lag=max(0, revision - a.acked_version),
                    nacked_version=a.nacked_version,
                    nack_error=a.nack_error,
                    connected_since=a.connected_since,
                )
                for a in self.hub.agents()
            ),
            node_certificates=tuple(
                NodeCertificateReport(c.node, c.serial, c.not_after)
                for c in self.store.node_certificates()
            ),
            root_not_after=tuple(c.not_valid_after_utc.timestamp() for c in self.trust.bundle()),
        )
        return status_to_proto(status)
