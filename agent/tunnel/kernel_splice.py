"""The asyncio shell of agent.capture.splice: hand a same-node pair of connections to the kernel.

The two connections arrive as asyncio streams; their sockets are taken out of asyncio (which
would otherwise keep reading them), bytes asyncio had already read are sent on first, and then
the kernel moves the rest (sockhash + sk_skb). The agent still watches each side for end of
stream, which is not data: once the kernel has written everything it redirected, the FIN is
passed on with shutdown(). A reset on either side resets both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time

from agent.bpf.maps import NodeMaps
from agent.capture.splice import Splice, socket_cookie
from agent.tunnel.pipe import PipeResult

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
_LINGER_RESET = struct.pack("ii", 1, 0)


def detach(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[socket.socket, bytes]:
    """Take a connected socket away from its asyncio transport, with the bytes already read.

    The fd is duplicated before the transport closes its own, so closing it neither sends a FIN
    nor loses the connection.
    """
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    owned = transport.get_extra_info("socket")
    sock = socket.socket(fileno=os.dup(owned.fileno()))
    sock.setblocking(False)
    # StreamReader has no public way to take its buffer without waiting for more.
    buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
    transport.abort()
    return sock, buffered


async def splice_connections(
    maps: NodeMaps,
    downstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    cgroup_id: int,
) -> PipeResult:
    """Splice until both directions have ended; returns the bytes each way."""
    loop = asyncio.get_running_loop()
    down, down_early = detach(*downstream)
    up, up_early = detach(*upstream)
    result = PipeResult()
    splice = Splice(maps, down, up, cgroup_id)
    try:
        # Bytes user space already holds go first, so that the kernel's come after them.
        if down_early:
            await loop.sock_sendall(up, down_early)
        if up_early:
            await loop.sock_sendall(down, up_early)
        try:
            splice.start()
        except OSError as err:
            # The sockhash takes only established sockets: a client that already half-closed
            # (CLOSE_WAIT) is relayed in user space below, as every byte would then be.
            log.debug("splice refused (%s); relaying in user space", err)
        relayed = await asyncio.gather(
            _until_end_of_stream(splice, down, up, result),
            _until_end_of_stream(splice, up, down, result),
        )
        in_kernel = [maps.spliced_from(socket_cookie(s)) or 0 for s in (down, up)]
        result.a_to_b = len(down_early) + relayed[0] + in_kernel[0]
        result.b_to_a = len(up_early) + relayed[1] + in_kernel[1]
    finally:
        # At agent shutdown the maps may already be closed; the sockets leave the sockhash
        # by themselves when they close.
        with contextlib.suppress(OSError):
            splice.stop()
        for sock in (down, up):
            if result.reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
    return result


async def _until_end_of_stream(
    splice: Splice, source: socket.socket, peer: socket.socket, result: PipeResult
) -> int:
    """Relay what still reaches user space until `source` ends, then pass its FIN on."""
    loop = asyncio.get_running_loop()
    relayed = 0
    try:
        while data := await loop.sock_recv(source, 1 << 16):
            await loop.sock_sendall(peer, data)
            relayed += len(data)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not splice.drained(source):
            if time.monotonic() > deadline:
                raise TimeoutError("spliced bytes did not drain")
            await asyncio.sleep(0.001)
        peer.shutdown(socket.SHUT_WR)
    except (OSError, TimeoutError):
        result.reset = True
        for sock in (source, peer):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.shutdown(socket.SHUT_RDWR)
    return relayed
