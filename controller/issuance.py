"""Node authorization of certificate requests: a node may obtain SVIDs only for its own workloads.

Pure decision logic: the gRPC layer supplies the caller's node (from its verified node certificate),
the CSR and the registered workloads, and logs the audit line this module's refusal carries.
"""

from __future__ import annotations

from collections.abc import Iterable

from weft.identity import Identity, InvalidIdentityError
from weft.model import Workload
from weft.pki import CertificateError, CsrRequest, parse_csr


class IssuanceDeniedError(Exception):
    """The request is refused; `reason` goes to the caller and to the audit log."""

    def __init__(self, reason: str, identity: str = "?") -> None:
        super().__init__(reason)
        self.reason = reason
        self.identity = identity


def authorize_svid(
    node: str, csr_pem: bytes, workloads: Iterable[Workload], trust_domain: str
) -> tuple[Identity, CsrRequest]:
    """The identity to sign for `node`'s CSR, or IssuanceDeniedError saying why not.

    Allowed only when a workload registered on `node` runs as exactly that identity, so a
    compromised node can mint identities of its own workloads and of nobody else.
    """
    try:
        request = parse_csr(csr_pem)
    except CertificateError as err:
        raise IssuanceDeniedError(f"malformed CSR: {err}") from err
    try:
        identity = Identity.parse(request.uri)
    except InvalidIdentityError as err:
        raise IssuanceDeniedError(f"not a workload SPIFFE ID: {err}", request.uri) from err
    if identity.trust_domain != trust_domain:
        raise IssuanceDeniedError(
            f"trust domain {identity.trust_domain!r} is not this mesh's {trust_domain!r}",
            identity.uri,
        )
    local = [w for w in workloads if w.node == node and w.identity(trust_domain) == identity]
    if not local:
        raise IssuanceDeniedError(
            f"no workload with this identity is registered on node {node!r}", identity.uri
        )
    return identity, request
