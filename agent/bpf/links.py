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
