"""demo.httpclient against real loopback servers: connection reuse, retry of a stale connection."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from demo.addresses import Address
from demo.http1 import encode_response
from demo.httpclient import HttpClient, HttpRequestError


async def serve_requests_then_close(per_connection: int) -> tuple[asyncio.Server, list[int]]:
    """A server answering `per_connection` requests per connection, then closing it silently.

    Returns the server and a list that records how many connections it accepted.
    """
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        for _ in range(per_connection):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"GET ")
            writer.write(encode_response(200, (), b"ok"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    asyncio.run(keep_alive_reuses_one_connection())


async def keep_alive_reuses_one_connection() -> None:
    server, accepted = await serve_requests_then_close(per_connection=5)
    client = HttpClient(Address("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        statuses = [(await client.request("GET", f"/{i}")).status for i in range(5)]
    finally:
        await client.close()
        server.close()
    assert (statuses, len(accepted)) == ([200] * 5, 1)


def test_a_connection_the_server_closed_while_idle_is_retried_once_on_a_new_one() -> None:
    asyncio.run(stale_connection_is_retried())


async def stale_connection_is_retried() -> None:
    server, accepted = await serve_requests_then_close(per_connection=1)
    client = HttpClient(Address("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        first = await client.request("GET", "/a")
        await asyncio.sleep(0.05)  # let the server's close reach the pooled connection
        second = await client.request("GET", "/b")
    finally:
        await client.close()
        server.close()
    assert (first.body, second.body, len(accepted)) == (b"ok", b"ok", 2)


def test_refused_connection_is_an_error_naming_the_address(refused_address: str) -> None:
    host, port = refused_address.rsplit(":", 1)
    client = HttpClient(Address(host, int(port)))
    with pytest.raises(HttpRequestError, match=f"{refused_address}: connection refused"):
        asyncio.run(client.request("GET", "/"))


def test_without_keep_alive_every_request_gets_its_own_connection() -> None:
    asyncio.run(connection_per_request())


async def connection_per_request() -> None:
    server, accepted = await serve_requests_then_close(per_connection=1)
    address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
    client = HttpClient(address, keep_alive=False)
    try:
        for index in range(3):
            assert (await client.request("GET", f"/{index}")).status == 200
    finally:
        await client.close()
        server.close()
    assert len(accepted) == 3


def test_an_idle_connection_the_server_reset_is_replaced_under_uvloop() -> None:
    # uvloop closes the transport on a reset and then refuses writes with RuntimeError
    # ("the handler is closed"); that must be a stale connection to replace, not an error.
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(reset_connection_is_replaced())


async def reset_connection_is_replaced() -> None:
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(encode_response(200, (), b"ok"))
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = HttpClient(Address("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        first = await client.request("GET", "/a")
        await asyncio.sleep(0.05)  # let the reset reach the pooled connection
        second = await client.request("GET", "/b")
    finally:
        await client.close()
        server.close()
    assert (first.body, second.body, len(accepted)) == (b"ok", b"ok", 2)
