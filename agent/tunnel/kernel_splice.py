"""The asyncio shell of agent.capture.splice: hand a same-node pair of connections to the kernel.

The two connections arrive as asyncio streams; their sockets are taken out of asyncio (which
would otherwise keep reading them), bytes asyncio had already read are sent on first, and then
the kernel moves the rest: by sk_msg where the node attached it (a workload's sends go straight
onto the agent's socket facing the other workload), else by sk_skb (the agent's sockets forward
segments). The
agent still relays what a workload sent before the kernel took over, and watches each side for
end of stream, which is not data: it passes a FIN on with shutdown() once every byte before it
is in the peer's queue. A reset on either side resets both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

from agent.bpf.maps import NodeMaps
from agent.capture.splice import MsgSplice, Splice, bytes_written, socket_cookie
from agent.tunnel.pipe import PipeResult

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
# S enters the sk_msg sockhash when it handles the last ACK of B's handshake, which may come a
# moment after B's connect() returned; this bounds the wait before falling back to sk_skb.
MSG_WORKLOAD_WAIT_S = 0.2
READ_SIZE = 1 << 16
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


@dataclass
class _Direction:
    """One direction of a spliced connection: what the agent relayed and what the kernel moved."""

    source: socket.socket
    peer: socket.socket
    relayed: int = 0  # bytes that went through the agent's user space (early ones included)
    in_kernel: int = 0  # bytes the kernel moved (sk_msg: sent directly; sk_skb: redirected)


async def splice_connections(
    maps: NodeMaps,
    downstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    cgroup_id: int,
) -> PipeResult:
    """Splice until both directions have ended; returns the bytes each way."""
    down, down_early = detach(*downstream)
    up, up_early = detach(*upstream)
    there = _Direction(down, up, relayed=len(down_early))
    back = _Direction(up, down, relayed=len(up_early))
    result = PipeResult()
    try:
        msg = await _msg_splice(maps, down, up, cgroup_id) if maps.msg_splice else None
        if msg is not None:
            try:
                await _run_msg(msg, there, back, down_early, up_early)
            finally:
                with contextlib.suppress(OSError):  # maps closed at agent shutdown
                    msg.stop()
        else:
            await _run_skb(maps, there, back, down_early, up_early, cgroup_id)
    except (OSError, TimeoutError) as err:
        log.debug("spliced connection reset: %r", err)
        result.reset = True
    finally:
        for sock in (down, up):
            if result.reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()  # with linger 0: a reset
    result.a_to_b = there.relayed + there.in_kernel
    result.b_to_a = back.relayed + back.in_kernel
    return result


async def _msg_splice(
    maps: NodeMaps, down: socket.socket, up: socket.socket, cgroup_id: int
) -> MsgSplice | None:
    """The sk_msg splice of this pair, registered; None where it cannot be used (a workload end
    is not in the sockhash, or a socket is no longer established): sk_skb is used instead."""
    try:
        msg = MsgSplice(maps, down, up, cgroup_id)
    except OSError:  # a peer already gone: getpeername() fails
        return None
    deadline = time.monotonic() + MSG_WORKLOAD_WAIT_S
    while not msg.workloads_present():
        if time.monotonic() > deadline:
            log.debug("sk_msg splice: workload sockets of %s not entered", msg.keys)
            return None
        await asyncio.sleep(0.001)
    try:
        msg.start()
    except OSError as err:
        log.debug("sk_msg splice refused (%s); using sk_skb", err)
        return None
    return msg


async def _run_msg(
    msg: MsgSplice, there: _Direction, back: _Direction, down_early: bytes, up_early: bytes
) -> None:
    loop = asyncio.get_running_loop()
    written = {s.fileno(): bytes_written(s) for s in (there.peer, back.peer)}
    # Bytes user space already holds go first, ahead of anything a workload sends directly.
    if down_early:
        await loop.sock_sendall(there.peer, down_early)
    if up_early:
        await loop.sock_sendall(back.peer, up_early)
    msg.forwarded(there.source, there.relayed)  # registers C's pair: it may now switch
    msg.forwarded(back.source, back.relayed)
    await _both(_relay_msg(msg, there, written), _relay_msg(msg, back, written))


async def _relay_msg(msg: MsgSplice, direction: _Direction, written: dict[int, int]) -> None:
    """Forward what the workload sent by TCP, telling the kernel after each write; at end of
    stream every byte is queued on the peer already (direct sends are synchronous)."""
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(direction.source, READ_SIZE):
        await loop.sock_sendall(direction.peer, data)
        direction.relayed += len(data)
        msg.forwarded(direction.source, direction.relayed)
    # What the peer socket took beyond the agent's own writes came from the workload directly.
    # Counted here, exactly, before the FIN: the program's own count is for metrics and may
    # count a send twice when a non-blocking sender retries it (see weft_splice_msg).
    taken = bytes_written(direction.peer) - written[direction.peer.fileno()]
    direction.in_kernel = taken - direction.relayed
    direction.peer.shutdown(socket.SHUT_WR)


async def _run_skb(  # noqa: PLR0917 (one call site, names at hand)
    maps: NodeMaps,
    there: _Direction,
    back: _Direction,
    down_early: bytes,
    up_early: bytes,
    cgroup_id: int,
) -> None:
    loop = asyncio.get_running_loop()
    splice = Splice(maps, there.source, back.source, cgroup_id)
    try:
        # Bytes user space already holds go first, so that the kernel's come after them.
        if down_early:
            await loop.sock_sendall(there.peer, down_early)
        if up_early:
            await loop.sock_sendall(back.peer, up_early)
        try:
            splice.start()
        except OSError as err:
            # The sockhash takes only established sockets: a client that already half-closed
            # (CLOSE_WAIT) is relayed in user space below, as every byte would then be.
            log.debug("splice refused (%s); relaying in user space", err)
        await _both(_relay_skb(splice, there), _relay_skb(splice, back))
    finally:
        for direction in (there, back):
            with contextlib.suppress(OSError):
                direction.in_kernel = maps.spliced_from(socket_cookie(direction.source)) or 0
        with contextlib.suppress(OSError):  # maps closed at agent shutdown
            splice.stop()


async def _relay_skb(splice: Splice, direction: _Direction) -> None:
    """Relay what still reaches user space until the source ends, then pass its FIN on once
    the kernel has written everything it redirected."""
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(direction.source, READ_SIZE):
        await loop.sock_sendall(direction.peer, data)
        direction.relayed += len(data)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not splice.drained(direction.source):
        if time.monotonic() > deadline:
            raise TimeoutError("spliced bytes did not drain")
        await asyncio.sleep(0.001)
    direction.peer.shutdown(socket.SHUT_WR)


async def _both(*relays: object) -> None:
    """Run both directions; the first error cancels the other and is raised (a reset)."""
    tasks = [asyncio.ensure_future(relay) for relay in relays]  # type: ignore[call-overload]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
