"""controller.ca_files and controller.issuance: init, intermediates, rotation, node authz."""

from __future__ import annotations

import datetime as dt
import stat
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from controller.ca import CertificateAuthority, create_root
from controller.ca_files import CAFiles
from controller.issuance import IssuanceDeniedError, authorize_svid
from controller.trust import SERVER_CERT_LIFETIME, TrustProvider
from weft.errors import ConflictError
from weft.model import Metadata, Workload
from weft.pki import (
    admin_uri,
    build_csr,
    certs_from_pem,
    certs_to_pem,
    generate_key,
    key_to_pem,
    uri_san,
    verify_chain,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TD = "cluster.local"


def test_init_makes_a_root_an_admin_credential_and_private_files(tmp_path: Path) -> None:
    files = CAFiles(tmp_path)
    ca = files.init(TD, NOW)
    assert files.bundle(NOW) == [ca.cert]
    assert stat.S_IMODE(files.signer_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.admin_pem.stat().st_mode) == 0o600
    admin = certs_from_pem(files.admin_pem.read_bytes())
    assert uri_san(admin[0]) == admin_uri(TD)
    verify_chain(admin[0], admin[1:], files.bundle(NOW), NOW)
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)


def test_ca_keys_stay_0600_in_a_0700_ca_dir_through_a_rotation(tmp_path: Path) -> None:
    files = CAFiles(tmp_path / "state")
    files.init(TD, NOW)
    files.rotate(dt.timedelta(hours=6), NOW + dt.timedelta(hours=1))
    assert stat.S_IMODE(files.signer_key.parent.stat().st_mode) == 0o700
    for secret in (files.signer_key, files.previous_key, files.admin_pem):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # Every write went through a temporary file renamed into place; none may be left behind.
    assert not [p.name for p in files.state_dir.rglob("*") if p.name.endswith(".tmp")]


def test_init_twice_is_a_conflict(tmp_path: Path) -> None:
    CAFiles(tmp_path).init(TD, NOW)
    with pytest.raises(ConflictError):
        CAFiles(tmp_path).init(TD, NOW)


def test_operator_intermediate_signs_and_its_chain_verifies(tmp_path: Path) -> None:
    root, root_key = create_root(TD, NOW)
    inter_key = generate_key()
    # An intermediate made by the operator's own root, as an enterprise PKI would hand over.
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "inter")]))
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(certs_to_pem([inter, root]))
    (tmp_path / "ca.key").write_bytes(key_to_pem(inter_key))
    files = CAFiles(tmp_path / "state")
    ca = files.init(TD, NOW, tmp_path / "ca.pem", tmp_path / "ca.key")
    assert files.bundle(NOW) == [root]
    chain = ca.issue(
        generate_key().public_key(), f"spiffe://{TD}/ns/a/sa/b", dt.timedelta(hours=1), NOW
    )
    assert chain[1] == inter
    verify_chain(chain[0], chain[1:], files.bundle(NOW), NOW)


def test_rotation_trusts_old_and_new_roots_during_the_overlap_only(tmp_path: Path) -> None:
    files = CAFiles(tmp_path)
    old_ca = files.init(TD, NOW)
    uri = f"spiffe://{TD}/ns/shop/sa/a"
    old_leaf = old_ca.issue(generate_key().public_key(), uri, dt.timedelta(hours=24), NOW)
    later = NOW + dt.timedelta(hours=1)
    new_ca = files.rotate(dt.timedelta(hours=6), later)
    new_leaf = new_ca.issue(generate_key().public_key(), uri, dt.timedelta(hours=24), later)
    during = later + dt.timedelta(hours=2)
    bundle = files.bundle(during)
    assert len(bundle) == 2
    verify_chain(old_leaf[0], old_leaf[1:], bundle, during)
    verify_chain(new_leaf[0], new_leaf[1:], bundle, during)
    after = later + dt.timedelta(hours=7)
    assert files.bundle(after) == [new_ca.cert]
    assert files.load().cert == new_ca.cert


def _workload(name: str, node: str, sa: str) -> Workload:
    return Workload(Metadata(name, "shop"), IPv4Address("10.1.0.1"), node, service_account=sa)


WORKLOADS = [_workload("a", "n1", "frontend"), _workload("b", "n2", "cart")]


def test_node_may_get_an_svid_for_its_own_workload() -> None:
    csr = build_csr(generate_key(), f"spiffe://{TD}/ns/shop/sa/frontend")
    identity, _ = authorize_svid("n1", csr, WORKLOADS, TD)
    assert identity.service_account == "frontend"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        (
            f"spiffe://{TD}/ns/shop/sa/cart",
            "no workload with this identity is registered on node 'n1'",
        ),
        (f"spiffe://{TD}/ns/shop/sa/made-up", "no workload with this identity"),
        ("spiffe://evil.org/ns/shop/sa/frontend", "trust domain 'evil.org'"),
        (f"spiffe://{TD}/weft/admin", "not a workload SPIFFE ID"),
    ],
)
def test_node_is_refused_any_other_identity(uri: str, reason: str) -> None:
    with pytest.raises(IssuanceDeniedError, match=reason):
        authorize_svid("n1", build_csr(generate_key(), uri), WORKLOADS, TD)


def test_malformed_csr_is_refused() -> None:
    with pytest.raises(IssuanceDeniedError, match="malformed CSR"):
        authorize_svid("n1", b"not a csr", WORKLOADS, TD)


def test_server_certificate_carries_dns_and_ip_names() -> None:
    root, key = create_root(TD, NOW)
    chain, _ = CertificateAuthority(TD, root, key).issue_with_new_key(
        f"spiffe://{TD}/weft/controller",
        dt.timedelta(days=1),
        NOW,
        dns_names=["weft-controller"],
        ip_addresses=[IPv4Address("127.0.0.1")],
    )
    assert uri_san(chain[0]) == f"spiffe://{TD}/weft/controller"


def test_controller_serving_certificate_is_renewed_at_half_life(tmp_path: Path) -> None:
    files = CAFiles(tmp_path)
    files.init(TD, NOW)
    clock = [NOW]
    trust = TrustProvider(files, clock=lambda: clock[0])
    first = trust.server_pair()
    clock[0] = NOW + SERVER_CERT_LIFETIME / 4
    assert trust.server_pair() == first
    clock[0] = NOW + SERVER_CERT_LIFETIME / 2
    renewed = trust.server_pair()
    assert renewed != first
    leaf = certs_from_pem(renewed[1])[0]
    assert leaf.not_valid_before_utc > NOW
