"""Enrollment reconciliation: make the kernel's enrollment map say what the agent's config says.

The plan is computed without touching the kernel (a pure diff of two mappings), then applied.
Workloads that disappeared are removed; entries for workloads in mode NONE are kept on purpose,
so an opted-out workload is recorded as opted out rather than forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.bpf.maps import Enrollment, NodeMaps


@dataclass(frozen=True)
class EnrollmentPlan:
    """Entries to write (new or changed) and cgroup ids to remove, both sorted by cgroup id."""

    upserts: tuple[tuple[int, Enrollment], ...]
    removals: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.removals


def plan_enrollment(
    current: Mapping[int, Enrollment], desired: Mapping[int, Enrollment]
) -> EnrollmentPlan:
    """What to change so that `current` (the map) becomes `desired` (cgroup id -> entry)."""
    upserts = tuple(
        (cg_id, entry) for cg_id, entry in sorted(desired.items()) if current.get(cg_id) != entry
    )
    removals = tuple(sorted(set(current) - set(desired)))
    return EnrollmentPlan(upserts, removals)


def reconcile_enrollment(maps: NodeMaps, desired: Mapping[int, Enrollment]) -> EnrollmentPlan:
    """Bring the enrollment map in line with `desired`; returns what was changed.

    New entries are written before stale ones are removed, so that a workload being re-keyed
    (its cgroup recreated) is never left without capture longer than necessary.
    """
    plan = plan_enrollment(maps.enrollments(), desired)
    for cg_id, entry in plan.upserts:
        maps.enroll(cg_id, entry)
    for cg_id in plan.removals:
        maps.unenroll(cg_id)
    return plan
