"""Shared helpers of the waypoint tests: a loopback backend and client, a throwaway mesh CA."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from waypoint.config import BackendRef
from waypoint.http1 import (
    Data,
    EndOfMessage,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    serialize_response_head,
)
from waypoint.outbound import EndpointRoute, HboneOutbound
from weft.hbone import HbonePool, HboneServer, HboneStream, TunnelSettings
from weft.identity import Identity
from weft.tls import Svid, client_context, server_context

HOST = "reviews.default.svc.cluster.local"
TEST_TIMEOUT_S = 10
FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
INTRUDER = Identity.parse("spiffe://cluster.local/ns/other/sa/intruder")
WAYPOINT_ID = Identity.parse("spiffe://cluster.local/ns/shop/sa/waypoint")
REVIEWS_V1 = BackendRef(name="reviews-v1", port=9080, namespace="shop")
AGENT_ID = Identity.parse("spiffe://cluster.local/ns/weft-system/sa/agent-node-b")
TUNNEL_TIMEOUT_S = 5.0
# windows small enough that a peer that does not read stops a writer long before memory matters
SMALL_WINDOWS = TunnelSettings(stream_window=256 * 1024, connection_window=1024 * 1024)


# --- a backend that behaves as each test needs ----------------------------------------------------


@dataclass
class Backend:
    """An HTTP/1.1 server on loopback: /status/<code>, /slow/<ms>, /reset, /flaky/<n>, else echo."""

    name: str
    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    flaky_failures: int = 0

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = RequestParser()
        request: Request | None = None
        body = b""
        try:
            while data := await reader.read(65536):
                for event in parser.feed(data):
                    if isinstance(event, Request):
                        request, body = event, b""
                    elif isinstance(event, Data):
                        body += event.data
                    elif isinstance(event, EndOfMessage) and request is not None:
                        self.requests.append(request)
                        if not await self._respond(request, body, writer):
                            return
        finally:
            writer.close()

    async def _respond(self, request: Request, body: bytes, writer: asyncio.StreamWriter) -> bool:
        parts = request.target.strip("/").split("/")
        status, payload = 200, b""
        if parts[0] == "status":
            status = int(parts[1])
        elif parts[0] == "slow":
            await asyncio.sleep(int(parts[1]) / 1000)
        elif parts[0] == "reset":
            return False
        elif parts[0] == "stall":  # the head and half the body, then silence
            writer.write(serialize_response_head(200, "OK", [("content-length", "10")]) + b"12345")
            await writer.drain()
            await asyncio.sleep(5)
            return False
        elif parts[0] == "flaky" and self.flaky_failures < int(parts[1]):
            self.flaky_failures += 1
            status = 503
        if status == 200:
            payload = json.dumps(
                {"backend": self.name, "target": request.target, "headers": request.headers,
                 "body": body.decode("latin-1")}
            ).encode()  # fmt: skip
        headers = [("content-length", str(len(payload))), ("x-backend", self.name)]
        writer.write(serialize_response_head(status, "X", headers) + payload)
        await writer.drain()
        return parts[0] != "close-after"  # close-after: close without saying Connection: close


# --- a client ------------------------------------------------------------------------------------


@dataclass
class Answer:
    response: Response
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def reason(self) -> str | None:
        return self.response.header("x-weft-reason")


class Client:
    """One keep-alive connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = ResponseParser()

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, raw: bytes, method: str = "GET") -> Answer:
        self.parser.expect(method)
        self.writer.write(raw)
        await self.writer.drain()
        response: Response | None = None
        body = b""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), TEST_TIMEOUT_S)
            events = self.parser.feed(data) if data else self.parser.feed_eof()
            for event in events:
                if isinstance(event, Response) and not event.informational:
                    response = event
                elif isinstance(event, Data):
                    body += event.data
                elif isinstance(event, EndOfMessage):
                    assert response is not None
                    return Answer(response, body)

    async def get(self, target: str, *headers: str, host: str = HOST) -> Answer:
        extra = "".join(f"{h}\r\n" for h in headers)
        return await self.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())

    async def closed_by_peer(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), TEST_TIMEOUT_S) == b""

    def close(self) -> None:
        self.writer.close()


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


async def hello_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    await writer.drain()
    writer.close()


# --- sockets the test holds, a destination agent's callbacks ------------------------------------


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def socket_listener(
    host: str = "127.0.0.1",
) -> tuple[asyncio.Server, asyncio.Queue[socket.socket]]:
    """A TCP listener whose accepted connections come to the test as non-blocking sockets (what
    an application behind the listener would hold)."""
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("socket").dup()
        peer.setblocking(False)
        accepted.put_nowait(peer)
        writer.transport.abort()  # the duplicate keeps the connection; asyncio lets go of it

    return await asyncio.start_server(on_client, host, 0), accepted


async def allow_all(peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]) -> bool:
    """A destination agent's L4 policy that lets every tunnel in."""
    return True


async def agent_connect(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A destination agent's connect(): TCP to the tunnel's `ip:port`, as agent.inbound does."""
    host, _, port = authority.rpartition(":")
    return await asyncio.open_connection(host, int(port))


@contextlib.asynccontextmanager
async def destination_agent(ca: TestCa) -> AsyncIterator[HboneOutbound]:
    """A node agent's HBONE server on loopback, in front of every endpoint (it connects each
    tunnel to its `ip:port`), and the waypoint's HboneOutbound reaching endpoints through it."""
    agent = HboneServer(server_context(ca.issue(AGENT_ID), ca.bundle), allow_all, agent_connect)
    await agent.start("127.0.0.1", 0)
    svid = ca.issue(WAYPOINT_ID)
    pool = HbonePool(lambda source: client_context(svid, ca.bundle))
    route = EndpointRoute(("127.0.0.1", agent.port), AGENT_ID)
    outbound = HboneOutbound(pool, WAYPOINT_ID, lambda endpoint: route)
    try:
        yield outbound
    finally:
        await outbound.close()
        await agent.close()  # servers before the pool: see test_inbound's note
        await pool.close()


# --- an HBONE tunnel to a TCP socket the test holds ---------------------------------------------


@contextlib.asynccontextmanager
async def hbone_tunnel(
    settings: TunnelSettings | None = None,
) -> AsyncIterator[tuple[HboneStream, socket.socket]]:
    """A stream of weft.hbone's pool, over mutual TLS on loopback, to an HboneServer that
    splices it to a TCP connection the test holds (what an application behind a destination
    agent would see)."""
    ca = TestCa()
    target, accepted = await socket_listener()
    agent = HboneServer(
        server_context(ca.issue(AGENT_ID), ca.bundle), allow_all, agent_connect, settings=settings
    )
    await agent.start("127.0.0.1", 0)
    svid = ca.issue(WAYPOINT_ID)
    pool = HbonePool(lambda source: client_context(svid, ca.bundle), settings=settings)
    stream = await pool.open_stream(
        WAYPOINT_ID, AGENT_ID, ("127.0.0.1", agent.port), f"127.0.0.1:{port_of(target)}"
    )
    peer = await asyncio.wait_for(accepted.get(), TUNNEL_TIMEOUT_S)
    try:
        yield stream, peer
    finally:
        peer.close()
        await agent.close()  # servers before the pool: see test_inbound's note
        await pool.close()
        target.close()


async def recv_until_closed(peer: socket.socket) -> bytes:
    """What the TCP side receives until EOF; ConnectionResetError if it was reset."""
    loop = asyncio.get_running_loop()
    received = b""
    while data := await asyncio.wait_for(loop.sock_recv(peer, 65536), TUNNEL_TIMEOUT_S):
        received += data
    return received


async def recv_until_reset(peer: socket.socket) -> None:
    """Until the TCP side's connection is reset while it reads; AssertionError at a clean EOF."""
    try:
        await recv_until_closed(peer)
    except ConnectionResetError:
        return
    raise AssertionError("the TCP side was closed, not reset")


class Closable(Protocol):
    """What TunnelChannel and StreamTransport both do as a socket's writer does."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


async def closes_with_a_fin_then_late_bytes_reset(side: Closable, peer: socket.socket) -> None:
    """close() after a write: the TCP side reads the bytes, then EOF; bytes it sends after that
    reset its connection (as a closed TCP socket answers them with RST)."""
    side.write(b"last words")
    side.close()
    assert side.is_closing()
    assert await recv_until_closed(peer) == b"last words"
    await asyncio.get_running_loop().sock_sendall(peer, b"too late")
    await until_reset(peer)


async def until_reset(peer: socket.socket) -> None:
    """Until the TCP side's connection is reset (after a FIN, a RST shows only on sending)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TUNNEL_TIMEOUT_S
    while loop.time() < deadline:
        try:
            await loop.sock_sendall(peer, b".")
        except (BrokenPipeError, ConnectionResetError):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the TCP side was not reset")


def reset(peer: socket.socket) -> None:
    """Close with RST rather than FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def run_tunnel_test(main: Coroutine[object, object, None]) -> None:
    asyncio.run(asyncio.wait_for(main, 20))


async def eventually(condition: Callable[[], object]) -> None:
    """Until `condition()` holds (polled); AssertionError after TUNNEL_TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TUNNEL_TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.01)


async def offer_until_blocked(peer: socket.socket) -> int:
    """Send from the TCP side until nothing more is taken for 0.2 s (at most 25 MiB, with a
    small send buffer); the bytes sent. What the tunnel's reader does not read stays unsent."""
    loop = asyncio.get_running_loop()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    chunk = b"y" * 65536
    sent = 0
    for _ in range(400):
        try:
            await asyncio.wait_for(loop.sock_sendall(peer, chunk), 0.2)
        except TimeoutError:
            break
        sent += len(chunk)
    return sent
