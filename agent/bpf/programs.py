"""The eBPF programs Weft loads: entry function, C file, program type, hook and attach target."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent.bpf.libbpf import AttachType, ProgType


class Target(Enum):
    """What a program is attached to."""

    WORKLOADS_CGROUP = "the enrolled workloads' cgroup"
    SPLICE_MAP = "weft_splice"  # the sockhash of spliced sockets (a pinned map's name)
    MSG_MAP = "weft_msg_sk"  # the sockhash of the sk_msg splice


@dataclass(frozen=True)
class ProgramSpec:
    """One entry function of ebpf/<source>, loaded as `prog_type` and attached at `attach_type`."""

    function: str
    source: str
    prog_type: ProgType
    attach_type: AttachType
    target: Target = Target.WORKLOADS_CGROUP
    # Optional: a kernel that cannot load or attach it (older kernels have no sockmap bpf_link)
    # leaves it out, and the rest is attached without it; Loader.skipped says why.
    optional: bool = False


CONNECT4 = ProgramSpec(
    "weft_connect4", "weft_connect.c", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT
)
GETPEERNAME4 = ProgramSpec(
    "weft_getpeername4",
    "weft_connect.c",
    ProgType.CGROUP_SOCK_ADDR,
    AttachType.CGROUP_INET4_GETPEERNAME,
)
# grpcio and other dual-stack clients dial IPv4 destinations as ::ffff:a.b.c.d from AF_INET6.
CONNECT6 = ProgramSpec(
    "weft_connect6", "weft_connect.c", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_CONNECT
)
GETPEERNAME6 = ProgramSpec(
    "weft_getpeername6",
    "weft_connect.c",
    ProgType.CGROUP_SOCK_ADDR,
    AttachType.CGROUP_INET6_GETPEERNAME,
)

SOCKOPS = ProgramSpec(
    "weft_sockops", "weft_sockops.c", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS
)
INBOUND = ProgramSpec(
    "weft_inbound", "weft_inbound.c", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_INGRESS
)
SPLICE_VERDICT = ProgramSpec(
    "weft_splice_verdict",
    "weft_splice.c",
    ProgType.SK_SKB,
    AttachType.SK_SKB_VERDICT,
    Target.SPLICE_MAP,
)

# The fast same-node splice; without it the agent uses SPLICE_VERDICT (links.splice_mode).
SPLICE_MSG = ProgramSpec(
    "weft_splice_msg",
    "weft_splice.c",
    ProgType.SK_MSG,
    AttachType.SK_MSG_VERDICT,
    Target.MSG_MAP,
    optional=True,
)

# Outbound capture: what a node agent attaches to its workloads' cgroup.
CAPTURE: tuple[ProgramSpec, ...] = (CONNECT4, GETPEERNAME4, SOCKOPS)
# Outbound capture of AF_INET6 sockets dialing v4-mapped addresses (needs SOCKOPS of CAPTURE).
CAPTURE_V4_MAPPED: tuple[ProgramSpec, ...] = (CONNECT6, GETPEERNAME6)
# Everything a node agent runs: capture, STRICT inbound, same-node splice (both kinds).
NODE: tuple[ProgramSpec, ...] = (
    *CAPTURE,
    *CAPTURE_V4_MAPPED,
    INBOUND,
    SPLICE_VERDICT,
    SPLICE_MSG,
)
