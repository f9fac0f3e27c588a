"""Is every enrolled workload actually captured? Ask the kernel, not the agent's own records.

Fail closed is only half of the promise; the other half is knowing. For each workload this
checks its enrollment entry and that every capture program is effective on its cgroup (attached
there or inherited), which catches a detached link, a workload moved outside the attach point,
or an enrollment entry that was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.bpf import libbpf
from agent.bpf.links import cgroup_id, cgroup_programs, pinned_links
from agent.bpf.maps import Mode, NodeMaps
from agent.bpf.programs import CAPTURE, CAPTURE_V4_MAPPED


@dataclass(frozen=True)
class WorkloadCapture:
    """The capture state of one workload, as the kernel reports it."""

    workload: str
    cgroup: Path
    mode: Mode | None  # None: the workload has no enrollment entry
    missing: tuple[str, ...]  # capture programs that do not run for this workload's sockets

    @property
    def captured(self) -> bool:
        return self.mode is Mode.AMBIENT and not self.missing

    def problem(self, expected: Mode) -> str | None:
        """What is wrong if the workload should be in mode `expected`; None if nothing."""
        if self.mode is not expected:
            found = "no enrollment entry" if self.mode is None else f"mode {self.mode.name}"
            return f"{self.workload}: expected mode {expected.name}, found {found}"
        if expected is Mode.AMBIENT and self.missing:
            return (
                f"{self.workload}: enrolled but NOT captured: {', '.join(self.missing)} "
                f"not effective on {self.cgroup} (links detached, or the workload's cgroup is "
                "outside the attached workloads cgroup)"
            )
        return None


def verify_capture(
    links_dir: Path, maps: NodeMaps, workloads: Mapping[str, Path]
) -> list[WorkloadCapture]:
    """The capture state of each workload (name -> cgroup directory), in the given order."""
    links = {link.function: link for link in pinned_links(links_dir)}
    states = []
    for name, cgroup in workloads.items():
        enrollment = maps.enrollment(cgroup_id(cgroup))
        missing = []
        # A workload is captured only if IPv6 sockets dialing v4-mapped addresses are too.
        for spec in (*CAPTURE, *CAPTURE_V4_MAPPED):
            link = links.get(spec.function)
            effective = cgroup_programs(cgroup, libbpf.AttachType(spec.attach_type), effective=True)
            if link is None or link.prog_id not in effective:
                missing.append(spec.function)
        states.append(
            WorkloadCapture(
                name, cgroup, None if enrollment is None else enrollment.mode, tuple(missing)
            )
        )
    return states
