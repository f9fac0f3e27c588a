"""Capture verification: the agent learns from the kernel whether each workload is captured."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

from kernel_sandbox import AGENT_ADDR, Node

from agent.bpf import libbpf
from agent.bpf.links import cgroup_id, pinned_links
from agent.bpf.loader import Loader
from agent.bpf.maps import Enrollment, Inbound, Mode, NodeMaps
from agent.bpf.programs import NODE, Target
from agent.capture.enrollment import reconcile_enrollment
from agent.capture.verify import verify_capture

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))


def test_pinned_links_report_every_program_and_its_target(node: Node) -> None:
    links = {link.function: link for link in pinned_links(node.loader.links_dir)}
    assert sorted(links) == sorted(spec.function for spec in NODE)
    map_ids = {}
    for target in (Target.SPLICE_MAP, Target.MSG_MAP):
        fd = libbpf.obj_get(str(node.loader.maps_dir / target.value))
        try:
            map_ids[target] = libbpf.map_info(fd).id
        finally:
            os.close(fd)
    for spec in NODE:
        link = links[spec.function]
        assert link.attach_type == spec.attach_type
        expected = (
            cgroup_id(node.cgroups.workloads)
            if spec.target is Target.WORKLOADS_CGROUP
            else map_ids[spec.target]
        )
        assert link.target_id == expected


def test_enrolled_workload_under_the_attach_point_is_captured(node: Node) -> None:
    cgroup = node.workload("verified", AMBIENT)
    [state] = verify_capture(node.loader.links_dir, node.maps, {"verified": cgroup})
    assert state.captured
    assert state.problem(Mode.AMBIENT) is None


def test_enrolled_workload_outside_the_attach_point_is_reported_not_captured(node: Node) -> None:
    outside = node.cgroups.make("outside-workloads")
    node.maps.enroll(cgroup_id(outside), AMBIENT)
    [state] = verify_capture(node.loader.links_dir, node.maps, {"stray": outside})
    assert not state.captured
    assert state.missing == (
        "weft_connect4",
        "weft_getpeername4",
        "weft_sockops",
        "weft_connect6",
        "weft_getpeername6",
    )
    problem = state.problem(Mode.AMBIENT)
    assert problem is not None
    assert "NOT captured" in problem
    assert str(outside) in problem


def test_workload_without_enrollment_entry_is_reported(node: Node) -> None:
    cgroup = node.workload("forgotten", None)
    [state] = verify_capture(node.loader.links_dir, node.maps, {"forgotten": cgroup})
    assert state.mode is None
    assert (
        state.problem(Mode.AMBIENT) == "forgotten: expected mode AMBIENT, found no enrollment entry"
    )
    assert state.problem(Mode.NONE) is not None


def test_reconcile_makes_the_enrollment_map_match_the_desired_state(pin_root: Path) -> None:
    loader = Loader("recon", pin_root=pin_root)
    loader.compile("weft_connect.c").cleanup()  # creates and pins the maps, attaches nothing
    strict = Enrollment(Mode.AMBIENT, Inbound.STRICT, IPv4Address(AGENT_ADDR))
    with NodeMaps(loader.maps_dir) as maps:
        maps.enroll(1, AMBIENT)
        maps.enroll(2, AMBIENT)
        plan = reconcile_enrollment(maps, {2: strict, 3: AMBIENT})
        assert plan.removals == (1,)
        assert maps.enrollments() == {2: strict, 3: AMBIENT}
        assert maps.stats(1) is None  # a removed workload's counters go with it
        assert maps.stats(3) is not None
        assert reconcile_enrollment(maps, {2: strict, 3: AMBIENT}).empty
