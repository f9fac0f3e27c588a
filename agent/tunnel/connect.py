"""The agent's TCP connection to a workload, from the agent's address, without bind()'s port search.

The agent connects to workloads from its own address (the one a STRICT workload accepts), so the
socket is bound before connect(). A plain bind() to port 0 picks the ephemeral port at bind time,
where the kernel may not reuse a port any other socket holds, TIME_WAIT included: with a few
thousand new connections per second the range fills with TIME_WAIT, each bind() scans more of it
(on loopback it became 76% of the inbound agent's CPU at 8 connections in flight, ~1.9 ms per
connection) and at last fails. IP_BIND_ADDRESS_NO_PORT (Linux 4.2) leaves the port to connect(),
which picks it per 4-tuple as an unbound connect() does, reusing ports whose TIME_WAIT is towards
another destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from ipaddress import IPv4Address

from agent.addresses import address_text

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # linux/in.h


async def open_from(
    source: IPv4Address | None, address: IPv4Address, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to address:port from `source` (any port; None: the kernel's choice).

    OSError if it cannot be made; callers bound the wait (asyncio.timeout).
    """
    if source is None:
        return await asyncio.open_connection(str(address), port)
    return await asyncio.open_connection(sock=await connect_from(source, address, port))


async def connect_from(source: IPv4Address, address: IPv4Address, port: int) -> socket.socket:
    """open_from() as a bare connected non-blocking socket, for the native data path (no asyncio
    transport or streams: weft._native takes the descriptor, and sets TCP_NODELAY)."""
    # non-blocking from socket() on: no separate ioctl per connection
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((address_text(source), 0))  # formatted once per address, not per connection
        await _connect(sock, (address_text(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """loop.sock_connect() for a numeric address: uvloop's resolves even an IP address with
    getaddrinfo in its thread pool (15% of the inbound agent's time per connection, and a
    thread hop of latency); here the connect() is tried at once and completed on writability."""
    error = sock.connect_ex(address)
    if error == 0:
        return
    if error not in (errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(error, os.strerror(error))
    # To a workload on this node (veth, loopback) the handshake is done within connect() itself:
    # then there is no need to wait for writability (two epoll_ctl calls and a loop turn).
    with contextlib.suppress(OSError):
        sock.getpeername()
        return
    loop = asyncio.get_running_loop()
    writable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not writable.done():
            writable.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, wake)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))
