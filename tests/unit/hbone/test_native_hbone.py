"""weft._native's HBONE data path against the Python one, both ways, over loopback mutual TLS.

Each test runs an application connection through a relaying "front" (what an agent's outbound
does: accept TCP, open an HBONE stream, relay()) to an HboneServer in front of a real TCP target;
client and server each run the native or the Python data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hbone_testing import CLIENT_ID, SERVER_ID, TestCa, make_ca, run

from weft.hbone import HboneError, HbonePool, HboneServer, RelayResult, TunnelRefusedError
from weft.hbone.errors import TunnelUnavailableError
from weft.hbone.native_session import NativeSession, check_data_path, native_available
from weft.hbone.relay import relay
from weft.hbone.request import parse_authority
from weft.identity import Identity
from weft.tls import Svid, client_context, peer_identity_der, server_context

LOOPBACK = "127.0.0.1"
# (client data path, server data path): interop both ways, native on both ends, and the
# Python path as the reference
PATHS = [("native", "python"), ("python", "native"), ("native", "native"), ("python", "python")]
Headers = tuple[tuple[str, str], ...]

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(
        not native_available(),
        reason="weft._native is not built (pip install -e . with libssl-dev)",
    ),
]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def count_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers only after the FIN: needs a real half-close through the tunnel."""
    total = 0
    while data := await reader.read(65536):
        total += len(data)
    writer.write(f"got {total}".encode())
    await writer.drain()
    writer.close()


async def reset_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello")
    await writer.drain()
    await reader.readexactly(3)
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


async def allow_all(peer: Identity, authority: str, headers: Headers) -> bool:
    return True


async def connect_tcp(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_authority(authority)
    return await asyncio.open_connection(host, port)


@dataclass
class Mesh:
    """Front (client relay) -> HBONE -> server -> targets, on the given data paths."""

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
) -> AsyncIterator[Mesh]:
    client_path, server_path = paths
    handlers = {"echo": echo, "count": count_then_reply, "reset": reset_after_hello}
    listeners = {name: await asyncio.start_server(h, LOOPBACK, 0) for name, h in handlers.items()}
    targets = {
        name: f"{LOOPBACK}:{listener.sockets[0].getsockname()[1]}"
        for name, listener in listeners.items()
    }
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
    mesh = Mesh(pool, server, targets, server_results=server_results)

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The application names its target in a 1-byte-length prefix (an agent would use the
        # original destination); everything after it is relayed.
        authority = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        try:
            stream = await pool.open_stream(CLIENT_ID, expected, (LOOPBACK, server.port), authority)
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
        for listener in listeners.values():
            listener.close()


async def settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_data_both_ways_with_half_close(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect("count")
            writer.write(b"x" * 100_000)
            writer.write_eof()  # the target answers only after our FIN reached it
            assert await reader.read() == b"got 100000"
            writer.close()
            await settle(lambda: len(mesh.results) == 1 and len(mesh.server_results) == 1)
            assert mesh.results == [RelayResult(100_000, 10, reset=False)]
            assert mesh.server_results == [RelayResult(10, 100_000, reset=False)]

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_one_mebibyte_echo_and_request_response_are_byte_exact(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    """1 MiB goes beyond the default 64 KiB windows and through WINDOW_UPDATEs both ways."""

    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect()
            for index in range(200):
                message = index.to_bytes(4, "big") * 256
                writer.write(message)
                assert await reader.readexactly(1024) == message
            payload = os.urandom(1024 * 1024)
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await settle(lambda: len(mesh.results) == 1)
            total = 200 * 1024 + len(payload)
            assert mesh.results == [RelayResult(total, total, reset=False)]

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_the_target_half_closes_first(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    """The other direction's half-close: the target's FIN, then our bytes still get through."""

    async def first_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.write_eof()
        sink.append(await reader.read())
        writer.close()

    sink: list[bytes] = []

    async def main() -> None:
        listener = await asyncio.start_server(first_fin, LOOPBACK, 0)
        target = f"{LOOPBACK}:{listener.sockets[0].getsockname()[1]}"
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect(target)
            assert await reader.read() == b"bye"  # EOF reached us: the tunnel carried the FIN
            writer.write(b"after your FIN")
            writer.write_eof()
            await settle(lambda: sink == [b"after your FIN"])
            writer.close()
            await settle(lambda: len(mesh.results) == 1)
            assert mesh.results[0].reset is False
        listener.close()

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_a_target_reset_reaches_the_application_and_back(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect("reset")
            assert await reader.readexactly(5) == b"hello"
            writer.write(b"hi!")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await settle(lambda: len(mesh.results) == 1)
            assert mesh.results[0].reset is True

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_an_application_reset_reaches_the_target(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    outcome: asyncio.Future[str]

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ready")
        await writer.drain()
        try:
            data = await reader.read()
            outcome.set_result(f"eof after {data!r}")
        except ConnectionResetError:
            outcome.set_result("reset")
        writer.close()

    async def main() -> None:
        nonlocal outcome
        outcome = asyncio.get_running_loop().create_future()
        listener = await asyncio.start_server(watch, LOOPBACK, 0)
        target = f"{LOOPBACK}:{listener.sockets[0].getsockname()[1]}"
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect(target)
            assert await reader.readexactly(5) == b"ready"
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            writer.transport.abort()
            assert await asyncio.wait_for(outcome, 5) == "reset"
            await settle(lambda: len(mesh.server_results) == 1)
            assert mesh.server_results[0].reset is True
        listener.close()

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_many_streams_share_one_tls_connection(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:

            async def exchange(index: int) -> bytes:
                reader, writer = await mesh.connect()
                message = f"stream {index} ".encode() * 500
                writer.write(message)
                writer.write_eof()
                data = await reader.read()
                writer.close()
                return b"ok" if data == message else b"bad"

            assert await exchange(0) == b"ok"  # the pooled connection, its settings known
            answers = await asyncio.gather(*(exchange(index) for index in range(1, 51)))
            assert answers == [b"ok"] * 50
            assert mesh.pool.stats.handshakes == 1
            assert mesh.server.connection_count == 1
            await settle(lambda: len(mesh.results) == 51)
            assert not any(result.reset for result in mesh.results)

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_refused_connects_are_401_and_503(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    seen: list[Identity] = []

    async def only_echo(peer: Identity, authority: str, headers: Headers) -> bool:
        seen.append(peer)
        return not authority.endswith(":1")

    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths, authorize=only_echo) as mesh:
            free = socket.socket()
            free.bind((LOOPBACK, 0))
            closed_port = free.getsockname()[1]
            free.close()
            for target in (f"{LOOPBACK}:1", f"{LOOPBACK}:{closed_port}"):
                reader, writer = await mesh.connect(target)
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            await settle(lambda: len(mesh.refusals) == 2)
            statuses = [
                error.status for error in mesh.refusals if isinstance(error, TunnelRefusedError)
            ]
            assert statuses == [401, 503]
            assert mesh.server.stats.tunnels_denied == 1
            assert mesh.server.stats.tunnels_unavailable == 1
            assert set(seen) == {CLIENT_ID}  # the server read the client's SPIFFE ID
            reader, writer = await mesh.connect()  # the connection still serves
            writer.write(b"fine")
            writer.write_eof()
            assert await reader.read() == b"fine"
            writer.close()

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_the_pool_refuses_a_peer_with_the_wrong_identity(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths, expected=CLIENT_ID) as mesh:
            reader, writer = await mesh.connect()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await settle(lambda: len(mesh.refusals) == 1)
            [error] = mesh.refusals
            assert isinstance(error, TunnelUnavailableError)
            assert f"presented identity {SERVER_ID}" in str(error)

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_a_target_that_does_not_read_holds_memory_at_the_windows(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    """Back-pressure: window is given back only for bytes the target's socket took."""
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def main() -> None:
        listener = await asyncio.start_server(never_read, LOOPBACK, 0)
        target = f"{LOOPBACK}:{listener.sockets[0].getsockname()[1]}"
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            _, writer = await mesh.connect(target)
            chunk = b"z" * (1024 * 1024)
            offered = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while offered < 64 * 1024 * 1024:
                        writer.write(chunk)
                        offered += len(chunk)
                        await writer.drain()
            assert offered < 64 * 1024 * 1024  # the application was stopped
            for session in mesh.sessions():
                if isinstance(session, NativeSession):
                    stats = session.stats()
                    # at most one stream window held, and the TLS queue near its high mark
                    assert stats["held"] <= 4 * 1024 * 1024
                    assert stats["tls_out"] <= 2 * 1024 * 1024
            writer.transport.abort()
        listener.close()

    run(main)


@pytest.mark.parametrize("paths", PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def test_the_server_closing_mid_stream_resets_the_application(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> None:
    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await mesh.server.close()
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await settle(lambda: len(mesh.results) == 1)
            assert mesh.results[0].reset is True

    run(main)


# --- the native server against hand-made (bad) input -------------------------------------------


@contextlib.asynccontextmanager
async def native_server(ca: TestCa, client_svid: Svid, server_svid: Svid) -> AsyncIterator[Mesh]:
    async with mesh_on(ca, client_svid, server_svid, ("native", "native")) as mesh:
        yield mesh


async def raw_tls_exchange(mesh: Mesh, client_svid: Svid, ca: TestCa, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(
        LOOPBACK, mesh.server.port, ssl=client_context(client_svid, ca.bundle_pem)
    )
    writer.write(data)
    received = b""
    with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += chunk
    writer.close()
    return received


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client


async def assert_serving(mesh: Mesh) -> None:
    reader, writer = await mesh.connect()
    writer.write(b"still here")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"still here"
    writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff" * (2 * 1024 * 1024), id="endless-frame"),
        pytest.param(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", id="zero-window-inc"),
        pytest.param(b"\x00\x00\x05\x08\x00\x00\x00\x00\x00" + b"\x00" * 5, id="long-window-upd"),
        pytest.param(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\xff\xff", id="window-overflow"),
        pytest.param(b"\x00\x00\x10\x00\x00\x00\x00\x00\x07" + b"d" * 16, id="data-idle-stream"),
        pytest.param(b"\x00\x00\x10\x00\x00\x00\x00\x00\x00" + b"d" * 16, id="data-stream-zero"),
        pytest.param(b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x", id="bad-padding"),
        pytest.param(os.urandom(5000), id="random"),
    ],
)
def test_garbage_frames_close_the_connection_not_the_server(
    ca: TestCa, client_svid: Svid, server_svid: Svid, garbage: bytes
) -> None:
    async def main() -> None:
        async with native_server(ca, client_svid, server_svid) as mesh:
            client = h2_client()
            received = await raw_tls_exchange(
                mesh, client_svid, ca, client.data_to_send() + garbage
            )
            events = client.receive_data(received)
            assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
            await assert_serving(mesh)

    run(main)


def test_data_beyond_the_window_is_a_flow_control_error(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    """A client that ignores our window: FLOW_CONTROL_ERROR, and only its connection goes."""

    async def main() -> None:
        async with native_server(ca, client_svid, server_svid) as mesh:
            client = h2_client()
            client.send_headers(
                1,
                [
                    (":method", "CONNECT"),
                    (":authority", mesh.targets["echo"]),
                ],
            )
            flood = b""
            frame = struct.pack(">HBBBL", 256 * 1024 >> 8, 0, 0, 0, 1)  # 256 KiB DATA frames
            for _ in range(80):  # 20 MiB: beyond the 16 MiB connection window
                flood += frame + b"\0" * (256 * 1024)
            received = await raw_tls_exchange(mesh, client_svid, ca, client.data_to_send() + flood)
            events = client.receive_data(received)
            [terminated] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
            assert terminated.error_code in (h2.errors.ErrorCodes.FLOW_CONTROL_ERROR,)
            await assert_serving(mesh)

    run(main)


def test_clients_without_a_certificate_or_alpn_are_refused(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    rogue = make_ca("rogue root")

    async def main() -> None:
        async with native_server(ca, client_svid, server_svid) as mesh:
            no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            no_cert.check_hostname = False
            no_cert.load_verify_locations(cadata=ca.bundle_pem.decode())
            no_cert.set_alpn_protocols(["h2"])
            wrong_alpn = client_context(client_svid, ca.bundle_pem)
            wrong_alpn.set_alpn_protocols(["http/1.1"])
            untrusted = client_context(rogue.issue(CLIENT_ID), ca.bundle_pem)
            for context in (no_cert, wrong_alpn, untrusted):
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    reader, writer = await asyncio.open_connection(
                        LOOPBACK, mesh.server.port, ssl=context
                    )
                    writer.write(h2_client().data_to_send())
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                    writer.close()
            await settle(lambda: mesh.server.stats.connections_refused == 1)
            assert mesh.server.stats.connections_accepted == 0
            await assert_serving(mesh)

    run(main)


@pytest.mark.parametrize(
    ("paths", "per_message"), [(("native", "native"), False), (("python", "python"), True)]
)
def test_request_response_makes_no_python_call_per_message(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str], per_message: bool
) -> None:
    """The point of weft._native: after setup, a message runs no Python function of weft or h2
    on either end (counted with sys.setprofile over 300 round trips; the Python data path, for
    comparison, runs several per message)."""
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            name = frame.f_code.co_filename
            if "/weft/" in name or "/h2/" in name or "/hyperframe/" in name:
                calls.append(f"{name}:{frame.f_code.co_name}")

    async def main() -> None:
        async with mesh_on(ca, client_svid, server_svid, paths) as mesh:
            reader, writer = await mesh.connect()
            for _ in range(20):  # warm up: window updates, settings
                writer.write(b"w" * 1024)
                await reader.readexactly(1024)
            sys.setprofile(profile)
            try:
                for index in range(300):
                    message = index.to_bytes(4, "big") * 256
                    writer.write(message)
                    assert await reader.readexactly(1024) == message
            finally:
                sys.setprofile(None)
            writer.close()

    run(main)
    if per_message:  # the Python path, to show the count would see them
        assert len(calls) >= 300
    else:
        assert calls == []


def test_unknown_or_unavailable_data_paths_are_refused_with_a_hint() -> None:
    with pytest.raises(HboneError, match="unknown HBONE data path 'fast'"):
        check_data_path("fast")
    assert check_data_path("native") == "native"


def test_peer_identity_der_reads_the_spiffe_id(ca: TestCa, client_svid: Svid) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = x509.load_pem_x509_certificates(client_svid.chain_pem)[0]
    assert peer_identity_der(leaf.public_bytes(Encoding.DER)) == CLIENT_ID
    with pytest.raises(Exception, match="no verified certificate"):
        peer_identity_der(None)


def test_data_sent_with_the_connect_is_held_until_the_stream_is_attached(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    """A client may send DATA right behind its CONNECT: the native server holds it (within the
    stream window) while it authorizes and connects, and delivers it once spliced."""

    async def main() -> None:
        async with native_server(ca, client_svid, server_svid) as mesh:
            client = h2_client()
            client.send_headers(1, [(":method", "CONNECT"), (":authority", mesh.targets["echo"])])
            client.send_data(1, b"early bytes", end_stream=True)
            reader, writer = await asyncio.open_connection(
                LOOPBACK, mesh.server.port, ssl=client_context(client_svid, ca.bundle_pem)
            )
            writer.write(client.data_to_send())
            status, echoed, ended = None, b"", False
            async with asyncio.timeout(5):
                while not ended:
                    data = await reader.read(65536)
                    assert data, "the server closed the connection"
                    for event in client.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers)[b":status"]
                        elif isinstance(event, h2.events.DataReceived):
                            echoed += event.data
                            client.acknowledge_received_data(event.flow_controlled_length, 1)
                        elif isinstance(event, h2.events.StreamEnded):
                            ended = True
                    writer.write(client.data_to_send())
            writer.close()
            assert (status, echoed) == (b"200", b"early bytes")
            await settle(lambda: len(mesh.server_results) == 1)
            assert mesh.server_results == [RelayResult(11, 11, reset=False)]

    run(main)
