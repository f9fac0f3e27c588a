"""CPU seconds and peak memory of the mesh's (or a peer proxy's) processes, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessUsage:
    """Summed over a set of process trees at one instant."""

    cpu_seconds: float  # user + system time since each process started
    peak_rss_bytes: int  # the sum of each process's high-water resident set (VmHWM)


def parse_stat_cpu_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15) of a /proc/<pid>/stat line, in clock ticks.

    The command name (field 2) may hold spaces and parentheses, so fields are counted from the
    last ')'.
    """
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields[0] is field 3 (state)


def parse_status_hwm_bytes(status: str) -> int:
    """VmHWM of a /proc/<pid>/status text, in bytes (0 for a kernel thread or a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """`pid` and all its descendants (from each thread's children list)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        if current in found or not (proc / str(current)).exists():
            continue
        found.append(current)
        for children in (proc / str(current) / "task").glob("*/children"):
            try:
                queue.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue  # the thread exited while we looked
    return found


def measure(pids: Iterable[int], proc: Path = Path("/proc")) -> ProcessUsage:
    """Usage of every process tree rooted at `pids`; processes that have exited count zero."""
    ticks = 0
    hwm = 0
    for root in pids:
        for pid in process_tree(root, proc):
            try:
                ticks += parse_stat_cpu_ticks((proc / str(pid) / "stat").read_text())
                hwm += parse_status_hwm_bytes((proc / str(pid) / "status").read_text())
            except (OSError, ValueError, IndexError):
                continue
    return ProcessUsage(cpu_seconds=ticks / CLOCK_TICKS, peak_rss_bytes=hwm)
