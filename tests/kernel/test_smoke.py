"""Foundation smoke test: weft_connect4 compiles, loads, attaches through a pinned link, runs,
and detaches by unpinning, leaving the cgroup without any attachment."""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address
from pathlib import Path

from kernel_sandbox import AGENT_ADDR, UNROUTED_ADDR, CgroupTree, Listeners, Netns, run_client

from agent.bpf import libbpf
from agent.bpf.loader import Loader, cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode, NodeMaps
from agent.bpf.programs import CONNECT4, GETPEERNAME4

SMOKE = (CONNECT4, GETPEERNAME4)

DETACH_WAIT_S = 5.0


def attached_program_ids(cgroup: Path, attach_type: libbpf.AttachType) -> list[int]:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return libbpf.prog_query(fd, attach_type)
    finally:
        os.close(fd)


def test_connect4_runs_in_a_throwaway_cgroup_and_detaches_by_unpinning(
    netns: Netns,
    cgroups: CgroupTree,
    pin_root: Path,
    listen: Listeners,
) -> None:
    loader = Loader("smoke", pin_root=pin_root)
    attachments = loader.attach(SMOKE, cgroups.workloads)
    assert [a.function for a in attachments] == ["weft_connect4", "weft_getpeername4"]
    assert all(a.link_pin.exists() for a in attachments)
    assert attached_program_ids(cgroups.workloads, CONNECT4.attach_type) == [attachments[0].prog_id]

    workload = cgroups.make("workloads/smoke-client")
    agent = listen(AGENT_ADDR, 15001, "agent")
    with NodeMaps(loader.maps_dir) as maps:
        maps.enroll(
            cgroup_id(workload),
            Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR)),
        )
        result = run_client(netns, workload, UNROUTED_ADDR, 80, "hello")
        stats = maps.stats(cgroup_id(workload))

    # Nothing listens at UNROUTED_ADDR: the reply can only come from the agent's listener.
    assert result.error is None
    assert result.reply == "agent:hello"
    assert stats is not None
    assert stats.captured == 1
    assert [a.local for a in agent.accepted] == [(AGENT_ADDR, 15001)]
    assert result.peer == (UNROUTED_ADDR, 80)  # getpeername4 hides the detour

    # Detach the way an operator would: remove the pins. The kernel frees an unpinned link
    # asynchronously (RCU, then a workqueue), so wait a bounded time for it to go.
    for attachment in attachments:
        attachment.link_pin.unlink()
    deadline = time.monotonic() + DETACH_WAIT_S
    while any(attached_program_ids(cgroups.workloads, s.attach_type) for s in SMOKE):
        assert time.monotonic() < deadline, "programs still attached after their pins were removed"
        time.sleep(0.02)
    after = run_client(netns, workload, UNROUTED_ADDR, 80)
    assert after.error is not None  # no longer redirected: 10.77.0.9 is unreachable


def test_loader_detach_is_immediate(cgroups: CgroupTree, pin_root: Path) -> None:
    loader = Loader("smoke", pin_root=pin_root)
    loader.attach(SMOKE, cgroups.workloads)
    assert loader.detach() == ["weft_connect4", "weft_getpeername4"]
    for spec in SMOKE:
        assert attached_program_ids(cgroups.workloads, spec.attach_type) == []
    assert list(loader.links_dir.iterdir()) == []
