"""weft.pki: CSRs carry one URI SAN and a P-256 key; chains verify only against the bundle."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from controller.ca import CertificateAuthority, create_root
from weft.pki import (
    CertificateError,
    build_csr,
    generate_key,
    node_of,
    node_uri,
    parse_csr,
    uri_san,
    verify_chain,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
URI = "spiffe://cluster.local/ns/shop/sa/frontend"


def test_csr_round_trips_its_uri_and_public_key() -> None:
    key = generate_key()
    request = parse_csr(build_csr(key, URI))
    assert request.uri == URI
    assert request.public_key == key.public_key()


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, names: list[x509.GeneralName]
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_csr_with_two_sans_is_refused() -> None:
    pem = _csr(generate_key(), [x509.UniformResourceIdentifier(URI), x509.DNSName("evil.example")])
    with pytest.raises(CertificateError, match="exactly one SAN"):
        parse_csr(pem)


def test_csr_without_san_is_refused() -> None:
    with pytest.raises(CertificateError, match="no subject alternative name"):
        parse_csr(_csr(generate_key(), []))


def test_csr_with_rsa_key_is_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CertificateError, match="P-256"):
        parse_csr(_csr(rsa_key, [x509.UniformResourceIdentifier(URI)]))


@given(st.binary(max_size=300))
def test_garbage_csr_is_a_certificate_error(data: bytes) -> None:
    with pytest.raises(CertificateError):
        parse_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + data
            + b"\n-----END CERTIFICATE REQUEST-----\n"
        )


def test_node_of_reads_only_node_uris_of_this_trust_domain() -> None:
    assert node_of(node_uri("cluster.local", "n1"), "cluster.local") == "n1"
    assert node_of(node_uri("other.local", "n1"), "cluster.local") is None
    assert node_of(URI, "cluster.local") is None


def test_issued_svid_verifies_against_the_bundle_and_has_only_its_uri_san() -> None:
    root, key = create_root("cluster.local", NOW)
    ca = CertificateAuthority("cluster.local", root, key)
    leaf_key = generate_key()
    [leaf] = ca.issue(leaf_key.public_key(), URI, dt.timedelta(hours=24), NOW)
    assert uri_san(leaf) == URI
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1
    assert leaf.not_valid_after_utc - NOW == dt.timedelta(hours=24)
    assert verify_chain(leaf, [], [root], NOW + dt.timedelta(hours=1)) == [leaf, root]


def test_chain_from_another_root_does_not_verify() -> None:
    root, key = create_root("cluster.local", NOW)
    other_root, _ = create_root("cluster.local", NOW)
    [leaf] = CertificateAuthority("cluster.local", root, key).issue(
        generate_key().public_key(), URI, dt.timedelta(hours=1), NOW
    )
    with pytest.raises(CertificateError, match="no issuer"):
        verify_chain(leaf, [], [other_root], NOW)


def test_expired_leaf_does_not_verify() -> None:
    root, key = create_root("cluster.local", NOW)
    [leaf] = CertificateAuthority("cluster.local", root, key).issue(
        generate_key().public_key(), URI, dt.timedelta(hours=1), NOW
    )
    with pytest.raises(CertificateError, match="expired"):
        verify_chain(leaf, [], [root], NOW + dt.timedelta(hours=2))


def test_leaf_cannot_act_as_an_issuer() -> None:
    root, key = create_root("cluster.local", NOW)
    ca = CertificateAuthority("cluster.local", root, key)
    fake_ca_key = generate_key()
    [fake_ca] = ca.issue(fake_ca_key.public_key(), URI, dt.timedelta(hours=1), NOW)
    rogue = CertificateAuthority("cluster.local", fake_ca, fake_ca_key)
    [leaf, *_] = rogue.issue(
        generate_key().public_key(), URI.replace("frontend", "admin"), dt.timedelta(hours=1), NOW
    )
    with pytest.raises(CertificateError, match="not a CA"):
        verify_chain(leaf, [fake_ca], [root], NOW)
