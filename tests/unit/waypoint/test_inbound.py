"""HBONE into the waypoint: real mutual TLS on loopback, HTTP/1.1 inside each CONNECT stream."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from waypoint.config import (
    AuthorizationAction,
    AuthorizationPolicy,
    BackendRef,
    Route,
    Rule,
    ServiceConfig,
    Source,
    WaypointConfig,
)
from waypoint.http1 import BodyFraming, Data, EndOfMessage, Response, ResponseParser
from waypoint.inbound import HboneInbound, forwarded_for
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord
from weft.hbone import HbonePool, HboneStream, TunnelRefusedError
from weft.identity import Identity
from weft.tls import Svid, client_context, server_context

FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
INTRUDER = Identity.parse("spiffe://cluster.local/ns/other/sa/intruder")
WAYPOINT_ID = Identity.parse("spiffe://cluster.local/ns/shop/sa/waypoint")
REVIEWS_V1 = BackendRef(name="reviews-v1", port=9080, namespace="shop")


class TestCa:
    """A throwaway ECDSA P-256 root issuing SPIFFE SVIDs, as the controller's CA does."""

    __test__ = False

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waypoint test root")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, identity: Identity) -> Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        return Svid(
            chain_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa()


async def hello_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    await writer.drain()
    writer.close()


async def exchange(stream: HboneStream, request: bytes) -> tuple[Response, bytes]:
    """Send one HTTP/1.1 request through the tunnel and read the response."""
    await stream.write(request)
    parser = ResponseParser()
    parser.expect("GET")
    response, body = None, b""
    while True:
        data = await asyncio.wait_for(stream.read(), 5)
        for event in parser.feed(data) if data else parser.feed_eof():
            if isinstance(event, Response):
                response = event
            elif isinstance(event, Data):
                body += event.data
            elif isinstance(event, EndOfMessage):
                assert response is not None
                return response, body


def test_forwarded_for_takes_the_first_address() -> None:
    assert forwarded_for((("forwarded", "for=10.1.1.5;proto=http"),)) == "10.1.1.5"
    assert (
        forwarded_for((("Forwarded", 'for="[2001:db8::1]:4711", for=10.0.0.1'),)) == "2001:db8::1"
    )
    assert forwarded_for((("x-other", "for=1.2.3.4"),)) is None


def test_tunnel_carries_http_and_the_peer_svid_decides_policy(ca: TestCa) -> None:
    policy = AuthorizationPolicy(
        "frontend-only", "shop", AuthorizationAction.ALLOW,
        (Rule(sources=(Source(principals=("cluster.local/ns/shop/sa/frontend",)),)),),
    )  # fmt: skip
    records: list[RequestRecord] = []

    async def main() -> None:
        backend = await asyncio.start_server(hello_backend, "127.0.0.1", 0)
        backend_port = backend.sockets[0].getsockname()[1]
        config = WaypointConfig(
            services=(
                ServiceConfig(
                    "reviews.shop.svc.cluster.local", 9080, (Route("r", backends=(REVIEWS_V1,)),),
                    vips=("10.96.0.10",), authorization_policies=(policy,),
                ),
            )
        )  # fmt: skip
        proxy = WaypointProxy(
            config, {REVIEWS_V1.authority: [f"127.0.0.1:{backend_port}"]}, access_log=records.append
        )
        inbound = HboneInbound(proxy, server_context(ca.issue(WAYPOINT_ID), ca.bundle))
        await inbound.start("127.0.0.1", 0)
        svids = {who: ca.issue(who) for who in (FRONTEND, INTRUDER)}
        pools = {
            who: HbonePool(lambda source, svid=svid: client_context(svid, ca.bundle))
            for who, svid in svids.items()
        }
        peer = ("127.0.0.1", inbound.port)
        request = b"GET /reviews/1 HTTP/1.1\r\nHost: reviews\r\n\r\n"
        try:
            stream = await pools[FRONTEND].open_stream(
                FRONTEND, WAYPOINT_ID, peer, "10.96.0.10:9080", [("forwarded", "for=10.1.1.5")]
            )
            assert await exchange(stream, request) == (
                Response(
                    200,
                    "OK",
                    (("content-length", "5"),),
                    framing=BodyFraming.CONTENT_LENGTH,
                    content_length=5,
                ),
                b"hello",
            )
            stream.close_write()
            denied = await pools[INTRUDER].open_stream(
                INTRUDER, WAYPOINT_ID, peer, "10.96.0.10:9080"
            )
            response, body = await exchange(denied, request)
            assert (response.status, body) == (403, b"RBAC: access denied")
            denied.close_write()
            with pytest.raises(TunnelRefusedError, match="answered 503"):
                await pools[FRONTEND].open_stream(FRONTEND, WAYPOINT_ID, peer, "10.96.0.99:80")
        finally:
            for pool in pools.values():
                await pool.close()
            await inbound.close()
            await proxy.close()
            backend.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert records[0].source_principal == FRONTEND.uri
    assert records[0].connection_security_policy == "mutual_tls"
    assert records[1].response_flags == "rbac_access_denied"
