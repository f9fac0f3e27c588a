"""weft._native's own HTTP/2 (no h2 object on a native connection), frame by frame, against a real
h2 client over loopback mutual TLS: SETTINGS, PING, GOAWAY, CONTINUATION, stream limits, idle
streams, and hypothesis-made garbage. Each case ends by checking the server still serves."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hbone_testing import (
    CLIENT_ID,
    SERVER_ID,
    MeshOpener,
    RelayMesh,
    TestCa,
    assert_serving,
    h2_client,
    run,
    settle,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.hbone import HbonePool
from weft.hbone.errors import TunnelUnavailableError
from weft.hbone.native_session import NativeSession, native_available
from weft.tls import Svid, client_context, server_context

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(not native_available(), reason="weft._native is not built"),
]

Events = list[h2.events.Event]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return frame(0x4, 0, 0, b"".join(struct.pack(">HI", key, value) for key, value in pairs))


def connect_block(authority: str, *extra: tuple[str, str]) -> bytes:
    return hpack.Encoder().encode([(":method", "CONNECT"), (":authority", authority), *extra])


async def exchange(
    mesh: RelayMesh,
    data: bytes,
    *,
    until: Callable[[Events], bool],
    client: h2.connection.H2Connection | None = None,
) -> Events:
    """Send `data` on a new TLS connection to the native server; the events an h2 client parses
    from the answer, once `until(events)` holds or the server closed (5 s at most)."""
    client = client or h2_client()
    reader, writer = await mesh.tls_connect()
    writer.write(data)
    events: Events = []
    with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
        async with asyncio.timeout(5):
            while not until(events):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                events += client.receive_data(chunk)
    writer.close()
    return events


def terminated(events: Events) -> int | None:
    """The error code of the server's GOAWAY, if it sent one."""
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            return int(event.error_code or 0)
    return None


def test_settings_are_sent_validated_and_acknowledged_and_pings_answered(
    native_mesh: MeshOpener,
) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2_client()
            client.ping(b"12345678")
            events = await exchange(
                mesh,
                client.data_to_send(),
                until=lambda e: (
                    any(isinstance(x, h2.events.PingAckReceived) for x in e)
                    and any(isinstance(x, h2.events.SettingsAcknowledged) for x in e)
                ),
                client=client,
            )
            [changed] = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
            values = {key: setting.new_value for key, setting in changed.changed_settings.items()}
            assert values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
            assert values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 4 * 1024 * 1024
            assert values[h2.settings.SettingCodes.MAX_FRAME_SIZE] == 256 * 1024
            assert values[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 16 * 1024
            [pong] = [e for e in events if isinstance(e, h2.events.PingAckReceived)]
            assert pong.ping_data == b"12345678"
            assert terminated(events) is None

    run(main)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(settings_frame((0x4, 2**31)), 0x3, id="window-too-large"),
        pytest.param(settings_frame((0x5, 100)), 0x1, id="frame-size-too-small"),
        pytest.param(settings_frame((0x5, 2**24)), 0x1, id="frame-size-too-large"),
        pytest.param(settings_frame((0x2, 2)), 0x1, id="enable-push-2"),
        pytest.param(frame(0x4, 0, 0, b"\0" * 5), 0x6, id="settings-length"),
        pytest.param(frame(0x4, 0x1, 0, b"\0" * 6), 0x6, id="ack-with-payload"),
        pytest.param(frame(0x4, 0, 1), 0x1, id="settings-on-a-stream"),
        pytest.param(frame(0x6, 0, 0, b"\0" * 7), 0x6, id="short-ping"),
        pytest.param(frame(0x6, 0, 1, b"\0" * 8), 0x1, id="ping-on-a-stream"),
        pytest.param(frame(0x7, 0, 0, b"\0" * 4), 0x6, id="short-goaway"),
        pytest.param(frame(0x3, 0, 5, b"\0" * 4), 0x1, id="rst-idle-stream"),
        pytest.param(frame(0x3, 0, 0, b"\0" * 4), 0x1, id="rst-stream-zero"),
        pytest.param(frame(0x8, 0, 9, b"\0\0\0\1"), 0x1, id="window-update-idle-stream"),
        pytest.param(frame(0x1, 0x4, 2, connect_block("127.0.0.1:1")), 0x1, id="even-stream"),
        pytest.param(frame(0x5, 0x4, 1, b"\0\0\0\2"), 0x1, id="push-promise"),
        pytest.param(frame(0x9, 0x4, 1, b""), 0x1, id="continuation-alone"),
        pytest.param(frame(0x2, 0, 0, b"\0" * 5), 0x1, id="priority-stream-zero"),
        pytest.param(frame(0x1, 0x4, 1, b"\xff\xff\xff\xff"), 0x9, id="bad-hpack"),
    ],
)
def test_protocol_violations_are_goaway_with_the_right_code(
    native_mesh: MeshOpener, frames: bytes, code: int
) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            preface = h2_client().data_to_send()
            events = await exchange(
                mesh, preface + frames, until=lambda e: terminated(e) is not None
            )
            assert terminated(events) == code
            await assert_serving(mesh)

    run(main)


def test_the_first_frame_must_be_settings_and_the_preface_exact(native_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            events = await exchange(
                mesh, preface + frame(0x6, 0, 0, b"\0" * 8), until=lambda e: False
            )
            assert terminated(events) == 0x1
            events = await exchange(mesh, b"GET / HTTP/1.1\r\n\r\n", until=lambda e: False)
            assert terminated(events) == 0x1
            await assert_serving(mesh)

    run(main)


def test_priority_and_unknown_frames_are_ignored(native_mesh: MeshOpener) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2_client()
            extra = frame(0x2, 0, 3, b"\0\0\0\0\x10") + frame(0xBB, 0xFF, 7, b"whatever")
            events = await exchange(
                mesh,
                client.data_to_send() + extra + frame(0x6, 0, 0, b"abcdefgh"),
                until=lambda e: any(isinstance(x, h2.events.PingAckReceived) for x in e),
                client=client,
            )
            assert any(isinstance(x, h2.events.PingAckReceived) for x in events)
            assert terminated(events) is None

    run(main)


def test_a_connect_in_headers_and_continuation_frames_is_served(native_mesh: MeshOpener) -> None:
    """A header block cut into HEADERS (padded, with a priority) + CONTINUATION + CONTINUATION;
    an interleaved frame in the middle of one is a PROTOCOL_ERROR."""

    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2_client()
            client.send_headers(1, [(":method", "CONNECT"), (":authority", "x:1")])  # state
            block = connect_block(mesh.targets["echo"], ("forwarded", "for=10.0.0.1"))
            first = bytes((4,)) + b"\x00\x00\x00\x00\x10" + block[:5] + b"\0" * 4
            frames = (
                frame(0x1, 0x8 | 0x20, 1, first)
                + frame(0x9, 0, 1, block[5:9])
                + frame(0x9, 0x4, 1, block[9:])
                + frame(0x0, 0x1, 1, b"hello")
            )
            preface = h2_client().data_to_send()
            events = await exchange(
                mesh,
                preface + frames,
                until=lambda e: any(isinstance(x, h2.events.StreamEnded) for x in e),
                client=client,
            )
            [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
            assert dict(response.headers)[b":status"] == b"200"
            data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            assert data == b"hello"
            interleaved = frame(0x1, 0, 3, block[:5]) + frame(0x6, 0, 0, b"\0" * 8)
            events = await exchange(
                mesh,
                preface + interleaved,
                until=lambda e: terminated(e) is not None,
            )
            assert terminated(events) == 0x1
            await assert_serving(mesh)

    run(main)


def test_streams_over_the_limit_are_refused_and_bad_connects_cost_one_stream(
    native_mesh: MeshOpener,
) -> None:
    """101 CONNECTs at once (before the client could know our limit): one REFUSED_STREAM. An
    oversized header list and a malformed CONNECT are 400 on their stream only."""

    async def main() -> None:
        async with native_mesh() as mesh:
            client = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
            )
            client.initiate_connection()
            client.send_headers(
                1,
                [
                    (":method", "CONNECT"),
                    (":authority", mesh.targets["echo"]),
                    ("x-big", "v" * 20000),  # in HEADERS + CONTINUATION
                ],
            )
            client.send_headers(3, [(":method", "GET"), (":authority", mesh.targets["echo"])])
            for index in range(101):
                client.send_headers(
                    5 + 2 * index, [(":method", "CONNECT"), (":authority", mesh.targets["echo"])]
                )

            def done(events: Events) -> bool:
                answered = {
                    e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)
                }
                resets = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
                return len(answered | resets) >= 103

            events = await exchange(mesh, client.data_to_send(), until=done, client=client)
            statuses = {
                e.stream_id: dict(e.headers)[b":status"]
                for e in events
                if isinstance(e, h2.events.ResponseReceived)
            }
            refused = [
                e.stream_id
                for e in events
                if isinstance(e, h2.events.StreamReset) and e.error_code == 0x7
            ]
            assert refused == [205]
            assert statuses[1] == b"400"
            assert statuses[3] == b"400"
            assert sorted(k for k, v in statuses.items() if v == b"200") == list(range(5, 205, 2))
            assert terminated(events) is None
            await assert_serving(mesh)

    run(main)


def test_a_draining_server_finishes_its_streams_and_the_pool_dials_anew(
    native_mesh: MeshOpener,
) -> None:
    """GOAWAY from the server (drain): the open tunnel goes on; the pool opens the next tunnel
    on a new connection, and the old one closes once its last stream ends."""

    async def main() -> None:
        async with native_mesh() as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"one")
            assert await reader.readexactly(3) == b"one"
            [server_session] = [s for s in mesh.server._sessions if isinstance(s, NativeSession)]
            server_session.drain()
            [group] = mesh.pool._connections.values()
            await settle(lambda: not group[0].has_room())
            await assert_serving(mesh)  # a new connection
            assert mesh.pool.stats.handshakes == 2
            writer.write(b"two")
            assert await reader.readexactly(3) == b"two"
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await settle(lambda: server_session.lost)

    run(main)


def test_a_client_refuses_its_streams_above_the_last_id_of_a_goaway(
    ca: TestCa, client_svid: Svid, server_svid: Svid
) -> None:
    """An h2 server answers the first CONNECT with GOAWAY(last stream 0): the native client's
    stream was never served, so open_stream() fails as unavailable (not refused by policy) and
    the pool stops using that connection, which closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        writer.write(server.data_to_send())
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for event in server.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        server.close_connection(last_stream_id=0)
                writer.write(server.data_to_send())
        writer.close()

    async def main() -> None:
        listener = await asyncio.start_server(
            serve, "127.0.0.1", 0, ssl=server_context(server_svid, ca.bundle_pem)
        )
        port = listener.sockets[0].getsockname()[1]
        pool = HbonePool(lambda _: client_context(client_svid, ca.bundle_pem), data_path="native")
        try:
            with pytest.raises(TunnelUnavailableError, match="refused the stream unserved"):
                await pool.open_stream(CLIENT_ID, SERVER_ID, ("127.0.0.1", port), "127.0.0.1:9")
            await settle(lambda: pool.connection_count() == 0)
        finally:
            await pool.close()
            listener.close()

    run(main)


# --- garbage ---------------------------------------------------------------------------------

PING = frame(0x6, 0, 0, b"-last-!-")
PING_ACK = frame(0x6, 0x1, 0, b"-last-!-")
_frames = st.builds(
    frame,
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]),
    st.binary(max_size=64),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frames, min_size=1, max_size=6))
def test_frame_level_garbage_is_answered_or_closed_and_the_server_keeps_serving(
    native_mesh: MeshOpener, frames: list[bytes]
) -> None:
    async def main() -> None:
        async with native_mesh() as mesh:
            reader, writer = await mesh.tls_connect()
            writer.write(h2_client().data_to_send() + b"".join(frames) + PING)
            # answered (the last PING comes back) or closed: either way, not hung
            received = b""
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                async with asyncio.timeout(5):
                    while PING_ACK not in received and (chunk := await reader.read(65536)):
                        received += chunk
            writer.close()
            await assert_serving(mesh)

    run(main)
