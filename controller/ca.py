"""The certificate authority: signs SVIDs, node and controller certificates (no I/O, time injected).

The signer is either a self-signed ECDSA P-256 root made by `weft controller init` or an
operator-supplied intermediate whose chain is sent with every certificate issued.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from weft.pki import (
    LEAF_USAGES,
    CertificateError,
    PrivateKey,
    build_self_signed_ca,
    generate_key,
    subject_for,
    verify_chain,
)

ROOT_LIFETIME = dt.timedelta(days=3650)
DEFAULT_SVID_LIFETIME = dt.timedelta(hours=24)
# Leaves start a little in the past so that a peer whose clock lags slightly still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=1)


def _ski(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def create_root(trust_domain: str, now: dt.datetime) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root for `trust_domain`, valid ten years."""
    key = generate_key()
    name = subject_for(trust_domain, f"Weft root CA {now:%Y-%m-%d %H:%M:%S}")
    cert = build_self_signed_ca(name, key, now - CLOCK_SKEW, now + ROOT_LIFETIME)
    return cert, key


@dataclass(frozen=True)
class CertificateAuthority:
    """Signs leaves with `cert`/`key`; `chain` is cert's issuers up to (excluding) the root."""

    trust_domain: str
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    def check(self, bundle: Sequence[x509.Certificate], now: dt.datetime) -> None:
        """Fail unless the signer chains to `bundle` and its key matches its certificate."""
        if self.cert.public_key() != self.key.public_key():
            raise CertificateError("the CA private key does not match the CA certificate")
        verify_chain(self.cert, self.chain, bundle, now)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        uri: str,
        lifetime: dt.timedelta,
        now: dt.datetime,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
    ) -> list[x509.Certificate]:
        """A leaf for `uri` (its only URI SAN) followed by the signer's chain."""
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        sans += [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(a) for a in ip_addresses]
        leaf = (
            x509.CertificateBuilder()
            .subject_name(subject_for(self.trust_domain))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(LEAF_USAGES, critical=False)
            # SPIFFE: with no meaningful subject, the SAN extension is critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(_ski(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return [leaf, self.cert, *self.chain] if not _self_signed(self.cert) else [leaf]

    def issue_with_new_key(
        self,
        uri: str,
        lifetime: dt.timedelta,
        now: dt.datetime,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPv4Address | IPv6Address] = (),
    ) -> tuple[list[x509.Certificate], PrivateKey]:
        """For the controller's own and the admin credential: key generated here, never sent."""
        key = generate_key()
        chain = self.issue(
            key.public_key(), uri, lifetime, now, dns_names=dns_names, ip_addresses=ip_addresses
        )
        return chain, key


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject
