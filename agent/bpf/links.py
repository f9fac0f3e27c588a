"""What is attached: the pinned bpf_links of a scope and the programs a cgroup actually runs.

Read-only and bcc-free, so health checks and `weft agent maps` can use it cheaply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.bpf import libbpf


@dataclass(frozen=True)
class PinnedLink:
    """One pinned link: the program behind it and what it is attached to (0: target gone)."""

    function: str
    pin: Path
    link_id: int
    prog_id: int
    attach_type: int
    target_id: int  # cgroup id for cgroup hooks, map id for sk_skb/sk_msg


BPF_LINK_TYPE_CGROUP = 3  # enum bpf_link_type
BPF_LINK_TYPE_SOCKMAP = 14


def pinned_links(links_dir: Path) -> list[PinnedLink]:
    """Every link pinned in `links_dir`, sorted by program name."""
    if not links_dir.is_dir():
        return []
    found = []
    for pin in sorted(links_dir.iterdir()):
        fd = libbpf.obj_get(str(pin))
        try:
            info = libbpf.link_info(fd)
        finally:
            os.close(fd)
        if info.type == BPF_LINK_TYPE_SOCKMAP:
            attach_type = int(info.target.sockmap.attach_type)
            target_id = int(info.target.sockmap.map_id)
        else:
            attach_type = int(info.target.cgroup.attach_type)
            target_id = int(info.target.cgroup.cgroup_id)
        found.append(
            PinnedLink(pin.name, pin, int(info.id), int(info.prog_id), attach_type, target_id)
        )
    return found


def cgroup_id(cgroup: Path) -> int:
    """A cgroup v2 id is the inode number of its directory."""
    return os.stat(cgroup).st_ino


def cgroup_programs(cgroup: Path, attach_type: libbpf.AttachType, *, effective: bool) -> list[int]:
    """Ids of the programs `cgroup` runs at one hook; `effective` includes inherited ones."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return libbpf.prog_query(fd, attach_type, effective=effective)
    finally:
        os.close(fd)


SPLICE_MSG_FUNCTION = "weft_splice_msg"  # agent.bpf.programs.SPLICE_MSG (this module is bcc-free)
SPLICE_VERDICT_FUNCTION = "weft_splice_verdict"


def splice_mode(links_dir: Path) -> str:
    """How this scope splices same-node connections: "sk_msg" (a workload's sends go straight
    into the peer workload's socket), "sk_skb" (the agent's sockets forward segments in the
    kernel; kernels that cannot attach sk_msg by link), or "none" (nothing attached)."""
    if (links_dir / SPLICE_MSG_FUNCTION).exists():
        return "sk_msg"
    if (links_dir / SPLICE_VERDICT_FUNCTION).exists():
        return "sk_skb"
    return "none"
