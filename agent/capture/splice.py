"""Same-node splice: hand an authorized pair of agent sockets to the kernel, in one of two ways.

The agent accepts the workload's captured connection, authorizes it, connects to the local
destination, and then, instead of copying bytes in Python, registers the sockets with the kernel.

MsgSplice (sk_msg, where weft_splice_msg is attached): the workloads' own sends go straight onto
the agent's socket facing the other workload, skipping their own TCP connection and the agent
(weft_maps.h). The agent forwards only what a workload sent by TCP before the switch, and tells
the kernel how much it has forwarded.

Splice (sk_skb, the fallback): weft_splice_verdict moves each segment arriving on one agent
socket to the other socket's send side. End of stream (FIN) is not data: the agent still sees it
and must pass it on itself. The kernel sends redirected bytes from a work queue, so a FIN can
overtake them; before half-closing the peer, the agent waits until the peer has written
everything redirected to it (`drained`). With MsgSplice no wait is needed: a redirected send is
in the agent socket's send queue, ahead of the FIN, when sendmsg() returns.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.bpf.links import splice_mode
from agent.bpf.maps import NodeMaps, SocketTuple

SO_COOKIE = 57  # <asm-generic/socket.h>; Python's socket module does not name it
SIOCOUTQ = 0x5411  # bytes in the send queue, not yet acknowledged (== TIOCOUTQ)
TCPI_BYTES_ACKED_OFFSET = 120  # struct tcp_info: __u64 tcpi_bytes_acked
TCP_INFO_LEN = 128
TCP_ESTABLISHED = 1  # enum tcp_state
DRAIN_POLL_S = 0.001


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's 64-bit id of a socket: the key of the splice maps."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    return value


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (tcpi_state, the first byte of struct tcp_info)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)[0]


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
        """Raises OSError if the kernel refuses: the sockhash takes only established sockets."""
        for sock in (self.downstream, self.upstream):
            if tcp_state(sock) != TCP_ESTABLISHED:
                # Checked first: a failed insert would leave the other socket half set up.
                raise OSError(f"socket {sock.fileno()} is no longer established")
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
        cookie = self._cookies.get(source.fileno())
        redirected = None if cookie is None else self.maps.spliced_from(cookie)
        if redirected is None:  # not spliced (start() refused): nothing to wait for
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
    A (accepted from C) and B (connected to S), the server workload's socket S. Once switched,
    C's sends go onto B and S's onto A, in the kernel."""

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
        """Enter A and B, the sockets the workloads' direct sends will go onto. Raises OSError
        if the kernel refuses (a socket that is no longer established); nothing is registered
        then: C and S keep sending by TCP, through the agent."""
        self.maps.msg_add_agent_socket(self.downstream)
        self.maps.msg_add_agent_socket(self.upstream)

    def _workload_of(self, source: socket.socket) -> tuple[SocketTuple, SocketTuple]:
        """(the workload socket whose bytes come up on `source`, the agent socket they go on
        from: B for what comes up on A, A for what comes up on B)."""
        if source is self.downstream:
            return self.keys["C"], self.keys["B"]
        return self.keys["S"], self.keys["A"]

    def forwarded(self, source: socket.socket, total: int) -> None:
        """The agent has written on `total` bytes that came up on `source` (A or B). The first
        call registers the workload's pair: once it has sent nothing more by TCP than that,
        its sends go directly."""
        workload, onto = self._workload_of(source)
        self.maps.msg_forwarded(workload, onto, self.cgroup_id, total)

    def direct(self, source: socket.socket) -> int:
        """Bytes the workload behind `source` sent directly, so far."""
        state = self.maps.msg_state(self._workload_of(source)[0])
        return 0 if state is None else state.direct

    def stop(self) -> None:
        self.maps.msg_unregister(self.keys["C"], self.keys["S"])


def splice_report(links_dir: Path, maps: NodeMaps) -> dict[str, Any]:
    """The splice mode of a scope and its live sk_msg pairs, as plain data (`weft agent maps`)."""
    pairs = [
        {
            "socket": str(p.socket),
            "sends_to": str(p.peer),
            "cgroup_id": p.cgroup_id,
            "mode": "direct" if p.state.switched else "through the agent",
            "passed_tcp_bytes": p.state.passed,
            "forwarded_bytes": p.forwarded,
            "direct_bytes": p.state.direct,
        }
        for p in maps.msg_pairs()
    ]
    return {"mode": splice_mode(links_dir), "pairs": pairs}
