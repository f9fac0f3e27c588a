"""Who is calling: the verified client certificate of a gRPC call, as a node or the admin."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from cryptography import x509

from weft.pki import CertificateError, admin_uri, node_of, uri_san


@dataclass(frozen=True)
class Caller:
    uri: str
    node: str | None = None  # set for a node certificate
    admin: bool = False


def caller_of(context: grpc.ServicerContext, trust_domain: str) -> Caller | None:
    """The caller named by its client certificate (already verified by TLS against the bundle)."""
    # grpc-stubs types the values as bytes; grpcio really gives a list of bytes per property.
    raw: object = context.auth_context().get("x509_pem_cert")
    pems = [p for p in raw if isinstance(p, bytes)] if isinstance(raw, list) else []
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        uri = uri_san(cert)
    except (ValueError, CertificateError):
        return None
    if uri == admin_uri(trust_domain):
        return Caller(uri, admin=True)
    return Caller(uri, node=node_of(uri, trust_domain))


def require_certificate(context: grpc.ServicerContext, trust_domain: str) -> Caller:
    """Any verified client certificate: a node, the admin, or a workload SVID (a waypoint's)."""
    caller = caller_of(context, trust_domain)
    if caller is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required (mTLS)")
    return caller


def require_node(context: grpc.ServicerContext, trust_domain: str) -> Caller:
    caller = require_certificate(context, trust_domain)
    if caller.node is None and not caller.admin:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller.uri} is not a node")
    return caller


def require_admin(context: grpc.ServicerContext, trust_domain: str) -> Caller:
    caller = caller_of(context, trust_domain)
    if caller is None:
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "the admin credential is required: "
            "pass --admin-credential or set WEFT_ADMIN_CREDENTIAL",
        )
    if not caller.admin:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller.uri} is not the admin")
    return caller
