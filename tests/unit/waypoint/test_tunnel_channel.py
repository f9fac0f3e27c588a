"""waypoint.tunnel_channel: the proxy's reader/writer over an HBONE stream, with TCP's semantics.

Real parts: the channel rides a stream of weft.hbone's pool over mutual TLS on loopback to an
HboneServer that splices it to a TCP connection the test drives, so each behaviour is what an
application behind a destination agent would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
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

from waypoint.tunnel_channel import TunnelChannel
from weft.hbone import TunnelSettings


@contextlib.asynccontextmanager
async def tunnel(
    settings: TunnelSettings | None = None,
) -> AsyncIterator[tuple[TunnelChannel, socket.socket]]:
    """A channel on a tunnel to an HBONE server whose target is a TCP socket the test holds."""
    async with hbone_tunnel(settings) as (stream, peer):
        yield TunnelChannel(stream), peer


def test_bytes_go_both_ways_and_each_half_closes_on_its_own() -> None:
    async def main() -> None:
        async with tunnel() as (channel, peer):
            loop = asyncio.get_running_loop()
            channel.write(b"request")
            await channel.drain()
            assert await asyncio.wait_for(loop.sock_recv(peer, 100), TIMEOUT_S) == b"request"
            channel.write_eof()  # END_STREAM becomes a FIN on the TCP side ...
            assert await recv_until_closed(peer) == b""
            await loop.sock_sendall(peer, b"response")  # ... which may still answer
            assert await asyncio.wait_for(channel.read(), TIMEOUT_S) == b"response"
            peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(channel.read(), TIMEOUT_S) == b""
            assert channel.at_eof()

    run(main())


def test_a_reset_from_the_peer_fails_reads_after_what_came_before_it_and_drains() -> None:
    async def main() -> None:
        async with tunnel() as (channel, peer):
            await asyncio.get_running_loop().sock_sendall(peer, b"before")
            reset(peer)
            assert await asyncio.wait_for(channel.read(), TIMEOUT_S) == b"before"
            with pytest.raises(ConnectionResetError, match="reset"):
                await asyncio.wait_for(channel.read(), TIMEOUT_S)
            assert channel.at_eof()
            assert channel.is_closing()
            channel.write(b"dropped")  # as on a reset socket: no error until drain()
            with pytest.raises(ConnectionResetError):
                await channel.drain()

    run(main())


def test_close_sends_a_fin_and_bytes_arriving_after_it_reset_the_tunnel() -> None:
    async def main() -> None:
        async with tunnel() as (channel, peer):
            await closes_with_a_fin_then_late_bytes_reset(channel, peer)

    run(main())


def test_close_with_unread_bytes_resets_the_tunnel() -> None:
    async def main() -> None:
        async with tunnel() as (channel, peer):
            await asyncio.get_running_loop().sock_sendall(peer, b"unread")
            await eventually(lambda: channel._chunks)  # until it arrived
            channel.close()
            await recv_until_reset(peer)

    run(main())


def test_abort_resets_the_tcp_side() -> None:
    async def main() -> None:
        async with tunnel() as (channel, peer):
            channel.abort()
            await recv_until_reset(peer)
            with pytest.raises(ConnectionResetError):
                await channel.read()

    run(main())


def test_a_peer_that_does_not_read_makes_drain_wait_instead_of_buffering() -> None:
    async def main() -> None:
        async with tunnel(SMALL_WINDOWS) as (channel, peer):
            chunk = b"x" * 65536
            written = 0
            for _ in range(400):  # 25 MiB: far beyond windows and socket buffers
                channel.write(chunk)
                written += len(chunk)
                try:
                    await asyncio.wait_for(channel.drain(), 0.2)
                except TimeoutError:
                    break
            assert written < 20 * 1024 * 1024, "drain() never waited"
            # What waits in the channel is at most one write: the rest is the peer's problem.
            assert sum(map(len, channel._pending)) <= len(chunk)
            received = 0
            loop = asyncio.get_running_loop()
            drained = asyncio.ensure_future(channel.drain())
            while received < written:
                received += len(await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), TIMEOUT_S))
            await asyncio.wait_for(drained, TIMEOUT_S)  # reading on the far side frees it
            assert received == written

    run(main())


def test_bytes_the_proxy_does_not_read_are_not_acknowledged() -> None:
    async def main() -> None:
        async with tunnel(SMALL_WINDOWS) as (channel, peer):
            sent = await offer_until_blocked(peer)  # the channel reads nothing
            buffered = sum(len(data) for data, _ in channel._chunks)
            # The stream window (256 KiB) bounds what reaches the channel unread.
            assert buffered <= 256 * 1024 < sent
            total = 0
            while total < sent:  # reading gives the window back: the rest flows
                total += len(await asyncio.wait_for(channel.read(), TIMEOUT_S))
            assert total >= sent

    run(main())
