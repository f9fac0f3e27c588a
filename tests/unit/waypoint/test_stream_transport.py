"""waypoint.stream_transport: an HBONE stream as an asyncio transport, with TCP's semantics.

Real parts: the transport rides a stream of weft.hbone's pool over mutual TLS on loopback to an
HboneServer that splices it to a TCP connection the test drives; the protocol records what the
transport calls on it, as the fast path's protocols would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from waypoint_testing import (
    SMALL_WINDOWS,
    closes_with_a_fin_then_late_bytes_reset,
    eventually,
    hbone_tunnel,
    offer_until_blocked,
    recv_until_closed,
    recv_until_reset,
    reset,
)
from waypoint_testing import TUNNEL_TIMEOUT_S as TIMEOUT_S
from waypoint_testing import run_tunnel_test as run

from waypoint.stream_transport import WRITE_HIGH_WATER, StreamTransport
from weft.hbone import TunnelSettings


class Recorder(asyncio.Protocol):
    """Keeps what it receives and the calls it gets; `keep_open` answers eof_received()."""

    def __init__(self, keep_open: bool = True) -> None:
        self.keep_open = keep_open
        self.received = b""
        self.calls: list[str] = []
        self.lost: list[Exception | None] = []
        self.arrived = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()

    def eof_received(self) -> bool:
        self.calls.append("eof")
        self.arrived.set()
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.arrived.set()

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    async def until(self, condition: object) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not condition():  # type: ignore[operator]
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def started(
    settings: TunnelSettings | None = None, keep_open: bool = True
) -> AsyncIterator[tuple[StreamTransport, Recorder, socket.socket]]:
    """A started transport on a tunnel to an HBONE server whose target is a TCP socket the test
    holds, driving a Recorder."""
    async with hbone_tunnel(settings) as (stream, peer):
        protocol = Recorder(keep_open)
        transport = StreamTransport(stream, protocol)
        transport.start()
        yield transport, protocol, peer


def test_bytes_go_both_ways_and_each_half_closes_on_its_own() -> None:
    async def main() -> None:
        async with started() as (transport, protocol, peer):
            loop = asyncio.get_running_loop()
            transport.write(b"request")
            assert await asyncio.wait_for(loop.sock_recv(peer, 100), TIMEOUT_S) == b"request"
            transport.write_eof()  # END_STREAM becomes a FIN on the TCP side ...
            assert await recv_until_closed(peer) == b""
            await loop.sock_sendall(peer, b"response")  # ... which may still answer
            await protocol.until(lambda: protocol.received == b"response")
            peer.shutdown(socket.SHUT_WR)
            await protocol.until(lambda: protocol.calls)
            assert protocol.calls == ["eof"]
            assert not protocol.lost  # as asyncio's transports: open until close()
            transport.close()
            await asyncio.wait_for(transport.lost, TIMEOUT_S)
            assert protocol.lost == [None]

    run(main())


def test_an_eof_the_protocol_does_not_keep_closes_the_transport() -> None:
    async def main() -> None:
        # keep_open=False: as FastUpstream answers a backend's EOF
        async with started(keep_open=False) as (_, protocol, peer):
            await asyncio.get_running_loop().sock_sendall(peer, b"last")
            peer.shutdown(socket.SHUT_WR)
            await protocol.until(lambda: protocol.lost)
            assert (protocol.received, protocol.calls, protocol.lost) == (b"last", ["eof"], [None])
            assert await recv_until_closed(peer) == b""

    run(main())


def test_a_reset_from_the_peer_is_connection_lost_with_an_error() -> None:
    async def main() -> None:
        async with started() as (transport, protocol, peer):
            await asyncio.get_running_loop().sock_sendall(peer, b"before")
            await protocol.until(lambda: protocol.received)
            reset(peer)
            await protocol.until(lambda: protocol.lost)
            assert isinstance(protocol.lost[0], ConnectionResetError)
            assert transport.is_closing()
            transport.write(b"dropped")  # as on a reset socket's transport: nothing happens

    run(main())


def test_close_sends_a_fin_and_bytes_arriving_after_it_reset_the_tunnel() -> None:
    async def main() -> None:
        async with started() as (transport, protocol, peer):
            await closes_with_a_fin_then_late_bytes_reset(transport, peer)
            assert protocol.lost == [None]  # a clean close for the protocol

    run(main())


def test_close_with_bytes_held_unread_resets_the_tunnel() -> None:
    async def main() -> None:
        async with started() as (transport, protocol, peer):
            transport.pause_reading()
            await asyncio.get_running_loop().sock_sendall(peer, b"unread")
            await eventually(lambda: transport._held)  # until it arrived
            assert protocol.received == b""  # held while reading is paused
            transport.close()
            await recv_until_reset(peer)

    run(main())


def test_abort_resets_the_tcp_side_and_is_a_clean_loss_for_the_protocol() -> None:
    async def main() -> None:
        async with started() as (transport, protocol, peer):
            transport.abort()
            await recv_until_reset(peer)
            await protocol.until(lambda: protocol.lost)
            assert protocol.lost == [None]  # as asyncio's abort(): our own doing, no error

    run(main())


def test_a_peer_that_does_not_read_pauses_the_protocol_then_resumes_it() -> None:
    async def main() -> None:
        async with started(SMALL_WINDOWS) as (transport, protocol, peer):
            chunk = b"x" * 65536
            written = 0
            while "pause" not in protocol.calls and written < 20 * 1024 * 1024:
                transport.write(chunk)
                written += len(chunk)
                await asyncio.sleep(0)
            assert "pause" in protocol.calls, "pause_writing() never came"
            # What waits in the transport is bounded: the rest is the peer's window's problem.
            assert transport.get_write_buffer_size() <= WRITE_HIGH_WATER + len(chunk)
            received = 0
            loop = asyncio.get_running_loop()
            while received < written:
                received += len(await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), TIMEOUT_S))
            assert received == written
            await protocol.until(lambda: protocol.calls[-1] == "resume")
            assert transport.get_write_buffer_size() == 0

    run(main())


def test_paused_reading_holds_bytes_unacknowledged_until_resumed() -> None:
    async def main() -> None:
        async with started(SMALL_WINDOWS) as (transport, protocol, peer):
            transport.pause_reading()
            sent = await offer_until_blocked(peer)  # the protocol is given nothing
            held = sum(len(data) for data, _ in transport._held)
            # The stream window (256 KiB) bounds what reaches the transport unread.
            assert protocol.received == b""
            assert held <= 256 * 1024 < sent
            transport.resume_reading()  # delivering gives the window back: the rest flows
            await protocol.until(lambda: len(protocol.received) >= sent)

    run(main())
