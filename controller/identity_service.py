"""IdentityService: node join with one-time tokens, and node-authorized certificate signing."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import NoReturn

import grpc

from controller.callers import require_certificate
from controller.catalog import Catalog
from controller.discovery import DiscoveryHub
from controller.issuance import IssuanceDeniedError, authorize_svid
from controller.metrics import ControllerMetrics
from controller.store import NodeCertificate, Store, TokenRefusedError
from controller.trust import TrustProvider
from controller.waypoints import (
    WaypointRefusedError,
    find_waypoint,
    subject_waypoint,
    waypoint_identity,
    waypoint_of_identity,
)
from weft.api.v1 import identity_pb2, identity_pb2_grpc
from weft.pki import CertificateError, cert_to_pem, node_uri, parse_csr

AUDIT = logging.getLogger("weft.controller.audit")


@dataclass(frozen=True)
class IssuancePolicy:
    svid_lifetime: dt.timedelta = dt.timedelta(hours=24)
    node_lifetime: dt.timedelta = dt.timedelta(hours=24)


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        store: Store,
        trust: TrustProvider,
        hub: DiscoveryHub,
        metrics: ControllerMetrics,
        policy: IssuancePolicy,
    ) -> None:
        self.store = store
        self.trust = trust
        self.hub = hub
        self.metrics = metrics
        self.policy = policy

    @property
    def catalog(self) -> Catalog:
        return self.hub.catalog

    def _bundle(self) -> identity_pb2.TrustBundle:
        return identity_pb2.TrustBundle(
            trust_domain=self.trust.trust_domain,
            root_pem=[cert_to_pem(c).decode() for c in self.trust.bundle()],
        )

    def _refuse(
        self, context: grpc.ServicerContext, kind: str, node: str, identity: str, reason: str
    ) -> NoReturn:
        AUDIT.warning("certificate refused: node=%s identity=%s reason=%s", node, identity, reason)
        self.metrics.certificates_denied.labels(kind).inc()
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"refused {identity}: {reason}")

    def _sign_node(self, node: str, csr_pem: bytes) -> list[str]:
        request = parse_csr(csr_pem)
        now = self.trust.now()
        chain = self.trust.authority().issue(
            request.public_key,
            node_uri(self.trust.trust_domain, node),
            self.policy.node_lifetime,
            now,
        )
        self.store.record_node_certificate(
            NodeCertificate(
                node,
                f"{chain[0].serial_number:x}",
                chain[0].not_valid_after_utc.timestamp(),
                now.timestamp(),
            )
        )
        self.metrics.certificates_issued.labels("node").inc()
        AUDIT.info("node certificate issued: node=%s serial=%x", node, chain[0].serial_number)
        return [cert_to_pem(c).decode() for c in chain]

    def JoinNode(  # noqa: N802 - gRPC method name
        self, request: identity_pb2.JoinNodeRequest, context: grpc.ServicerContext
    ) -> identity_pb2.JoinNodeResponse:
        csr_pem = request.csr_pem.encode()
        try:
            csr = parse_csr(csr_pem)
        except CertificateError as err:
            self._refuse(context, "node", "?", "?", f"malformed CSR: {err}")
        try:
            node = self.store.redeem_join_token(request.token, self.trust.now().timestamp())
        except TokenRefusedError as err:
            self._refuse(context, "node", "?", csr.uri, str(err))
        waypoint = subject_waypoint(node)
        if waypoint is not None:
            return self._join_waypoint(context, node, waypoint, csr_pem)
        expected = node_uri(self.trust.trust_domain, node)
        if csr.uri != expected:
            self._refuse(context, "node", node, csr.uri, f"the token is for {expected}")
        chain = self._sign_node(node, csr_pem)
        return identity_pb2.JoinNodeResponse(
            node=node, cert_chain_pem=chain, trust_bundle=self._bundle()
        )

    def _join_waypoint(
        self,
        context: grpc.ServicerContext,
        subject: str,
        reference: tuple[str, str],
        csr_pem: bytes,
    ) -> identity_pb2.JoinNodeResponse:
        """A waypoint's token buys its own SVID (not a node certificate)."""
        requested = _csr_uri(csr_pem) or "?"
        try:
            with self.hub.lock:
                waypoint = find_waypoint(self.catalog, *reference)
        except WaypointRefusedError as err:
            self._refuse(context, "waypoint", subject, requested, str(err))
        expected = waypoint_identity(waypoint, self.trust.trust_domain).uri
        if requested != expected:
            self._refuse(context, "waypoint", subject, requested, f"the token is for {expected}")
        chain = self._sign_svid(subject, csr_pem, 0)
        return identity_pb2.JoinNodeResponse(
            node=subject, cert_chain_pem=chain, trust_bundle=self._bundle()
        )

    def _sign_svid(self, who: str, csr_pem: bytes, validity_seconds: int) -> list[str]:
        csr = parse_csr(csr_pem)
        lifetime = self.policy.svid_lifetime
        if validity_seconds > 0:
            lifetime = min(lifetime, dt.timedelta(seconds=validity_seconds))
        certs = self.trust.authority().issue(csr.public_key, csr.uri, lifetime, self.trust.now())
        self.metrics.certificates_issued.labels("workload").inc()
        AUDIT.info(
            "certificate issued: node=%s identity=%s serial=%x expires=%s",
            who,
            csr.uri,
            certs[0].serial_number,
            certs[0].not_valid_after_utc.isoformat(),
        )
        return [cert_to_pem(c).decode() for c in certs]

    def CreateCertificate(  # noqa: N802 - gRPC method name
        self, request: identity_pb2.CreateCertificateRequest, context: grpc.ServicerContext
    ) -> identity_pb2.CreateCertificateResponse:
        caller = require_certificate(context, self.trust.trust_domain)
        node = caller.node
        csr_pem = request.csr_pem.encode()
        if node is None and not caller.admin:
            return self._renew_waypoint(context, caller.uri, csr_pem, request.validity_seconds)
        if node is None:
            self._refuse(context, "workload", caller.uri, "?", "only node certificates may ask")
        if _csr_uri(csr_pem) == node_uri(self.trust.trust_domain, node):
            chain = self._sign_node(node, csr_pem)
            return identity_pb2.CreateCertificateResponse(
                cert_chain_pem=chain, trust_bundle=self._bundle()
            )
        with self.hub.lock:
            workloads = self.catalog.workloads_on(node)
        try:
            identity, csr = authorize_svid(node, csr_pem, workloads, self.trust.trust_domain)
        except IssuanceDeniedError as err:
            self._refuse(context, "workload", node, err.identity, err.reason)
        del identity, csr  # authorized: sign exactly what was asked for
        return identity_pb2.CreateCertificateResponse(
            cert_chain_pem=self._sign_svid(node, csr_pem, request.validity_seconds),
            trust_bundle=self._bundle(),
        )

    def _renew_waypoint(
        self, context: grpc.ServicerContext, caller: str, csr_pem: bytes, validity_seconds: int
    ) -> identity_pb2.CreateCertificateResponse:
        """A waypoint's SVID may renew exactly its own identity, while its Waypoint exists."""
        requested = _csr_uri(csr_pem) or "?"
        try:
            with self.hub.lock:
                waypoint = waypoint_of_identity(self.catalog, caller, self.trust.trust_domain)
        except WaypointRefusedError as err:
            self._refuse(context, "waypoint", caller, requested, str(err))
        if requested != caller:
            self._refuse(context, "waypoint", caller, requested, "a waypoint renews only itself")
        who = f"waypoint:{waypoint.metadata.namespace}/{waypoint.metadata.name}"
        return identity_pb2.CreateCertificateResponse(
            cert_chain_pem=self._sign_svid(who, csr_pem, validity_seconds),
            trust_bundle=self._bundle(),
        )

    def GetTrustBundle(  # noqa: N802 - gRPC method name
        self, request: identity_pb2.GetTrustBundleRequest, context: grpc.ServicerContext
    ) -> identity_pb2.TrustBundle:
        del request, context  # public information: anyone who can reach the port may read it
        return self._bundle()


def _csr_uri(csr_pem: bytes) -> str | None:
    try:
        return parse_csr(csr_pem).uri
    except CertificateError:
        return None
