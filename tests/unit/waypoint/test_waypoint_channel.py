"""waypoint.channel (the proxy's socket I/O), the id and timestamp helpers."""

from __future__ import annotations

import asyncio
import datetime
import random
import socket
import uuid

import pytest
from waypoint_testing import port_of, socket_listener

from waypoint.channel import READ_HIGH_WATER, SocketChannel, open_channel
from waypoint.http1 import Http1Error, Request, RequestParser
from waypoint.proxy import RandomPool, utc_timestamp, uuid4_text


async def _pair() -> tuple[SocketChannel, socket.socket, asyncio.Server]:
    """A channel dialled to a loopback server whose accepted socket the test drives."""
    server, accepted = await socket_listener()
    channel = await open_channel("127.0.0.1", port_of(server))
    return channel, await accepted.get(), server


def test_reads_chunks_then_empty_at_eof_and_writes_through() -> None:
    async def main() -> None:
        channel, peer, server = await _pair()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(peer, b"hello")
        assert await channel.read() == b"hello"
        channel.write(b"back")
        await channel.drain()
        assert await loop.sock_recv(peer, 10) == b"back"
        peer.shutdown(socket.SHUT_WR)
        assert await channel.read() == b""
        assert channel.at_eof()
        channel.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_a_read_with_a_timeout_raises_when_nothing_comes() -> None:
    async def main() -> None:
        channel, peer, server = await _pair()
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await channel.read(timeout_s=0.1)
        assert 0.09 < asyncio.get_running_loop().time() - started < 1.0
        await asyncio.get_running_loop().sock_sendall(peer, b"late")
        assert await channel.read(timeout_s=1.0) == b"late"  # the channel still works after
        channel.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_a_peer_that_does_not_read_makes_drain_wait_instead_of_buffering() -> None:
    async def main() -> None:
        channel, peer, server = await _pair()
        chunk = b"x" * 65536
        for _ in range(200):  # 12.5 MiB: far beyond the kernel's socket buffers
            channel.write(chunk)
            try:
                await asyncio.wait_for(channel.drain(), 0.2)
            except TimeoutError:
                break
        else:
            pytest.fail("drain never waited although the peer reads nothing")
        loop = asyncio.get_running_loop()
        drained = loop.create_task(channel.drain())
        while not drained.done():  # reading on the peer side lets drain() return
            await loop.sock_recv(peer, 1 << 20)
            await asyncio.sleep(0)
        await drained
        channel.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_a_reader_that_falls_behind_stops_the_socket_reads() -> None:
    async def main() -> None:
        channel, peer, server = await _pair()
        loop = asyncio.get_running_loop()
        block = b"y" * 65536
        for _ in range(400):  # at most 25 MiB: the kernel buffers fill once the channel pauses
            try:
                await asyncio.wait_for(loop.sock_sendall(peer, block), 0.3)
            except TimeoutError:
                break
        else:
            pytest.fail("the channel kept reading 25 MiB nobody took from it")
        assert channel._buffered <= READ_HIGH_WATER + 256 * 1024  # at most one read past the mark
        assert len(await channel.read()) > 0  # and reading resumes as the consumer takes data
        channel.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_uuid4_text_is_a_version_4_uuid() -> None:
    pool = RandomPool(64)
    seen = set()
    for _ in range(500):
        text = uuid4_text(pool)
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        seen.add(text)
    assert len(seen) == 500


def test_utc_timestamp_is_what_datetime_prints() -> None:
    rng = random.Random(7)
    for now in [0.0, 0.9995, 1_700_000_000.0249996, *(rng.uniform(0, 2e9) for _ in range(2000))]:
        expected = datetime.datetime.fromtimestamp(now, datetime.UTC)
        assert utc_timestamp(now) == expected.isoformat(timespec="milliseconds"), now


def test_a_parse_error_carries_the_events_completed_before_it() -> None:
    wire = b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    with pytest.raises(Http1Error) as refused:
        RequestParser().feed(wire)
    assert refused.value.status == 400
    assert isinstance(refused.value.events[0], Request)
    assert len(refused.value.events) == 2  # the request and its first chunk
