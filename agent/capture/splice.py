"""Same-node splice: hand an authorized pair of agent sockets to the kernel, in one of two ways.

The agent accepts the workload's captured connection, authorizes it, connects to the local
destination, and then, instead of copying bytes in Python, registers the sockets with the kernel.

MsgSplice (sk_msg, where weft_splice_msg is attached): the workloads' own sends go straight into
each other's receive queue, skipping both TCP connections (weft_maps.h). The agent forwards only
what a workload sent by TCP before the switch, and tells the kernel how much it has forwarded.

Splice (sk_skb, the fallback): weft_splice_verdict moves each segment arriving on one agent
socket to the other socket's send side. End of stream (FIN) is not data: the agent still sees it
and must pass it on itself. The kernel sends redirected bytes from a work queue, so a FIN can
overtake them; before half-closing the peer, the agent waits until the peer has written
everything redirected to it (`drained`). With MsgSplice no wait is needed: a redirected send is
in the peer's queue when sendmsg() returns.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from agent.bpf.maps import NodeMaps, SocketTuple

SO_COOKIE = 57  # <asm-generic/socket.h>; Python's socket module does not name it
SIOCOUTQ = 0x5411  # bytes in the send queue, not yet acknowledged (== TIOCOUTQ)
TCPI_BYTES_ACKED_OFFSET = 120  # struct tcp_info: __u64 tcpi_bytes_acked
TCP_INFO_LEN = 128
DRAIN_POLL_S = 0.001


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's 64-bit id of a socket: the key of the splice maps."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    return value


def bytes_written(sock: socket.socket) -> int:
    """Bytes this TCP socket has taken for sending: acknowledged plus still queued.

    Only differences of two readings mean something: tcpi_bytes_acked counts an active
    socket's SYN (and later its FIN) as a byte.
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    (acked,) = struct.unpack_from("=Q", info, TCPI_BYTES_ACKED_OFFSET)
    (queued,) = struct.unpack("=i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))
    return int(acked) + int(queued)


@dataclass
class Splice:
    """Two connected sockets whose bytes the kernel moves; stop() hands them back.

    Bytes already queued when start() is called are redirected too, ahead of later ones.
    """

    maps: NodeMaps
    downstream: socket.socket  # the workload's captured connection, accepted by the agent
    upstream: socket.socket  # the agent's connection to the destination workload
    cgroup_id: int  # the source workload, whose counters the spliced bytes go to
    _cookies: dict[int, int] = field(default_factory=dict)  # fd -> cookie
    _written_before: dict[int, int] = field(default_factory=dict)  # fd -> bytes_written at start

    def start(self) -> None:
        for sock in (self.downstream, self.upstream):
            self._cookies[sock.fileno()] = socket_cookie(sock)
            self._written_before[sock.fileno()] = bytes_written(sock)
        a, b = self.downstream.fileno(), self.upstream.fileno()
        self.maps.splice((self._cookies[a], a), (self._cookies[b], b), self.cgroup_id)
        # Bytes that arrived before the sockets entered the sockhash wait in the receive queue
        # until the next segment wakes the verdict program, which could be never (a client that
        # sent its request and waits for the answer). Setting SO_RCVLOWAT makes TCP signal
        # "data ready" at once, so the kernel redirects the queued bytes first, in order.
        for sock in (self.downstream, self.upstream):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def _peer_of(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.downstream else self.downstream

    def drained(self, source: socket.socket) -> bool:
        """Has the peer of `source` written every byte the kernel redirected from `source`?"""
        redirected = self.maps.spliced_from(self._cookies[source.fileno()])
        if redirected is None:
            return True
        peer = self._peer_of(source)
        return bytes_written(peer) - self._written_before[peer.fileno()] >= redirected

    def forward_until_eof(self, source: socket.socket, timeout: float) -> int:
        """Wait for `source` to reach end of stream, relaying any byte that still comes up to
        user space (a segment that arrived before start(), or that the kernel passed up) to
        the peer. Returns how many bytes went through user space. Blocking, bounded.

        A socket in a sockhash may wake a reader and then report EAGAIN when the data it woke
        for was redirected; that is retried, not taken for an error.
        """
        deadline = time.monotonic() + timeout
        relayed = 0
        peer = self._peer_of(source)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end of stream on the spliced socket within {timeout} s")
            readable, _, _ = select.select([source], [], [], left)
            if not readable:
                continue
            try:
                data = source.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                return relayed
            peer.sendall(data)
            relayed += len(data)

    def pass_end_of_stream(self, source: socket.socket, timeout: float) -> None:
        """`source` reached EOF: once its bytes are out of the peer, half-close the peer.

        Blocking, bounded by `timeout`; an asyncio shell polls drained() instead.
        """
        deadline = time.monotonic() + timeout
        while not self.drained(source):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"spliced bytes did not drain to the peer within {timeout} s; "
                    "the peer is not reading or the connection stalled"
                )
            time.sleep(DRAIN_POLL_S)
        self._peer_of(source).shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        if self._cookies:
            self.maps.unsplice(*self._cookies.values())
            self._cookies.clear()


@dataclass
class MsgSplice:
    """The sk_msg splice of one relayed connection: the client workload's socket C, the agent's
    A (accepted from C) and B (connected to S), the server workload's socket S."""

    maps: NodeMaps
    downstream: socket.socket  # A
    upstream: socket.socket  # B
    cgroup_id: int  # the source workload, whose counters the direct bytes go to
    keys: dict[str, SocketTuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a, b = SocketTuple.of(self.downstream), SocketTuple.of(self.upstream)
        self.keys = {"A": a, "B": b, "C": a.reversed(), "S": b.reversed()}

    def workloads_present(self) -> bool:
        """Are both workload ends in the sockhash? (Entered by sockops when their connection
        was established: C before its connect() returned, S when it handled B's handshake.)"""
        return self.maps.msg_socket_present(self.keys["C"]) and self.maps.msg_socket_present(
            self.keys["S"]
        )

    def start(self) -> None:
        """Enter A and B: from now on what the agent writes on them lands in C's and S's
        receive queues. Raises OSError (and leaves nothing registered) if the kernel refuses,
        e.g. a socket that is no longer established."""
        try:
            self.maps.msg_add_agent_socket(self.downstream, self.keys["C"], self.cgroup_id)
            self.maps.msg_add_agent_socket(self.upstream, self.keys["S"], self.cgroup_id)
        except OSError:
            self.stop()
            raise

    def _workload_of(self, source: socket.socket) -> tuple[SocketTuple, SocketTuple]:
        """(the workload socket whose bytes come up on `source`, the one they go to)."""
        if source is self.downstream:
            return self.keys["C"], self.keys["S"]
        return self.keys["S"], self.keys["C"]

    def forwarded(self, source: socket.socket, total: int) -> None:
        """The agent has written on `total` bytes that came up on `source` (A or B). The first
        call registers the workload's pair: once it has sent nothing more by TCP than that,
        it sends directly."""
        workload, peer = self._workload_of(source)
        self.maps.msg_forwarded(workload, peer, self.cgroup_id, total)

    def direct(self, source: socket.socket) -> int:
        """Bytes the workload behind `source` sent straight to its peer, so far."""
        state = self.maps.msg_state(self._workload_of(source)[0])
        return 0 if state is None else state.direct

    def stop(self) -> None:
        self.maps.msg_unregister(*self.keys.values())
