"""The controller's real CA, signing CSRs in-process: stands in for IdentityService over gRPC."""

from __future__ import annotations

import datetime as dt

from controller.ca import CertificateAuthority, create_root
from weft.controller_client import IssuedCertificate
from weft.pki import certs_to_pem, parse_csr


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class InProcessIssuer:
    """Stands in for IdentityService.CreateCertificate: signs each CSR with a real CA."""

    def __init__(self, lifetime: dt.timedelta) -> None:
        root, key = create_root("cluster.local", now())
        self.ca = CertificateAuthority("cluster.local", root, key)
        self.lifetime = lifetime
        self.calls = 0
        self.fail_next = 0

    @property
    def bundle(self) -> bytes:
        return certs_to_pem([self.ca.cert])

    async def __call__(self, csr: bytes) -> IssuedCertificate:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("controller unreachable (scripted)")
        request = parse_csr(csr)
        chain = self.ca.issue(request.public_key, request.uri, self.lifetime, now())
        return IssuedCertificate(certs_to_pem(chain), self.bundle)

    def rotate(self) -> None:
        root, key = create_root("cluster.local", now())
        self.ca = CertificateAuthority("cluster.local", root, key)
