"""bench.pki and bench.peer_configs: the stunnel pair's mTLS material and the peers' configs.

The configs are checked by the real tools where they can check without running (haproxy -c).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench.peer_configs import haproxy_config, stunnel_client_config, stunnel_server_config
from bench.pki import CLIENT_NAME, SERVER_NAME, create_peer_pki

ROUTES = {"echo": ("10.77.0.11", 20001, "10.77.0.12", 21001)}


def test_peer_pki_issues_p256_server_and_client_certificates_from_one_ca(tmp_path: Path) -> None:
    pki = create_peer_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    for cert_path, name, usage in (
        (pki.server_cert, SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH),
        (pki.client_cert, CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        assert usage in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert pki.server_key.stat().st_mode & 0o077 == 0  # keys are not readable by others


def test_stunnel_server_requires_and_verifies_client_certificates_over_tls13(
    tmp_path: Path,
) -> None:
    text = stunnel_server_config(create_peer_pki(tmp_path), ROUTES)
    assert "requireCert = yes" in text
    assert "verifyChain = yes" in text
    assert "sslVersionMin = TLSv1.3" in text
    assert "accept = 10.77.0.11:20001" in text
    assert "connect = 10.77.0.12:21001" in text


def test_stunnel_client_presents_its_certificate_and_checks_the_servers_name(
    tmp_path: Path,
) -> None:
    pki = create_peer_pki(tmp_path)
    text = stunnel_client_config(pki, ROUTES)
    assert "client = yes" in text
    assert f"cert = {pki.client_cert}" in text
    assert f"checkHost = {SERVER_NAME}" in text
    assert "sslVersionMin = TLSv1.3" in text


@pytest.mark.skipif(shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None, reason="no haproxy")
def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        haproxy_config(
            "127.0.0.1", http=(22080, "127.0.0.1", 8080), grpc=(22090, "127.0.0.1", 9090)
        )
    )
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    assert haproxy is not None
    proc = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "proto h2" in config.read_text()
