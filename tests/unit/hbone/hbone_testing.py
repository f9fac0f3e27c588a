"""Helpers for HBONE tests: a throwaway mesh PKI (ECDSA P-256 CA, SPIFFE SVIDs), a uvloop runner."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from weft.identity import Identity
from weft.pki import build_self_signed_ca
from weft.tls import Svid

T = TypeVar("T")


@dataclass(frozen=True)
class TestCa:
    """A self-signed root that issues SVIDs, like the controller's CA."""

    __test__ = False  # not a test class despite the name

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def bundle_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        identity: Identity | None,
        *,
        extra_uris: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
    ) -> Svid:
        """An SVID whose URI SANs are `identity` (if any) and `extra_uris`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(uri)
            for uri in ((identity.uri,) if identity else ()) + extra_uris
        ]
        names += [x509.DNSName(name) for name in dns_names]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
        certificate = builder.sign(self.key, hashes.SHA256())
        return Svid(
            chain_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def make_ca(name: str = "weft test root") -> TestCa:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = build_self_signed_ca(
        subject, key, now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=1)
    )
    return TestCa(key, certificate)


CLIENT_ID = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
SERVER_ID = Identity.parse("spiffe://cluster.local/ns/weft-system/sa/agent-node-b")


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
    """Run `main()` on a fresh uvloop loop with a time bound, as the agent runs."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())
