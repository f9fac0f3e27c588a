"""The pinned eBPF maps as typed Python: ctypes mirrors of weft_maps.h and one wrapper per map.

This is the one place where map entries become model values and back. Each mirror quotes the C
struct it copies; tests/kernel/test_map_layouts.py checks every mirror's size and field offsets
against the layout bcc compiled, so the C and the Python cannot drift apart silently.
Map access needs only libbpf (through agent.bpf.libbpf), not bcc: reading maps is cheap.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType

from agent.bpf import libbpf
from weft.errors import UnavailableError


class EnrollmentC(ctypes.Structure):
    """struct weft_enrollment { __u16 mode; __u16 inbound; __be32 agent_addr; };"""

    _fields_ = (
        ("mode", ctypes.c_uint16),
        ("inbound", ctypes.c_uint16),
        ("agent_addr", ctypes.c_uint32),  # network order
    )


class OrigC(ctypes.Structure):
    """struct weft_orig { __be32 addr; __be16 port; __u16 reserved; __u64 cgroup_id; };"""

    _fields_ = (
        ("addr", ctypes.c_uint32),  # network order
        ("port", ctypes.c_uint16),  # network order
        ("reserved", ctypes.c_uint16),
        ("cgroup_id", ctypes.c_uint64),
    )


class TupleC(ctypes.Structure):
    """struct weft_tuple { __be32 src_addr; __be32 dst_addr; __be16 src_port; __be16 dst_port; };"""

    _fields_ = (
        ("src_addr", ctypes.c_uint32),
        ("dst_addr", ctypes.c_uint32),
        ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
    )


class WorkloadStatsC(ctypes.Structure):
    """struct weft_wl_stats { __u64 captured, passed, inbound_dropped, spliced_bytes; };"""

    _fields_ = (
        ("captured", ctypes.c_uint64),
        ("passed", ctypes.c_uint64),
        ("inbound_dropped", ctypes.c_uint64),
        ("spliced_bytes", ctypes.c_uint64),
    )


class SplicePeerC(ctypes.Structure):
    """struct weft_splice_peer { __u64 peer_cookie; __u64 cgroup_id; __u64 redirected; };"""

    _fields_ = (
        ("peer_cookie", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("redirected", ctypes.c_uint64),
    )


class MsgPairC(ctypes.Structure):
    """struct weft_msg_pair { struct weft_tuple peer; __u32 reserved; __u64 cgroup_id;
    __u64 forwarded; };"""

    _fields_ = (
        ("peer", TupleC),
        ("reserved", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("forwarded", ctypes.c_uint64),
    )


class MsgStateC(ctypes.Structure):
    """struct weft_msg_state { __u64 passed; __u64 direct; __u32 switched; __u32 reserved; };"""

    _fields_ = (
        ("passed", ctypes.c_uint64),
        ("direct", ctypes.c_uint64),
        ("switched", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    )


# map name -> (key mirror, value mirror), exactly as declared in weft_maps.h

MAP_LAYOUTS: dict[str, tuple[type[ctypes._CData], type[ctypes._CData]]] = {
    "weft_enroll": (ctypes.c_uint64, EnrollmentC),
    "weft_skip_port": (ctypes.c_uint16, ctypes.c_uint8),
    "weft_wl_stats": (ctypes.c_uint64, WorkloadStatsC),
    "weft_orig_ck": (ctypes.c_uint64, OrigC),
    "weft_orig_tp": (TupleC, OrigC),
    "weft_splice": (ctypes.c_uint64, ctypes.c_uint32),  # sockhash: cookie -> socket (an fd in)
    "weft_splice_pr": (ctypes.c_uint64, SplicePeerC),
    # sockhash: 4-tuple -> socket (an fd in, its cookie out)
    "weft_msg_sk": (TupleC, ctypes.c_uint64),
    "weft_msg_pr": (TupleC, MsgPairC),
    "weft_msg_st": (TupleC, MsgStateC),
    "weft_msg_agent": (ctypes.c_uint32, ctypes.c_uint8),  # network-order address -> 1
}


class Mode(IntEnum):
    """WEFT_MODE_*: whether a workload's outbound TCP is captured."""

    NONE = 0
    AMBIENT = 1


class Inbound(IntEnum):
    """WEFT_INBOUND_*: the workload's PeerAuthentication mode."""

    PERMISSIVE = 0
    STRICT = 1


@dataclass(frozen=True)
class Enrollment:
    """A workload's entry: captured or not, inbound mode, and where it reaches its node agent."""

    mode: Mode
    inbound: Inbound
    agent_addr: IPv4Address


@dataclass(frozen=True)
class OriginalDestination:
    """Where a captured connection was going, and the workload (cgroup id) that opened it."""

    addr: IPv4Address
    port: int
    cgroup_id: int


@dataclass(frozen=True)
class WorkloadStats:
    captured: int
    passed: int
    inbound_dropped: int
    spliced_bytes: int


@dataclass(frozen=True)
class SocketTuple:
    """A TCP socket's own view of its connection: (local address, port), (remote address, port).
    The key of the sk_msg splice maps; the other end of the connection is `reversed()`."""

    local: tuple[str, int]
    remote: tuple[str, int]

    @classmethod
    def of(cls, sock: socket.socket) -> SocketTuple:
        local, remote = sock.getsockname(), sock.getpeername()
        return cls((str(local[0]), int(local[1])), (str(remote[0]), int(remote[1])))

    def reversed(self) -> SocketTuple:
        return SocketTuple(self.remote, self.local)

    def to_c(self) -> TupleC:
        return TupleC(
            src_addr=_addr_to_be32(IPv4Address(self.local[0])),
            dst_addr=_addr_to_be32(IPv4Address(self.remote[0])),
            src_port=socket.htons(self.local[1]),
            dst_port=socket.htons(self.remote[1]),
        )

    def __str__(self) -> str:
        return f"{self.local[0]}:{self.local[1]}->{self.remote[0]}:{self.remote[1]}"


@dataclass(frozen=True)
class MsgState:
    """The sk_msg program's counters of one workload socket."""

    passed: int  # bytes sent by TCP through the agent, before the switch
    direct: int  # bytes sent straight into the peer workload's socket
    switched: bool


@dataclass(frozen=True)
class MsgPair:
    """A registered workload socket of the sk_msg splice: where it sends, and how far it got."""

    socket: SocketTuple
    peer: SocketTuple  # the agent socket its direct sends go onto
    cgroup_id: int
    forwarded: int  # of its TCP bytes, how many the agent has written on
    state: MsgState


def _tuple_from_c(value: TupleC) -> SocketTuple:
    return SocketTuple(
        (str(_be32_to_addr(value.src_addr)), socket.ntohs(value.src_port)),
        (str(_be32_to_addr(value.dst_addr)), socket.ntohs(value.dst_port)),
    )


def _addr_to_be32(addr: IPv4Address) -> int:
    return socket.htonl(int(addr))


def _be32_to_addr(value: int) -> IPv4Address:
    return IPv4Address(socket.ntohl(value))


def _orig_from_c(orig: OrigC) -> OriginalDestination:
    return OriginalDestination(
        _be32_to_addr(orig.addr), socket.ntohs(orig.port), int(orig.cgroup_id)
    )


class PinnedMap:
    """An open pinned map whose key and value sizes were checked against their mirrors."""

    def __init__(self, maps_dir: Path, name: str) -> None:
        self.name = name
        self.path = maps_dir / name
        self.key_type, self.value_type = MAP_LAYOUTS[name]
        try:
            self.fd = libbpf.obj_get(str(self.path))
        except FileNotFoundError as exc:
            raise UnavailableError(
                f"pinned map {self.path} does not exist",
                hint="the eBPF programs are not loaded for this scope: start the agent, or run "
                "'weft agent attach' (both load and pin them); or check the scope name",
            ) from exc
        info = libbpf.map_info(self.fd)
        expected = (ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type))
        if (info.key_size, info.value_size) != expected:
            os.close(self.fd)
            raise UnavailableError(
                f"pinned map {self.path} has key/value sizes {info.key_size}/{info.value_size}, "
                f"this agent expects {expected[0]}/{expected[1]}",
                hint="it was pinned by another Weft version: remove the scope's pins "
                f"(rm -r {self.path.parent.parent}) and restart the agent",
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def get(self, key: ctypes._CData) -> ctypes._CData | None:
        value = self.value_type()
        return value if libbpf.map_lookup(self.fd, key, value) else None

    def put(self, key: ctypes._CData, value: ctypes._CData, flags: int = libbpf.BPF_ANY) -> None:
        libbpf.map_update(self.fd, key, value, flags)

    def delete(self, key: ctypes._CData) -> bool:
        return libbpf.map_delete(self.fd, key)

    def __iter__(self) -> Iterator[ctypes._CData]:
        """The keys, in the kernel's order."""
        key: ctypes._CData | None = None
        while True:
            next_key = self.key_type()
            if not libbpf.map_next_key(self.fd, key, next_key):
                return
            yield next_key
            key = next_key


class NodeMaps:
    """Every map of one scope: enrollment, excluded ports, counters, original destinations, splice.

    Use as a context manager, or call close(); every map is opened from its pin.
    """

    def __init__(self, maps_dir: Path) -> None:
        # The sk_msg splice is used only where its program is attached (see links.splice_mode).
        self.msg_splice = (maps_dir.parent / "links" / "weft_splice_msg").exists()
        self._maps: dict[str, PinnedMap] = {}
        try:
            for name in MAP_LAYOUTS:
                self._maps[name] = PinnedMap(maps_dir, name)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for pinned in self._maps.values():
            pinned.close()

    def enroll(self, cgroup_id: int, enrollment: Enrollment) -> None:
        """Write a workload's entry, and create its counters if it has none yet."""
        value = EnrollmentC(
            mode=enrollment.mode,
            inbound=enrollment.inbound,
            agent_addr=_addr_to_be32(enrollment.agent_addr),
        )
        if self.stats(cgroup_id) is None:
            self._maps["weft_wl_stats"].put(ctypes.c_uint64(cgroup_id), WorkloadStatsC())
        if self.msg_splice and enrollment.mode is Mode.AMBIENT:
            # Workload sockets connected to this agent enter the sk_msg splice's sockhash.
            self._maps["weft_msg_agent"].put(
                ctypes.c_uint32(_addr_to_be32(enrollment.agent_addr)), ctypes.c_uint8(1)
            )
        self._maps["weft_enroll"].put(ctypes.c_uint64(cgroup_id), value)

    def unenroll(self, cgroup_id: int) -> bool:
        """Forget a workload (its counters go too); False if it was not enrolled."""
        self._maps["weft_wl_stats"].delete(ctypes.c_uint64(cgroup_id))
        return self._maps["weft_enroll"].delete(ctypes.c_uint64(cgroup_id))

    def enrollment(self, cgroup_id: int) -> Enrollment | None:
        value = self._maps["weft_enroll"].get(ctypes.c_uint64(cgroup_id))
        if not isinstance(value, EnrollmentC):
            return None
        return Enrollment(Mode(value.mode), Inbound(value.inbound), _be32_to_addr(value.agent_addr))

    def enrollments(self) -> dict[int, Enrollment]:
        result = {}
        for key in self._maps["weft_enroll"]:
            assert isinstance(key, ctypes.c_uint64)
            found = self.enrollment(key.value)
            if found is not None:
                result[key.value] = found
        return result

    def skip_port(self, port: int) -> None:
        """Never capture connects to this destination port."""
        self._maps["weft_skip_port"].put(ctypes.c_uint16(port), ctypes.c_uint8(1))

    def unskip_port(self, port: int) -> bool:
        return self._maps["weft_skip_port"].delete(ctypes.c_uint16(port))

    def stats(self, cgroup_id: int) -> WorkloadStats | None:
        value = self._maps["weft_wl_stats"].get(ctypes.c_uint64(cgroup_id))
        if not isinstance(value, WorkloadStatsC):
            return None
        return WorkloadStats(
            value.captured, value.passed, value.inbound_dropped, value.spliced_bytes
        )

    def original_destination_by_cookie(self, cookie: int) -> OriginalDestination | None:
        value = self._maps["weft_orig_ck"].get(ctypes.c_uint64(cookie))
        return _orig_from_c(value) if isinstance(value, OrigC) else None

    def original_destination(
        self, src: tuple[str, int], dst: tuple[str, int]
    ) -> OriginalDestination | None:
        """The original destination of the captured connection src -> dst, as the agent sees it
        on accept(): src is the peer (the workload), dst the agent's own listener address."""
        key = TupleC(
            src_addr=_addr_to_be32(IPv4Address(src[0])),
            dst_addr=_addr_to_be32(IPv4Address(dst[0])),
            src_port=socket.htons(src[1]),
            dst_port=socket.htons(dst[1]),
        )
        value = self._maps["weft_orig_tp"].get(key)
        return _orig_from_c(value) if isinstance(value, OrigC) else None

    def splice(self, a: tuple[int, int], b: tuple[int, int], cgroup_id: int) -> None:
        """Hand two connected sockets, each given as (cookie, fd), to the kernel: from now on
        bytes arriving on either leave through the other. Counted for workload `cgroup_id`.

        The peers are named before the sockets enter the sockhash, so the verdict program never
        sees a registered socket without its peer. `b` enters first: a segment arriving on `a`
        meanwhile finds its peer; one arriving on `b` before `a` is in goes up to the agent,
        which may then relay it after later ones the kernel moved. So `a` should be the side
        that speaks first (the client), whose early bytes the verdict then always redirects.
        """
        peers = self._maps["weft_splice_pr"]
        sockets = self._maps["weft_splice"]
        peers.put(ctypes.c_uint64(a[0]), SplicePeerC(peer_cookie=b[0], cgroup_id=cgroup_id))
        peers.put(ctypes.c_uint64(b[0]), SplicePeerC(peer_cookie=a[0], cgroup_id=cgroup_id))
        try:
            sockets.put(ctypes.c_uint64(b[0]), ctypes.c_uint32(b[1]))
            sockets.put(ctypes.c_uint64(a[0]), ctypes.c_uint32(a[1]))
        except OSError:
            # Only the peer entries go: a socket that entered the sockhash stays until it
            # closes, because leaving it drops the bytes the verdict passed up and the agent has
            # not read yet. Without a peer, the verdict passes everything up, in order.
            for cookie in (a[0], b[0]):
                peers.delete(ctypes.c_uint64(cookie))
            raise

    def spliced_from(self, cookie: int) -> int | None:
        """Bytes the kernel has sent on from this socket to its peer; None if not spliced."""
        value = self._maps["weft_splice_pr"].get(ctypes.c_uint64(cookie))
        return int(value.redirected) if isinstance(value, SplicePeerC) else None

    def unsplice(self, cookie_a: int, cookie_b: int) -> None:
        """Take a pair back from the kernel (a closed socket leaves the sockhash by itself)."""
        for cookie in (cookie_a, cookie_b):
            self._maps["weft_splice"].delete(ctypes.c_uint64(cookie))
            self._maps["weft_splice_pr"].delete(ctypes.c_uint64(cookie))

    # The sk_msg splice (weft_maps.h explains the four sockets and the switch).

    def msg_socket_present(self, key: SocketTuple) -> bool:
        """Is this socket in the sk_msg splice's sockhash (a workload end entered by sockops)?"""
        return self._maps["weft_msg_sk"].get(key.to_c()) is not None

    def msg_add_agent_socket(self, sock: socket.socket) -> SocketTuple:
        """Enter one of the agent's sockets, so a workload's sends can be put onto it. The
        agent's own writes on it stay ordinary TCP. Returns its key."""
        key = SocketTuple.of(sock)
        self._maps["weft_msg_sk"].put(key.to_c(), ctypes.c_uint64(sock.fileno()))
        return key

    def msg_forwarded(
        self, workload: SocketTuple, peer: SocketTuple, cgroup_id: int, forwarded: int
    ) -> None:
        """Register (or update) a workload socket's pair: the agent has written `forwarded` of
        the bytes the workload sent by TCP onto `peer` (the agent socket facing the other
        workload); once that is all of them, the workload's sends go onto `peer` directly."""
        value = MsgPairC(peer=peer.to_c(), cgroup_id=cgroup_id, forwarded=forwarded)
        self._maps["weft_msg_pr"].put(workload.to_c(), value)

    def msg_state(self, key: SocketTuple) -> MsgState | None:
        value = self._maps["weft_msg_st"].get(key.to_c())
        if not isinstance(value, MsgStateC):
            return None
        return MsgState(int(value.passed), int(value.direct), bool(value.switched))

    def msg_pairs(self) -> list[MsgPair]:
        """The workload sockets the agent has registered, with the sk_msg program's counters."""
        pairs = []
        for key in self._maps["weft_msg_pr"]:
            pair = self._maps["weft_msg_pr"].get(key)
            state = self._maps["weft_msg_st"].get(key)
            if not isinstance(pair, MsgPairC) or not isinstance(state, MsgStateC):
                continue  # an entry just removed
            assert isinstance(key, TupleC)
            pairs.append(
                MsgPair(
                    _tuple_from_c(key),
                    _tuple_from_c(pair.peer),
                    int(pair.cgroup_id),
                    int(pair.forwarded),
                    MsgState(int(state.passed), int(state.direct), bool(state.switched)),
                )
            )
        return pairs

    def msg_unregister(self, *keys: SocketTuple) -> None:
        """Forget the pairs and counters of these sockets. They stay in the sockhash until they
        close: taking a workload socket out would drop the bytes still queued for its reader."""
        for key in keys:
            c_key = key.to_c()
            self._maps["weft_msg_pr"].delete(c_key)
            self._maps["weft_msg_st"].delete(c_key)
