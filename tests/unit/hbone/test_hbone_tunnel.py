"""HbonePool -> HboneServer -> a real TCP target, over loopback with real mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import pytest
from hbone_testing import (
    CLIENT_ID,
    LOOPBACK,
    SERVER_ID,
    Headers,
    TestCa,
    allow_all,
    closed_port,
    connect_tcp,
    ending_watcher,
    h2_client,
    read_until_closed,
    refused_client_contexts,
    run,
    targets,
)

from weft.hbone import (
    HboneError,
    HbonePool,
    HboneServer,
    HboneStream,
    RelayResult,
    StreamResetError,
    TunnelRefusedError,
    TunnelUnavailableError,
)
from weft.hbone.accept import IP_TRANSPARENT
from weft.hbone.relay import relay
from weft.hbone.request import MalformedRequestError
from weft.identity import Identity
from weft.tls import Svid, client_context, server_context


@dataclass
class Mesh:
    """A loopback mesh: an HBONE server in front of TCP targets, and a client pool."""

    ca: TestCa
    client_svid: Svid
    server: HboneServer
    pool: HbonePool
    targets: dict[str, str]  # name -> authority

    async def open(self, target: str = "echo", **kwargs: object) -> HboneStream:
        return await self.pool.open_stream(
            CLIENT_ID,
            SERVER_ID,
            (LOOPBACK, self.server.port),
            self.targets.get(target, target),
            **kwargs,  # type: ignore[arg-type]
        )

    async def assert_serving(self) -> None:
        """A fresh tunnel still echoes: whatever happened before did not hurt the server."""
        stream = await self.open()
        await stream.write(b"still here")
        stream.close_write()
        assert await read_all(stream) == b"still here"


async def read_all(stream: HboneStream) -> bytes:
    chunks = []
    while data := await stream.read():
        chunks.append(data)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def loopback_mesh(
    ca: TestCa,
    client_svid: Svid,
    server_svid: Svid,
    authorize: Callable[[Identity, str, Headers], Awaitable[bool]] = allow_all,
    **pool_options: float,
) -> AsyncIterator[Mesh]:
    async with targets() as authorities:
        server = HboneServer(server_context(server_svid, ca.bundle_pem), authorize, connect_tcp)
        await server.start(LOOPBACK, 0)
        pool = HbonePool(lambda source: client_context(client_svid, ca.bundle_pem), **pool_options)  # type: ignore[arg-type]
        mesh = Mesh(ca, client_svid, server, pool, authorities)
        try:
            yield mesh
        finally:
            await mesh.pool.close()
            await mesh.server.close()  # the test may have replaced the server


MeshFactory = Callable[..., contextlib.AbstractAsyncContextManager[Mesh]]


@pytest.fixture
def new_mesh(ca: TestCa, client_svid: Svid, server_svid: Svid) -> MeshFactory:
    """loopback_mesh() on the session's PKI: new_mesh(authorize, **pool_options)."""
    return functools.partial(loopback_mesh, ca, client_svid, server_svid)


def test_tunnel_carries_data_both_ways_with_half_close(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            stream = await mesh.open("count")
            await stream.write(b"x" * 100_000)
            stream.close_write()  # the target answers only after it sees our FIN
            assert await read_all(stream) == b"got 100000"

    run(main)


def test_bulk_echo_beyond_the_flow_control_windows_is_byte_exact(new_mesh: MeshFactory) -> None:
    payload = os.urandom(24 * 1024 * 1024)  # > the 16 MiB connection window

    async def main() -> None:
        async with new_mesh() as mesh:
            stream = await mesh.open()

            async def send() -> None:
                await stream.write(payload)
                stream.close_write()

            sender = asyncio.create_task(send())
            assert await read_all(stream) == payload
            await sender
            assert (stream.bytes_sent, stream.bytes_received) == (len(payload), len(payload))

    run(main)


def test_mesh_headers_reach_authorize_with_the_client_identity(new_mesh: MeshFactory) -> None:
    seen: list[tuple[Identity, str, tuple[tuple[str, str], ...]]] = []

    async def record(peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]) -> bool:
        seen.append((peer, authority, headers))
        return True

    async def main() -> None:
        async with new_mesh(record) as mesh:
            headers = [("forwarded", "for=10.0.0.5"), ("baggage", "a=b"), ("traceparent", "00-1")]
            stream = await mesh.open(headers=headers)
            stream.close_write()
            await read_all(stream)
            assert seen == [(CLIENT_ID, mesh.targets["echo"], tuple(headers))]

    run(main)


def test_many_application_connections_share_one_tls_connection(new_mesh: MeshFactory) -> None:
    async def one_exchange(mesh: Mesh, index: int) -> bytes:
        stream = await mesh.open()
        await stream.write(b"%d" % index)
        stream.close_write()
        return await read_all(stream)

    async def main() -> None:
        async with new_mesh() as mesh:
            for index in range(20):  # one after the other
                assert await one_exchange(mesh, index) == b"%d" % index
            replies = await asyncio.gather(*(one_exchange(mesh, i) for i in range(50)))
            assert replies == [b"%d" % i for i in range(50)]
            assert mesh.pool.stats.handshakes == 1
            assert mesh.server.stats.connections_accepted == 1
            assert mesh.server.stats.tunnels_opened == 70

    run(main)


def test_the_101st_concurrent_stream_opens_a_second_connection(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            streams = await asyncio.gather(*(mesh.open() for _ in range(100)))
            assert mesh.pool.stats.handshakes == 1
            streams.append(await mesh.open())
            assert mesh.pool.stats.handshakes == 2
            assert mesh.server.connection_count == 2
            for stream in streams:
                stream.close_write()
            await asyncio.gather(*(read_all(stream) for stream in streams))
            # A slot freed on the first connection is reused before any new handshake.
            await mesh.assert_serving()
            assert mesh.pool.stats.handshakes == 2

    run(main)


def test_idle_timeout_closes_the_pooled_connection(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh(idle_timeout=0.2) as mesh:
            await mesh.assert_serving()
            assert mesh.pool.connection_count() == 1
            await asyncio.sleep(0.6)
            assert mesh.pool.connection_count() == 0
            assert mesh.server.connection_count == 0
            await mesh.assert_serving()
            assert mesh.pool.stats.handshakes == 2

    run(main)


def test_a_busy_connection_is_not_closed_by_the_idle_timeout(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh(idle_timeout=0.1) as mesh:
            stream = await mesh.open()
            await asyncio.sleep(0.3)
            await stream.write(b"late")
            stream.close_write()
            assert await read_all(stream) == b"late"
            assert mesh.pool.stats.handshakes == 1

    run(main)


def test_denied_authorization_is_401(new_mesh: MeshFactory) -> None:
    async def deny(peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]) -> bool:
        return authority != mesh_targets["count"]

    mesh_targets: dict[str, str] = {}

    async def main() -> None:
        async with new_mesh(deny) as mesh:
            mesh_targets.update(mesh.targets)
            with pytest.raises(TunnelRefusedError) as refused:
                await mesh.open("count")
            assert refused.value.status == 401
            assert "AuthorizationPolicy" in str(refused.value)
            assert mesh.server.stats.tunnels_denied == 1
            await mesh.assert_serving()
            assert mesh.pool.stats.handshakes == 1

    run(main)


def test_unreachable_target_is_503(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            with pytest.raises(TunnelRefusedError) as refused:
                await mesh.open(f"{LOOPBACK}:{closed_port()}")
            assert refused.value.status == 503
            assert mesh.server.stats.tunnels_unavailable == 1
            await mesh.assert_serving()

    run(main)


def test_target_reset_reaches_the_client_as_stream_reset(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            stream = await mesh.open("reset")
            assert await stream.read() == b"hello"
            await stream.write(b"ack")
            with pytest.raises(StreamResetError) as reset:
                await stream.read()
            assert reset.value.error_code == 0xA  # CONNECT_ERROR
            await mesh.assert_serving()

    run(main)


def test_client_abort_resets_the_target_connection(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with ending_watcher() as (target, outcome), new_mesh() as mesh:
            stream = await mesh.open(target)
            await stream.write(b"a")
            await asyncio.sleep(0.05)
            stream.abort()
            assert await asyncio.wait_for(outcome, 5) == "reset"

    run(main)


def test_bad_authority_is_refused_before_anything_is_sent(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            with pytest.raises(MalformedRequestError):
                await mesh.open("shop.svc:80")
            await mesh.assert_serving()

    run(main)


def test_pool_refuses_a_peer_with_the_wrong_identity(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            impostor_check = Identity.parse("spiffe://cluster.local/ns/bank/sa/vault")
            with pytest.raises(TunnelUnavailableError, match="presented identity"):
                await mesh.pool.open_stream(
                    CLIENT_ID,
                    impostor_check,
                    (LOOPBACK, mesh.server.port),
                    mesh.targets["echo"],
                )
            assert mesh.pool.connection_count() == 0
            await mesh.assert_serving()

    run(main)


def test_pool_reports_a_closed_port_as_unavailable(new_mesh: MeshFactory) -> None:
    port = closed_port()

    async def main() -> None:
        async with new_mesh() as mesh:
            with pytest.raises(TunnelUnavailableError, match=f"{port}"):
                await mesh.pool.open_stream(
                    CLIENT_ID, SERVER_ID, (LOOPBACK, port), mesh.targets["echo"]
                )

    run(main)


# Misbehaving clients: each gets a clean refusal or a closed connection, and the server stays up.


async def raw_tls(
    mesh: Mesh, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, mesh.server.port, ssl=context)


@pytest.mark.parametrize(
    ("kind", "sends_preface", "counter", "expected"),
    [
        pytest.param("no-alpn-h2", False, "connections_refused", 1, id="no-alpn-h2"),
        pytest.param("no-certificate", True, "connections_accepted", 0, id="no-certificate"),
        pytest.param(
            "untrusted-certificate", True, "connections_accepted", 0, id="untrusted-certificate"
        ),
    ],
)
def test_clients_the_tls_handshake_refuses_are_disconnected(
    new_mesh: MeshFactory, kind: str, sends_preface: bool, counter: str, expected: int
) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            context = refused_client_contexts(mesh.ca, mesh.client_svid)[kind]
            reader, writer = await raw_tls(mesh, context)
            if sends_preface:
                writer.write(h2_client().data_to_send())
            assert await read_until_closed(reader) == b""
            writer.close()
            assert getattr(mesh.server.stats, counter) == expected
            await mesh.assert_serving()

    run(main)


def test_garbage_instead_of_tls_is_disconnected(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            reader, writer = await asyncio.open_connection(LOOPBACK, mesh.server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(2000))
            await read_until_closed(reader)
            writer.close()
            await mesh.assert_serving()

    run(main)


def test_garbage_inside_tls_gets_goaway_and_a_close(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            reader, writer = await raw_tls(
                mesh, client_context(mesh.client_svid, mesh.ca.bundle_pem)
            )
            client = h2_client()
            writer.write(client.data_to_send() + b"\xff" * (2 * 1024 * 1024))  # one endless frame
            received = await read_until_closed(reader)
            writer.close()
            parsed = client.receive_data(received)
            assert any(isinstance(e, h2.events.ConnectionTerminated) for e in parsed)
            await mesh.assert_serving()

    run(main)


async def raw_request(mesh: Mesh, headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """Send one hand-made request; return (status or None, whether the connection closed)."""
    reader, writer = await raw_tls(mesh, client_context(mesh.client_svid, mesh.ca.bundle_pem))
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.initiate_connection()
    client.send_headers(1, headers)
    writer.write(client.data_to_send())
    status: int | None = None
    closed = False
    try:
        while status is None and not closed:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                closed = True
                break
            for event in client.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.ConnectionTerminated):
                    closed = True
            writer.write(client.data_to_send())
    finally:
        writer.close()
    return status, closed


@pytest.mark.parametrize(
    ("headers", "expected_status"),
    [
        (
            [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")],
            400,
        ),
        ([(b":method", b"CONNECT"), (b":authority", b"shop.svc:80")], 400),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1")], 400),
        ([(b":method", b"CONNECT")], 400),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"Upper", b"x")], 400),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"connection", b"x")], 400),
    ],
)
def test_malformed_requests_are_400_and_the_server_keeps_serving(
    new_mesh: MeshFactory, headers: list[tuple[bytes, bytes]], expected_status: int
) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            status, _ = await raw_request(mesh, headers)
            assert status == expected_status
            await mesh.assert_serving()

    run(main)


def test_oversized_headers_close_the_connection_and_the_server_keeps_serving(
    new_mesh: MeshFactory,
) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            headers = [
                (b":method", b"CONNECT"),
                (b":authority", b"10.0.0.1:80"),
                (b"baggage", b"x" * 64 * 1024),
            ]
            status, closed = await raw_request(mesh, headers)
            assert status in (None, 431)
            assert closed or status == 431
            await mesh.assert_serving()

    run(main)


def test_pool_dials_again_after_the_peer_closed_its_connection(
    new_mesh: MeshFactory, ca: TestCa, server_svid: Svid
) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            await mesh.assert_serving()
            port = mesh.server.port
            await mesh.server.close()  # e.g. the destination agent restarted
            await asyncio.sleep(0.05)
            assert mesh.pool.connection_count() == 0
            mesh.server = HboneServer(
                server_context(server_svid, ca.bundle_pem), allow_all, connect_tcp
            )
            await mesh.server.start(LOOPBACK, port)
            await mesh.assert_serving()
            assert mesh.pool.stats.handshakes == 2

    run(main)


def test_server_close_resets_open_tunnels(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            stream = await mesh.open()
            await mesh.server.close()
            with pytest.raises(StreamResetError):
                await stream.read()

    run(main)


def test_a_connect_the_peer_never_answers_times_out(new_mesh: MeshFactory) -> None:
    async def stall(peer: Identity, authority: str, headers: tuple[tuple[str, str], ...]) -> bool:
        await asyncio.sleep(3600)
        return True

    async def main() -> None:
        async with new_mesh(stall, response_timeout=0.2) as mesh:
            with pytest.raises(TunnelUnavailableError, match="did not answer the CONNECT"):
                await mesh.open()
            assert mesh.pool.connection_count() == 1  # the connection itself is fine

    run(main)


def test_server_closes_cleanly_after_its_clients_already_hung_up(new_mesh: MeshFactory) -> None:
    async def main() -> None:
        async with new_mesh() as mesh:
            stream = await mesh.open()  # left open: the server still holds its session
            await stream.write(b"x")
            await mesh.pool.close()  # the client side goes first: the server sees the hang-up
            await asyncio.sleep(0.05)
            await mesh.server.close()  # used to abort a dead SSL transport: AttributeError

    run(main)


def test_server_close_while_clients_hang_up_on_asyncios_loop(
    new_mesh: MeshFactory, ca: TestCa, client_svid: Svid
) -> None:
    """asyncio's SSL transport raises AttributeError on abort() once closed twice; clients
    hanging up as the server closes used to make HboneServer.close() do just that."""

    async def round_(delay: float | None) -> None:
        async with new_mesh() as mesh:
            pools = [
                HbonePool(lambda source: client_context(client_svid, ca.bundle_pem))
                for _ in range(3)
            ]
            for pool in pools:
                stream = await pool.open_stream(
                    CLIENT_ID, SERVER_ID, (LOOPBACK, mesh.server.port), mesh.targets["echo"]
                )
                await stream.write(b"x" * 100_000)
            closing = [asyncio.get_running_loop().create_task(pool.close()) for pool in pools]
            if delay is not None:
                await asyncio.sleep(delay)
            await mesh.server.close()
            await asyncio.gather(*closing)

    async def main() -> None:
        for delay in [None, 0.0, 0.001, 0.002, 0.005] * 4:
            await round_(delay)

    with asyncio.Runner() as runner:  # the stdlib loop: uvloop's SSL transport does not raise
        runner.run(asyncio.wait_for(main(), 60))


def test_server_reports_what_each_tunnel_relayed(new_mesh: MeshFactory) -> None:
    results: list[RelayResult] = []

    async def main() -> None:
        async with new_mesh() as mesh:
            mesh.server.relayed = results.append
            stream = await mesh.open("count")
            await stream.write(b"x" * 70_000)
            stream.close_write()
            assert await read_all(stream) == b"got 70000"
            for _ in range(100):
                if results:
                    break
                await asyncio.sleep(0.01)

    run(main)
    # to_tunnel: from the target back to the client; from_tunnel: from the client to the target
    assert results == [RelayResult(bytes_to_tunnel=9, bytes_from_tunnel=70_000, reset=False)]


def test_a_target_that_does_not_read_stops_the_client_at_its_window(new_mesh: MeshFactory) -> None:
    """The relay acknowledges tunnel bytes only as TCP takes them: no unbounded buffering."""

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        sink = await asyncio.start_server(never_read, LOOPBACK, 0)
        async with new_mesh() as mesh:
            stream = await mesh.open(f"{LOOPBACK}:{sink.sockets[0].getsockname()[1]}")
            writing = asyncio.ensure_future(stream.write(b"y" * (64 * 1024 * 1024)))
            await asyncio.sleep(1.0)
            assert not writing.done()
            # The 4 MiB stream window, plus what the kernel's socket buffers and the relay's
            # transport held before it paused: far below the 64 MiB offered.
            assert stream.bytes_sent < 24 * 1024 * 1024
            stream.abort()
            with contextlib.suppress(StreamResetError):
                await writing
        sink.close()

    run(main)


def test_transparent_listener_sets_ip_transparent_before_bind(
    ca: TestCa, server_svid: Svid
) -> None:
    async def main() -> None:
        server = HboneServer(server_context(server_svid, ca.bundle_pem), allow_all, connect_tcp)
        if os.geteuid() != 0:  # without CAP_NET_ADMIN the option cannot be set: a clear error
            with pytest.raises(HboneError, match="cannot listen") as raised:
                await server.start(LOOPBACK, 0, transparent=True)
            assert "CAP_NET_ADMIN" in str(raised.value.hint)
            return
        await server.start(LOOPBACK, 0, transparent=True)
        try:
            assert server._server is not None
            [sock] = server._server.sockets
            assert sock.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 1
        finally:
            await server.close()

    run(main)


def test_request_response_through_relays_on_both_ends_is_byte_exact(new_mesh: MeshFactory) -> None:
    """The agent's per-message path: app -> relay -> HBONE -> relay -> echo, 1 KiB at a time."""
    rounds, size = 300, 1024

    async def main() -> None:
        async with new_mesh() as mesh:
            relayed: asyncio.Future[RelayResult] = asyncio.get_running_loop().create_future()

            async def outbound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                relayed.set_result(await relay(await mesh.open(), reader, writer))

            listener = await asyncio.start_server(outbound, LOOPBACK, 0)
            reader, writer = await asyncio.open_connection(
                LOOPBACK, listener.sockets[0].getsockname()[1]
            )
            for index in range(rounds):
                message = index.to_bytes(4, "big") * (size // 4)
                writer.write(message)
                assert await reader.readexactly(size) == message
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            assert await relayed == RelayResult(rounds * size, rounds * size, reset=False)
            listener.close()
            await listener.wait_closed()

    run(main)
