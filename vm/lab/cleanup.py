"""Removes everything a lab leaves behind, with or without a state file (after a crash or kill -9).

Idempotent; finds leftovers by name: netns `weft-*`, links `weft*` in the root netns, the
cgroup subtree `weft/`, bpffs pins under /sys/fs/bpf/weft and nft tables named `weft`.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from vm.lab import cgroups, processes
from vm.lab.iproute import NETNS_DIR, run
from vm.lab.state import StateStore
from vm.lab.topology import NETNS_PREFIX

BPF_PINS = Path("/sys/fs/bpf/weft")
LINK_PREFIX = "weft"
NFT_TABLE = "weft"


@dataclass
class CleanupReport:
    processes: list[int] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    pins: bool = False
    nft_tables: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.processes
            or self.cgroups
            or self.namespaces
            or self.links
            or self.pins
            or self.nft_tables
        )

    def summary(self) -> str:
        if self.empty:
            return "nothing to clean"
        parts = [
            f"{len(self.processes)} processes" if self.processes else "",
            f"{len(self.namespaces)} network namespaces" if self.namespaces else "",
            f"{len(self.cgroups)} cgroups" if self.cgroups else "",
            f"links {', '.join(self.links)}" if self.links else "",
            "bpffs pins" if self.pins else "",
            f"nft tables {', '.join(self.nft_tables)}" if self.nft_tables else "",
        ]
        return "removed " + ", ".join(p for p in parts if p)


def find_leftovers() -> dict[str, object]:
    """What a lab left behind, by kind; empty when nothing is left (used by tests and status)."""
    found: dict[str, object] = {
        "netns": lab_namespaces(),
        "cgroups": cgroups.lab_root().exists(),
        "pins": BPF_PINS.exists(),
        "root links": root_links(),
        "nft tables": root_nft_tables(),
    }
    return {kind: value for kind, value in found.items() if value}


def lab_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX))
    except FileNotFoundError:
        return []


def sweep(store: StateStore) -> CleanupReport:
    """Stop the lab's processes, then remove its cgroups, namespaces, links, pins and tables."""
    report = CleanupReport()
    state = store.load()
    if state is not None:
        report.processes += [p.pid for p in processes.stop(state.processes)]
    root = cgroups.lab_root()
    report.processes += [p for p in cgroups.member_pids(root) if p not in report.processes]
    report.cgroups = cgroups.kill_and_remove(root)
    namespaces = lab_namespaces()
    report.processes += kill_netns_members(namespaces)
    if namespaces:
        run(
            ["ip", "-force", "-batch", "-"],
            "".join(f"netns del {n}\n" for n in namespaces),
            check=False,
        )
        report.namespaces = namespaces
    report.links = delete_root_links()
    if BPF_PINS.exists():
        shutil.rmtree(BPF_PINS, ignore_errors=True)
        report.pins = True
    report.nft_tables = delete_root_nft_tables()
    store.remove()
    return report


def kill_netns_members(namespaces: list[str]) -> list[int]:
    """SIGKILL processes whose network namespace is one of ours (`ip netns pids`, without forks)."""
    inodes = set()
    for name in namespaces:
        try:
            st = os.stat(f"{NETNS_DIR}/{name}")
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    if not inodes:
        return []
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


def root_links() -> list[str]:
    names = []
    for line in run(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(LINK_PREFIX):
                names.append(name)
    return names


def delete_root_links() -> list[str]:
    names = root_links()
    if names:
        run(["ip", "-force", "-batch", "-"], "".join(f"link del {n}\n" for n in names), check=False)
    return names


def root_nft_tables() -> list[str]:
    """Tables named `weft` in the root netns, as "<family> weft"."""
    tables = []
    for line in run(["nft", "list", "tables"], check=False).splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2] == NFT_TABLE:
            tables.append(f"{words[1]} {words[2]}")
    return tables


def delete_root_nft_tables() -> list[str]:
    tables = root_nft_tables()
    for table in tables:
        run(["nft", "delete", "table", *table.split()], check=False)
    return tables
