"""The lab's cgroup v2 subtree: weft/<node>/ for node processes, weft/<node>/workloads/<workload>/.

Node agents live in the node cgroup, outside `workloads/`, so eBPF attached at
`weft/<node>/workloads` captures every workload of the node and never the agent itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from weft.errors import UnavailableError


def cgroup2_root() -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup (pure v2)."""
    for candidate in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (candidate / "cgroup.procs").exists() and (
            candidate / "cgroup.subtree_control"
        ).exists():
            return candidate
    raise UnavailableError(
        "no cgroup v2 hierarchy is mounted",
        hint="mount one: mkdir -p /sys/fs/cgroup/unified && "
        "mount -t cgroup2 none /sys/fs/cgroup/unified",
    )


def lab_root() -> Path:
    return cgroup2_root() / "weft"


def node_cgroup(node: str) -> Path:
    return lab_root() / node


def workloads_cgroup(node: str) -> Path:
    return node_cgroup(node) / "workloads"


def workload_cgroup(node: str, workload: str) -> Path:
    return workloads_cgroup(node) / workload


def create(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def member_pids(root: Path) -> list[int]:
    """Every process in `root` and its descendants."""
    pids: list[int] = []
    for directory, _, _ in os.walk(root):
        try:
            text = (Path(directory) / "cgroup.procs").read_text(encoding="ascii")
        except OSError:
            continue
        pids += [int(line) for line in text.split()]
    return pids


def populated(cgroup: Path) -> bool:
    """True while any live or still-exiting process is in `cgroup` or below.

    cgroup.procs already hides a task that is exiting, but rmdir fails with EBUSY until it is
    gone; cgroup.events says when it is.
    """
    try:
        events = (cgroup / "cgroup.events").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return "populated 1" in events


def kill_and_remove(root: Path, timeout: float = 5.0) -> list[str]:
    """SIGKILL every process under `root` (they are the lab's), then remove the cgroups.

    Returns the cgroups removed. Uses cgroup.kill (Linux 5.14+), or signals each member.
    """
    if not root.exists():
        return []
    kill_file = root / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1", encoding="ascii")
    deadline = time.monotonic() + timeout
    while populated(root) and time.monotonic() < deadline:
        if not kill_file.exists():
            for pid in member_pids(root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    removed: list[str] = []
    for directory in sorted((d for d, _, _ in os.walk(root)), key=len, reverse=True):
        while True:
            try:
                os.rmdir(directory)
                removed.append(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise UnavailableError(
                        f"cannot remove cgroup {directory}: {exc.strerror}",
                        hint=f"see which processes are left in it: cat {directory}/cgroup.procs",
                    ) from exc
                time.sleep(0.01)
    return removed
