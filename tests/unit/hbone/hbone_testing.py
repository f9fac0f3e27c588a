"""Helpers for HBONE tests: a throwaway mesh PKI, loopback TCP targets, raw h2 clients, a runner."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h2.config
import h2.connection
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from weft.hbone import HboneError, HbonePool, HboneServer, RelayResult
from weft.hbone.relay import relay
from weft.hbone.request import parse_authority
from weft.identity import Identity
from weft.pki import build_self_signed_ca
from weft.tls import Svid, client_context, server_context

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
Headers = tuple[tuple[str, str], ...]


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


# --- loopback TCP targets behind an HboneServer ---------------------------------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until the client half-closes, then half-close back."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def count_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read everything until FIN, then answer with the byte count: needs a real half-close."""
    total = 0
    while data := await reader.read(65536):
        total += len(data)
    writer.write(f"got {total}".encode())
    await writer.drain()
    writer.close()


async def reset_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say hello, wait for a 3-byte answer, then abort the connection with a TCP RST."""
    writer.write(b"hello")
    await writer.drain()
    await reader.readexactly(3)
    abort_with_rst(writer)


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def targets() -> AsyncIterator[dict[str, str]]:
    """The "echo", "count" and "reset" targets listening on loopback: name -> authority."""
    handlers = {"echo": echo, "count": count_then_reply, "reset": reset_after_hello}
    listeners = {name: await asyncio.start_server(h, LOOPBACK, 0) for name, h in handlers.items()}
    try:
        yield {name: authority_of(listener) for name, listener in listeners.items()}
    finally:
        for listener in listeners.values():
            listener.close()


@contextlib.asynccontextmanager
async def ending_watcher(greeting: bytes = b"") -> AsyncIterator[tuple[str, asyncio.Future[str]]]:
    """A target that sends `greeting`, then tells how its (first) connection ended: "reset"
    for a TCP RST, "eof after <bytes read>" for a FIN. Yields (authority, that outcome)."""
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        try:
            data = await reader.read()
            outcome.set_result(f"eof after {data!r}")
        except ConnectionResetError:
            outcome.set_result("reset")
        writer.close()

    listener = await asyncio.start_server(watch, LOOPBACK, 0)
    try:
        yield authority_of(listener), outcome
    finally:
        listener.close()


def authority_of(listener: asyncio.Server) -> str:
    return f"{LOOPBACK}:{listener.sockets[0].getsockname()[1]}"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


async def allow_all(peer: Identity, authority: str, headers: Headers) -> bool:
    return True


async def connect_tcp(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_authority(authority)
    return await asyncio.open_connection(host, port)


# --- hand-made clients --------------------------------------------------------------------


def h2_client() -> h2.connection.H2Connection:
    """An h2 client connection whose preface (and SETTINGS) wait in data_to_send()."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends before it closes; a TLS alert also counts as closed."""
    received = b""
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        while data := await asyncio.wait_for(reader.read(65536), 5):
            received += data
    return received


def refused_client_contexts(ca: TestCa, svid: Svid) -> dict[str, ssl.SSLContext]:
    """Client TLS contexts a mesh server must refuse, by kind: "no-alpn-h2" (ALPN http/1.1),
    "no-certificate" and "untrusted-certificate" (an SVID from another root)."""
    no_alpn_h2 = client_context(svid, ca.bundle_pem)
    no_alpn_h2.set_alpn_protocols(["http/1.1"])
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.check_hostname = False
    no_certificate.load_verify_locations(cadata=ca.bundle_pem.decode())
    no_certificate.set_alpn_protocols(["h2"])
    untrusted = client_context(make_ca("rogue root").issue(CLIENT_ID), ca.bundle_pem)
    return {
        "no-alpn-h2": no_alpn_h2,
        "no-certificate": no_certificate,
        "untrusted-certificate": untrusted,
    }


# --- an application connection through a relaying front, HBONE and a server, to the targets ----


@dataclass
class RelayMesh:
    """Front (client relay) -> HBONE -> server -> targets, on the given data paths."""

    ca: TestCa
    client_svid: Svid
    pool: HbonePool
    server: HboneServer
    targets: dict[str, str]
    results: list[RelayResult] = field(default_factory=list)
    server_results: list[RelayResult] = field(default_factory=list)
    front_port: int = 0
    refusals: list[BaseException] = field(default_factory=list)

    async def connect(
        self, target: str = "echo"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An application connection to `target` through the front and the tunnel."""
        reader, writer = await asyncio.open_connection(LOOPBACK, self.front_port)
        authority = self.targets.get(target, target).encode()
        writer.write(len(authority).to_bytes(1, "big") + authority)
        return reader, writer

    async def tls_connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw TLS connection to the server with the client's SVID (for hand-made h2)."""
        context = client_context(self.client_svid, self.ca.bundle_pem)
        return await asyncio.open_connection(LOOPBACK, self.server.port, ssl=context)

    def sessions(self) -> list[Any]:
        sessions: list[Any] = list(self.server._sessions)
        for group in self.pool._connections.values():
            sessions += [c.session for c in group if c.session is not None]
        return sessions


@contextlib.asynccontextmanager
async def mesh_on(
    ca: TestCa,
    client_svid: Svid,
    server_svid: Svid,
    paths: tuple[str, str],
    *,
    authorize: Callable[[Identity, str, Headers], Awaitable[bool]] = allow_all,
    expected: Identity = SERVER_ID,
) -> AsyncIterator[RelayMesh]:
    """A RelayMesh whose pool and server run the (client, server) data paths `paths`."""
    client_path, server_path = paths
    async with targets() as authorities:
        server_results: list[RelayResult] = []
        server = HboneServer(
            server_context(server_svid, ca.bundle_pem),
            authorize,
            connect_tcp,
            relayed=server_results.append,
            data_path=server_path,
        )
        await server.start(LOOPBACK, 0)
        pool = HbonePool(
            lambda source: client_context(client_svid, ca.bundle_pem), data_path=client_path
        )
        mesh = RelayMesh(ca, client_svid, pool, server, authorities, server_results=server_results)

        async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The application names its target in a 1-byte-length prefix (an agent would use
            # the original destination); everything after it is relayed.
            authority = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            try:
                stream = await pool.open_stream(
                    CLIENT_ID, expected, (LOOPBACK, server.port), authority
                )
            except HboneError as error:
                mesh.refusals.append(error)
                writer.transport.abort()
                return
            mesh.results.append(await relay(stream, reader, writer))

        front_listener = await asyncio.start_server(front, LOOPBACK, 0)
        mesh.front_port = front_listener.sockets[0].getsockname()[1]
        try:
            yield mesh
        finally:
            front_listener.close()
            await pool.close()
            await server.close()


MeshOpener = Callable[..., contextlib.AbstractAsyncContextManager[RelayMesh]]


async def settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds, `timeout` seconds at most."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def assert_serving(mesh: RelayMesh) -> None:
    """A fresh application connection still echoes: what came before did not hurt the server."""
    reader, writer = await mesh.connect()
    writer.write(b"still here")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"still here"
    writer.close()
