"""X.509 for the mesh: keys, CSRs, SPIFFE URI SANs and chain verification against a trust bundle.

Shared by the controller (which signs) and the agent (which builds CSRs and checks peers). A CSR
carries only a public key, so no private key ever leaves the process that generated it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_PATH_PREFIX = "/weft/node/"
ADMIN_PATH = "/weft/admin"
CONTROLLER_PATH = "/weft/controller"
# The name clients verify the controller's certificate against, whatever address they dial.
CONTROLLER_SERVER_NAME = "weft-controller"


class CertificateError(ValueError):
    """A CSR or certificate that is malformed or not acceptable; the message says why."""


PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    """An ECDSA P-256 key: the only key type the mesh issues or accepts."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError("the private key is not ECDSA P-256")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert_to_pem(c) for c in certs)


def certs_from_pem(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise CertificateError(f"not a PEM certificate list: {err}") from err


def node_uri(trust_domain: str, node: str) -> str:
    return f"spiffe://{trust_domain}{NODE_PATH_PREFIX}{node}"


def admin_uri(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}{ADMIN_PATH}"


def build_csr(key: PrivateKey, uri: str) -> bytes:
    """A PEM CSR whose only subject alternative name is `uri` (a SPIFFE ID)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CsrRequest:
    """What a well-formed CSR asks for: a P-256 public key and exactly one URI SAN."""

    public_key: ec.EllipticCurvePublicKey
    uri: str


def parse_csr(pem: bytes) -> CsrRequest:
    """Check the CSR's signature, key type and SAN; raise CertificateError saying what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as err:
        raise CertificateError(f"not a PEM certificate signing request ({err})") from err
    if not csr.is_signature_valid:
        raise CertificateError("the CSR signature does not verify (proof of key possession)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError("the CSR key is not ECDSA P-256")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the CSR has no subject alternative name") from None
    except ValueError as err:
        raise CertificateError(f"the CSR extensions are malformed ({err})") from err
    names = list(san)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(names) != 1:
        raise CertificateError("the CSR must carry exactly one SAN, a URI (the SPIFFE ID)")
    return CsrRequest(key, uris[0])


def uri_san(cert: x509.Certificate) -> str:
    """The certificate's single URI SAN; CertificateError if there is none or more than one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateError(f"the certificate has {len(uris)} URI SANs; exactly one expected")
    return uris[0]


def node_of(uri: str, trust_domain: str) -> str | None:
    """The node name in a node certificate's URI, or None if `uri` names no node."""
    prefix = f"spiffe://{trust_domain}{NODE_PATH_PREFIX}"
    name = uri[len(prefix) :] if uri.startswith(prefix) else ""
    return name if name and "/" not in name else None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Verify leaf -> intermediates -> a root of `bundle` at time `now`; return the path.

    Checks signatures, validity windows and that every issuer is a CA. Raises CertificateError.
    """
    path = [leaf]
    current = leaf
    pool = list(intermediates)
    for _ in range(len(pool) + 2):
        _check_window(current, now)
        anchor = next((r for r in bundle if _issued_by(current, r)), None)
        if anchor is not None:
            _check_window(anchor, now)
            if current.public_bytes(serialization.Encoding.DER) != anchor.public_bytes(
                serialization.Encoding.DER
            ):
                path.append(anchor)
            return path
        issuer = next((c for c in pool if _issued_by(current, c)), None)
        if issuer is None:
            raise CertificateError(
                f"no issuer of '{current.issuer.rfc4514_string() or current.serial_number}' "
                "in the chain or the trust bundle"
            )
        _require_ca(issuer)
        pool.remove(issuer)
        path.append(issuer)
        current = issuer
    raise CertificateError("the certificate chain is too long or loops")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    _require_ca(issuer)
    return True


def _require_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateError("an issuer in the chain is not a CA (no basicConstraints)") from None
    if not constraints.ca:
        raise CertificateError("an issuer in the chain is not a CA")


def _check_window(cert: x509.Certificate, now: dt.datetime) -> None:
    now = _aware(now)
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"certificate {cert.serial_number:x} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate {cert.serial_number:x} expired at {cert.not_valid_after_utc.isoformat()}"
        )


def subject_for(trust_domain: str, common_name: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)]
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


LEAF_USAGES = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


CA_USAGES = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_self_signed_ca(
    name: x509.Name,
    key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None = None,
) -> x509.Certificate:
    """A self-signed CA certificate (a mesh root, or a throwaway root for tests and benchmarks)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(CA_USAGES, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
