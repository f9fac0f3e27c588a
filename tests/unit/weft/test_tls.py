"""HBONE TLS contexts: TLS 1.3 only, mutual auth, ALPN h2, SPIFFE identity from the peer cert."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from weft.identity import Identity
from weft.tls import (
    PeerIdentityError,
    Svid,
    TlsMaterialError,
    client_context,
    peer_identity,
    server_context,
)

FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
AGENT = Identity.parse("spiffe://cluster.local/ns/weft-system/sa/agent")


class Root:
    """A throwaway mesh root CA issuing leaf certificates with chosen SANs."""

    def __init__(self, name: str = "test root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, *uris: str, dns: tuple[str, ...] = ()) -> Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        builder = _builder(x509.Name([]), self.certificate.subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
        certificate = builder.sign(self.key, hashes.SHA256())
        return Svid(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


@pytest.fixture(scope="module")
def root() -> Root:
    return Root()


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLSocket | Exception, ssl.SSLSocket | Exception]:
    """Run a TLS handshake over a loopback socketpair; return each side's socket or error."""
    left, right = socket.socketpair()
    results: dict[str, ssl.SSLSocket | Exception] = {}

    def serve() -> None:
        try:
            tls = server.wrap_socket(right, server_side=True)
            results["server"] = tls
            tls.recv(1)  # TLS 1.3 reports a refused client certificate at the first read
        except (ssl.SSLError, OSError) as error:
            results["server"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        tls_client = client.wrap_socket(left)
        tls_client.sendall(b"x")
        results["client"] = tls_client
    except (ssl.SSLError, OSError) as error:
        results["client"] = error
    thread.join(5)
    return results["server"], results["client"]


def test_mutual_handshake_negotiates_tls13_and_h2_and_names_both_peers(root: Root) -> None:
    server, client = handshake(
        server_context(root.issue(AGENT.uri), root.pem),
        client_context(root.issue(FRONTEND.uri), root.pem),
    )
    assert isinstance(server, ssl.SSLSocket)
    assert isinstance(client, ssl.SSLSocket)
    assert client.version() == "TLSv1.3"
    assert client.selected_alpn_protocol() == "h2"
    assert peer_identity(server) == FRONTEND
    assert peer_identity(client) == AGENT


def test_server_refuses_a_client_without_a_certificate(root: Root) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=root.pem.decode())
    server, _ = handshake(server_context(root.issue(AGENT.uri), root.pem), bare)
    assert isinstance(server, ssl.SSLError)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(server)


def test_server_refuses_a_client_from_another_root(root: Root) -> None:
    rogue = Root("rogue")
    server, _ = handshake(
        server_context(root.issue(AGENT.uri), root.pem),
        client_context(rogue.issue(FRONTEND.uri), root.pem),
    )
    assert isinstance(server, ssl.SSLError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(server)


def test_a_bundle_with_two_roots_trusts_both(root: Root) -> None:
    successor = Root("next root")  # a root rotation: the bundle holds the old and the new root
    server, client = handshake(
        server_context(root.issue(AGENT.uri), root.pem + successor.pem),
        client_context(successor.issue(FRONTEND.uri), root.pem + successor.pem),
    )
    assert isinstance(server, ssl.SSLSocket)
    assert isinstance(client, ssl.SSLSocket)
    assert peer_identity(server) == FRONTEND


def test_contexts_refuse_tls12(root: Root) -> None:
    context = client_context(root.issue(FRONTEND.uri), root.pem)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert server_context(root.issue(AGENT.uri), root.pem).verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("uris", "complaint"),
    [
        ((), "has 0 URI SANs"),
        ((FRONTEND.uri, AGENT.uri), "has 2 URI SANs"),
        (("https://shop.example/frontend",), "not a SPIFFE ID"),
        (("spiffe://cluster.local/frontend",), "not a SPIFFE ID"),
    ],
)
def test_peer_identity_needs_exactly_one_spiffe_uri(
    root: Root, uris: tuple[str, ...], complaint: str
) -> None:
    server, _ = handshake(
        server_context(root.issue(AGENT.uri), root.pem),
        client_context(root.issue(*uris, dns=("frontend.shop",)), root.pem),
    )
    assert isinstance(server, ssl.SSLSocket)
    with pytest.raises(PeerIdentityError, match=complaint):
        peer_identity(server)


def test_mismatched_key_is_a_material_error_with_a_hint(root: Root) -> None:
    one, other = root.issue(FRONTEND.uri), root.issue(FRONTEND.uri)
    with pytest.raises(TlsMaterialError, match="cannot be loaded together") as error:
        client_context(Svid(one.chain_pem, other.key_pem), root.pem)
    assert error.value.hint is not None


def test_garbage_trust_bundle_is_a_material_error(root: Root) -> None:
    with pytest.raises(TlsMaterialError, match="trust bundle"):
        client_context(root.issue(FRONTEND.uri), b"not a certificate")


def test_svid_repr_never_shows_the_key(root: Root) -> None:
    svid = root.issue(FRONTEND.uri)
    assert b"PRIVATE KEY" in svid.key_pem
    assert "PRIVATE" not in repr(svid)
    assert "redacted" in repr(svid)


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    sink.write(source.read())


def test_memory_bio_objects_read_and_write_through_the_c_methods(root: Root) -> None:
    """What uvloop's TLS transport drives: wrap_bio objects whose hot methods skip ssl.py."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_context(root.issue(AGENT.uri), root.pem).wrap_bio(
        bios[0], bios[1], server_side=True
    )
    client = client_context(root.issue(FRONTEND.uri), root.pem).wrap_bio(bios[2], bios[3])
    for method in ("read", "write", "pending"):
        assert getattr(client, method).__self__ is client._sslobj  # type: ignore[attr-defined]
    for _ in range(4):  # TLS 1.3 with a client certificate: a few flights each way
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        _pump(bios[3], bios[0])
        _pump(bios[1], bios[2])
    assert peer_identity(server) == FRONTEND
    assert client.write(b"hello") == 5
    _pump(bios[3], bios[0])
    buffer = bytearray(64)
    assert server.read(64, buffer) == 5
    assert bytes(buffer[:5]) == b"hello"
    assert server.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        server.read(64)
