"""weft._native's HBONE data path against the Python one, both ways, over loopback mutual TLS.

Each test runs an application connection through a relaying "front" (what an agent's outbound
does: accept TCP, open an HBONE stream, relay()) to an HboneServer in front of a real TCP target;
client and server each run the native or the Python data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import struct
import sys
from types import FrameType

import h2.config
import h2.connection
import h2.events
import pytest
from hbone_testing import (
    CLIENT_ID,
    LOOPBACK,
    SERVER_ID,
    Headers,
    MeshOpener,
    RelayMesh,
    TestCa,
    abort_with_rst,
    assert_serving,
    authority_of,
    closed_port,
    ending_watcher,
    h2_client,
    mesh_on,
    refused_client_contexts,
    run,
    settle,
)

from weft.hbone import HboneError, RelayResult, TunnelRefusedError
from weft.hbone.errors import TunnelUnavailableError
from weft.hbone.native_session import NativeSession, check_data_path, native_available
from weft.identity import Identity
from weft.tls import Svid, peer_identity_der

# (client data path, server data path): interop both ways, native on both ends, and the
# Python path as the reference
PATHS = [("native", "python"), ("python", "native"), ("native", "native"), ("python", "python")]

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(
        not native_available(),
        reason="weft._native is not built (pip install -e . with libssl-dev)",
    ),
]


@pytest.fixture(params=PATHS, ids=lambda p: f"{p[0]}-to-{p[1]}")
def paths(request: pytest.FixtureRequest) -> tuple[str, str]:
    path: tuple[str, str] = request.param
    return path


@pytest.fixture
def open_mesh(
    ca: TestCa, client_svid: Svid, server_svid: Svid, paths: tuple[str, str]
) -> MeshOpener:
    """mesh_on() on the session's PKI and this case's data paths: open_mesh(authorize=...)."""
    return functools.partial(mesh_on, ca, client_svid, server_svid, paths)


def test_data_both_ways_with_half_close(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with open_mesh() as mesh:
            reader, writer = await mesh.connect("count")
            writer.write(b"x" * 100_000)
            writer.write_eof()  # the target answers only after our FIN reached it
            assert await reader.read() == b"got 100000"
            writer.close()
            await settle(lambda: len(mesh.results) == 1 and len(mesh.server_results) == 1)
            assert mesh.results == [RelayResult(100_000, 10, reset=False)]
            assert mesh.server_results == [RelayResult(10, 100_000, reset=False)]

    run(main)


def test_one_mebibyte_echo_and_request_response_are_byte_exact(open_mesh: MeshOpener) -> None:
    """1 MiB goes beyond the default 64 KiB windows and through WINDOW_UPDATEs both ways."""

    async def main() -> None:
        async with open_mesh() as mesh:
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


def test_the_target_half_closes_first(open_mesh: MeshOpener) -> None:
    """The other direction's half-close: the target's FIN, then our bytes still get through."""

    async def first_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.write_eof()
        sink.append(await reader.read())
        writer.close()

    sink: list[bytes] = []

    async def main() -> None:
        listener = await asyncio.start_server(first_fin, LOOPBACK, 0)
        target = authority_of(listener)
        async with open_mesh() as mesh:
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


def test_a_target_reset_reaches_the_application_and_back(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with open_mesh() as mesh:
            reader, writer = await mesh.connect("reset")
            assert await reader.readexactly(5) == b"hello"
            writer.write(b"hi!")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await settle(lambda: len(mesh.results) == 1)
            assert mesh.results[0].reset is True

    run(main)


def test_an_application_reset_reaches_the_target(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with ending_watcher(b"ready") as (target, outcome), open_mesh() as mesh:
            reader, writer = await mesh.connect(target)
            assert await reader.readexactly(5) == b"ready"
            abort_with_rst(writer)
            assert await asyncio.wait_for(outcome, 5) == "reset"
            await settle(lambda: len(mesh.server_results) == 1)
            assert mesh.server_results[0].reset is True

    run(main)


def test_many_streams_share_one_tls_connection(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with open_mesh() as mesh:

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


def test_refused_connects_are_401_and_503(open_mesh: MeshOpener) -> None:
    seen: list[Identity] = []

    async def only_echo(peer: Identity, authority: str, headers: Headers) -> bool:
        seen.append(peer)
        return not authority.endswith(":1")

    async def main() -> None:
        async with open_mesh(authorize=only_echo) as mesh:
            for target in (f"{LOOPBACK}:1", f"{LOOPBACK}:{closed_port()}"):
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


def test_the_pool_refuses_a_peer_with_the_wrong_identity(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with open_mesh(expected=CLIENT_ID) as mesh:
            reader, writer = await mesh.connect()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await settle(lambda: len(mesh.refusals) == 1)
            [error] = mesh.refusals
            assert isinstance(error, TunnelUnavailableError)
            assert f"presented identity {SERVER_ID}" in str(error)

    run(main)


def test_a_target_that_does_not_read_holds_memory_at_the_windows(open_mesh: MeshOpener) -> None:
    """Back-pressure: window is given back only for bytes the target's socket took."""
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def main() -> None:
        listener = await asyncio.start_server(never_read, LOOPBACK, 0)
        target = authority_of(listener)
        async with open_mesh() as mesh:
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


def test_the_server_closing_mid_stream_resets_the_application(open_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with open_mesh() as mesh:
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


async def raw_tls_exchange(mesh: RelayMesh, data: bytes) -> bytes:
    reader, writer = await mesh.tls_connect()
    writer.write(data)
    received = b""
    with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += chunk
    writer.close()
    return received


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
    native_mesh: MeshOpener, garbage: bytes
) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2_client()
            received = await raw_tls_exchange(mesh, client.data_to_send() + garbage)
            events = client.receive_data(received)
            assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
            await assert_serving(mesh)

    run(main)


def test_data_beyond_the_window_is_a_flow_control_error(native_mesh: MeshOpener) -> None:
    """A client that ignores our window: FLOW_CONTROL_ERROR, and only its connection goes."""

    async def main() -> None:
        async with native_mesh() as mesh:
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
            received = await raw_tls_exchange(mesh, client.data_to_send() + flood)
            events = client.receive_data(received)
            [terminated] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
            assert terminated.error_code in (h2.errors.ErrorCodes.FLOW_CONTROL_ERROR,)
            await assert_serving(mesh)

    run(main)


def test_clients_without_a_certificate_or_alpn_are_refused(native_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            for context in refused_client_contexts(mesh.ca, mesh.client_svid).values():
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
    native_mesh: MeshOpener,
) -> None:
    """A client may send DATA right behind its CONNECT: the native server holds it (within the
    stream window) while it authorizes and connects, and delivers it once spliced."""

    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2_client()
            client.send_headers(1, [(":method", "CONNECT"), (":authority", mesh.targets["echo"])])
            client.send_data(1, b"early bytes", end_stream=True)
            reader, writer = await mesh.tls_connect()
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
