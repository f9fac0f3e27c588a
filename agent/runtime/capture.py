"""The agent's side of eBPF capture: attach the node's programs and enroll opted-in workloads."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path

from agent.bpf.links import cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode, NodeMaps
from agent.capture.enrollment import reconcile_enrollment
from agent.capture.verify import verify_capture
from agent.state import NodeState
from weft.errors import UnavailableError
from weft.model import MutualTLSMode

log = logging.getLogger(__name__)


def desired_enrollment(
    state: NodeState, workloads_cgroup: Path, agent_address: IPv4Address
) -> dict[Path, Enrollment]:
    """cgroup directory -> entry for every local workload whose cgroup exists.

    A workload's cgroup is `<workloads cgroup>/<workload name>`, as the lab lays them out.
    """
    desired: dict[Path, Enrollment] = {}
    for workload in state.local_workloads():
        cgroup = workloads_cgroup / workload.metadata.name
        if not (cgroup / "cgroup.procs").is_file():
            continue
        meshed = state.in_mesh(workload)
        strict = meshed and state.mtls_mode(workload, 0) == MutualTLSMode.STRICT
        desired[cgroup] = Enrollment(
            Mode.AMBIENT if meshed else Mode.NONE,
            Inbound.STRICT if strict else Inbound.PERMISSIVE,
            agent_address,
        )
    return desired


class Capture:
    """The node's attached programs and its enrollment map."""

    def __init__(
        self,
        scope: str,
        pin_root: Path,
        workloads_cgroup: Path,
        agent_address: IPv4Address,
        outbound_port: int,
    ) -> None:
        self.scope = scope
        self.pin_root = pin_root
        self.workloads_cgroup = workloads_cgroup
        self.agent_address = agent_address
        self.outbound_port = outbound_port
        self.maps: NodeMaps | None = None
        self.enrolled: dict[Path, Enrollment] = {}

    def open_pinned(self) -> bool:
        """Use the maps a previous agent pinned, without compiling anything (a restart then
        serves within a second; attach() refreshes the programs afterwards)."""
        maps_dir = self.pin_root / self.scope / "maps"
        if not (self.pin_root / self.scope / "links").is_dir():
            return False
        try:
            self.maps = NodeMaps(maps_dir)
        except UnavailableError as err:
            log.info("no usable pinned maps (%s); loading the programs", err.message)
            return False
        return True

    def attach(self) -> None:
        """Load and attach (reusing pinned links after a restart), then open the maps."""
        from agent.bpf.loader import Loader
        from agent.bpf.programs import NODE

        loader = Loader(self.scope, pin_root=self.pin_root, outbound_port=self.outbound_port)
        for a in loader.attach(NODE, self.workloads_cgroup):
            log.info("%s %s (link %d)", "reused" if a.reused else "attached", a.function, a.link_id)
        if self.maps is None:
            self.maps = NodeMaps(loader.maps_dir)

    def enroll(self, state: NodeState) -> None:
        assert self.maps is not None, "attach() first"
        desired = desired_enrollment(state, self.workloads_cgroup, self.agent_address)
        plan = reconcile_enrollment(self.maps, {cgroup_id(p): e for p, e in desired.items()})
        if not plan.empty:
            log.info("enrollment: %d written, %d removed", len(plan.upserts), len(plan.removals))
        self.enrolled = desired

    def original_destination(
        self, peer: tuple[str, int], local: tuple[str, int]
    ) -> tuple[IPv4Address, int, int] | None:
        """(address, port, the source workload's cgroup id) of a captured connection."""
        if self.maps is None:
            return None
        found = self.maps.original_destination(peer, local)
        return None if found is None else (found.addr, found.port, found.cgroup_id)

    def problems(self) -> list[str]:
        """Enrolled workloads that are not actually captured (fail closed is reported)."""
        if self.maps is None:
            return ["capture not attached"]
        names = {str(p.name): p for p, e in self.enrolled.items() if e.mode == Mode.AMBIENT}
        states = verify_capture(self.pin_root / self.scope / "links", self.maps, names)
        return [p for s in states if (p := s.problem(Mode.AMBIENT)) is not None]

    def close(self) -> None:
        if self.maps is not None:
            self.maps.close()
            self.maps = None
