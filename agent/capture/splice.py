"""Same-node splice: hand an authorized pair of agent sockets to the kernel (sockhash + sk_skb).

The agent accepts the workload's captured connection, authorizes it, connects to the local
destination, and then, instead of copying bytes in Python, registers the two sockets so that
weft_splice.c moves each segment to the other socket's send side. End of stream (FIN) is not
data, so the agent still watches for it and closes the peer's write side itself.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from agent.bpf.maps import NodeMaps

SO_COOKIE = 57  # <asm-generic/socket.h>; Python's socket module does not name it


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's 64-bit id of a socket: the key of the splice maps."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    return value


@dataclass
class Splice:
    """Two connected sockets whose bytes the kernel moves; stop() hands them back.

    Register the pair before the first byte arrives on either socket: bytes already queued in
    a socket when it enters the sockhash are not redirected until more data follows them.
    """

    maps: NodeMaps
    downstream: socket.socket  # the workload's captured connection, accepted by the agent
    upstream: socket.socket  # the agent's connection to the destination workload
    cgroup_id: int  # the source workload, whose counters the spliced bytes go to
    _cookies: tuple[int, int] | None = None

    def start(self) -> None:
        a = (socket_cookie(self.downstream), self.downstream.fileno())
        b = (socket_cookie(self.upstream), self.upstream.fileno())
        self.maps.splice(a, b, self.cgroup_id)
        self._cookies = (a[0], b[0])

    def stop(self) -> None:
        if self._cookies is not None:
            self.maps.unsplice(*self._cookies)
            self._cookies = None
