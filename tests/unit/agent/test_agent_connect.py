"""open_from/connect_from: the agent's connection to a workload, from its address, any port."""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import IPv4Address

from agent.tunnel.connect import IP_BIND_ADDRESS_NO_PORT, connect_from, open_from


def test_the_connection_comes_from_the_agent_address_without_a_bind_time_port() -> None:
    async def main() -> tuple[str, int]:
        peers: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            writer.write(await reader.read(5))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await open_from(IPv4Address("127.0.0.3"), IPv4Address("127.0.0.2"), port)
        writer.write(b"hello")
        assert await reader.read() == b"hello"
        sock = writer.get_extra_info("socket")
        no_port = sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT)
        writer.close()
        server.close()
        return peers[0], no_port

    peer, no_port = asyncio.run(asyncio.wait_for(main(), 10))
    assert peer == "127.0.0.3"
    assert no_port == 1


def test_a_refused_connection_raises_oserror_and_leaks_no_socket() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        try:
            await open_from(IPv4Address("127.0.0.3"), IPv4Address("127.0.0.2"), port)
        except OSError:
            return
        raise AssertionError("connected to a port nobody listens on")

    asyncio.run(asyncio.wait_for(main(), 10))


def test_connect_from_gives_a_bare_connected_socket_from_the_agent_address() -> None:
    """The native data path's variant: no asyncio transport (weft._native takes the socket)."""

    async def main() -> tuple[tuple[str, int], tuple[str, int], bool]:
        listener = socket.socket()
        listener.bind(("127.0.0.2", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sock = await connect_from(IPv4Address("127.0.0.3"), IPv4Address("127.0.0.2"), port)
        accepted, _ = listener.accept()
        try:
            return (
                accepted.getpeername(),
                sock.getpeername(),
                sock.getblocking(),
            )
        finally:
            accepted.close()
            sock.close()
            listener.close()

    peer, connected_to, blocking = asyncio.run(asyncio.wait_for(main(), 10))
    assert peer[0] == "127.0.0.3"
    assert connected_to[0] == "127.0.0.2"
    assert blocking is False


def test_connect_from_a_refused_port_raises_connection_refused() -> None:
    async def main() -> int:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            await connect_from(IPv4Address("127.0.0.3"), IPv4Address("127.0.0.2"), port)
        except OSError as error:
            return error.errno or 0
        raise AssertionError("connected to a port nobody listens on")

    assert asyncio.run(asyncio.wait_for(main(), 10)) == errno.ECONNREFUSED
