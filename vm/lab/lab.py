"""The lab: builds a topology's nodes, fabric, workloads and services; runs processes in them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vm.lab import cgroups, cleanup, plumbing, processes
from vm.lab.cleanup import CleanupReport
from vm.lab.iproute import ip_batch, ip_batches_parallel, nft_apply
from vm.lab.netns import write_sysctls
from vm.lab.services import ServiceEndpoints, render_ruleset
from vm.lab.state import (
    BUILDING,
    DEFAULT_STATE_DIR,
    UP,
    LabState,
    ProcessInfo,
    StateStore,
    WorkloadInfo,
    pid_alive,
)
from vm.lab.topology import (
    FABRIC_NETNS,
    MAX_WORKLOAD_NAME,
    Node,
    Topology,
    Workload,
    parse_topology,
    workload_netns,
)
from weft.errors import ConflictError, NotRootError, UnavailableError, UsageError

Progress = Callable[[str], None]

# Demo programs open their ports within a second or two; this bounds a hung one.
READY_TIMEOUT = 30.0
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def require_root(operation: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(operation)


def _quiet(_: str) -> None:
    pass


class Lab:
    """One lab on this machine. `Lab(topology).up()` builds it; `Lab.attach()` finds it again."""

    def __init__(self, topology: Topology, state_dir: str | Path = DEFAULT_STATE_DIR) -> None:
        self.topology = topology
        self.store = StateStore(state_dir)
        self.last_cleanup: CleanupReport | None = None
        self.timings: dict[str, float] = {}

    @classmethod
    def attach(cls, state_dir: str | Path = DEFAULT_STATE_DIR) -> Lab:
        """The running lab, as recorded in state.json by `up`."""
        store = StateStore(state_dir)
        state = store.load()
        if state is None or state.status != UP:
            what = "no lab is running" if state is None else "the lab was not built completely"
            raise UnavailableError(
                f"{what} (no complete {store.path})",
                hint="start one with 'sudo weft lab up --demo' (add --replace after a crash)",
            )
        topology = parse_topology(state.topology, f"{store.path} (topology)")
        return cls(topology, state_dir)

    # ------------------------------------------------------------------ up / down

    def up(self, demo: bool = False, replace: bool = False, progress: Progress = _quiet) -> None:
        """Build the lab (and start the demo shop if `demo`); clean up leftovers of a crash first.

        Raises ConflictError if a lab is already running, unless `replace`.
        """
        require_root("weft lab up")
        started = time.monotonic()
        with self.store.locked():
            self._refuse_if_running(replace)
            progress("cleaning up leftovers")
            self.last_cleanup = cleanup.sweep(self.store)
            shutil.rmtree(self.store.log_dir, ignore_errors=True)
            self._mark("cleanup", started)
            state = LabState(
                status=BUILDING,
                builder_pid=os.getpid(),
                topology=self.topology.to_document(),
                demo=demo,
            )
            self.store.save(state)
            workloads = self._place(self.topology.demo.workloads if demo else ())
            progress(f"building {len(self.topology.nodes)} nodes and the fabric")
            self._build_network(workloads)
            self._mark("network", started)
            for node in self.topology.nodes:
                cgroups.create(cgroups.workloads_cgroup(node.name))
            for w in workloads:
                cgroups.create(Path(w.cgroup))
            state.workloads = {w.name: w for w in workloads}
            if demo:
                progress("programming service VIPs (nftables, like kube-proxy)")
                self._apply_services(state)
            self.store.save(state)
            self._mark("built", started)
            if demo:
                progress("starting the demo shop")
                try:
                    self._start_demo(state)
                except processes.ProcessFailedError:
                    # Up, if broken, so `status` shows what failed; only a crash (or ^C)
                    # leaves "building" behind, which the next `up` cleans away by itself.
                    self._finish(state, started)
                    raise
            self._finish(state, started)

    def _finish(self, state: LabState, started: float) -> None:
        state.status = UP
        state.build_seconds = round(time.monotonic() - started, 3)
        self.store.save(state)

    def down(self) -> CleanupReport:
        """Stop every lab process and remove everything the lab created; safe to repeat."""
        require_root("weft lab down")
        with self.store.locked():
            self.last_cleanup = cleanup.sweep(self.store)
            return self.last_cleanup

    def _refuse_if_running(self, replace: bool) -> None:
        state = self.store.load()
        if state is None or replace:
            return
        if state.status == UP:
            raise ConflictError(
                f"a lab is already running ({len(state.workloads)} workloads, "
                f"recorded in {self.store.path})",
                hint="use it ('weft lab status'), replace it ('weft lab up --replace') "
                "or remove it ('weft lab down')",
            )
        if state.builder_pid != os.getpid() and pid_alive(state.builder_pid):
            raise ConflictError(
                f"a lab is being built by pid {state.builder_pid}",
                hint="wait for it, or stop it and run 'weft lab up --replace'",
            )
        # Otherwise a previous `up` died halfway: the sweep that follows cleans it up.

    def _mark(self, step: str, started: float) -> None:
        self.timings[step] = round(time.monotonic() - started, 3)

    # ------------------------------------------------------------------ building

    def _place(self, workloads: Sequence[Workload]) -> list[WorkloadInfo]:
        """Give each workload the next free IP of its node's pod CIDR."""
        placed: list[WorkloadInfo] = []
        for w in workloads:
            placed.append(self._info(w, [p.ip for p in placed if p.node == w.node], demo=True))
        return placed

    def _info(self, w: Workload, used_ips: list[str], demo: bool) -> WorkloadInfo:
        node = self.topology.node(w.node)
        if node.pod_cidr is None:
            raise UsageError(f"node '{node.name}' is a {node.role} node: it runs no workloads")
        try:
            ip = plumbing.next_pod_ip(node.pod_cidr, used_ips)
        except ValueError as exc:
            raise ConflictError(f"node '{node.name}': {exc}") from exc
        return WorkloadInfo(
            name=w.name,
            namespace=w.namespace,
            node=w.node,
            ip=str(ip),
            netns=w.netns,
            cgroup=str(cgroups.workload_cgroup(w.node, w.name)),
            service_account=w.service_account,
            labels=dict(w.labels),
            ports=w.ports,
            demo=demo,
        )

    def _build_network(self, workloads: Sequence[WorkloadInfo]) -> None:
        nodes = self.topology.nodes
        namespaces = [FABRIC_NETNS, *(n.netns for n in nodes), *(w.netns for w in workloads)]
        ip_batch(plumbing.add_namespaces(namespaces))
        for node in nodes:
            write_sysctls(node.netns, plumbing.NODE_SYSCTLS)
        ip_batch(
            plumbing.add_node_uplinks(nodes)
            + [plumbing.add_workload_link(w, self.topology.node(w.node)) for w in workloads]
        )
        batches: dict[str, list[str]] = {FABRIC_NETNS: plumbing.configure_fabric(nodes)}
        for node in nodes:
            batches[node.netns] = plumbing.configure_node(self.topology, node)
        for w in workloads:
            batches[self.topology.node(w.node).netns] += plumbing.attach_workload_to_node(w)
            batches[w.netns] = plumbing.configure_workload(w)
        ip_batches_parallel(batches)

    def _apply_services(self, state: LabState) -> None:
        """(Re)write every node's service table from the services and the current workloads."""
        endpoints = []
        for s in self.topology.demo.services:
            ips = sorted(
                (w.ip for w in state.workloads.values() if _selects(s.selector, s.namespace, w)),
                key=lambda ip: tuple(int(part) for part in ip.split(".")),
            )
            endpoints += [
                ServiceEndpoints(f"{s.name}.{s.namespace}", str(s.vip), p.port, p.target_port, ips)
                for p in s.ports
            ]
        for node in self.topology.nodes:
            local = [w.ip for w in state.workloads.values() if w.node == node.name]
            nft_apply(node.netns, render_ruleset(endpoints, local))

    def _start_demo(self, state: LabState) -> None:
        waits = []
        for w in self.topology.demo.workloads:
            if not w.command:
                continue
            info = state.workloads[w.name]
            process = processes.spawn(
                info.netns,
                Path(info.cgroup),
                self.expand(w.command),
                w.name,
                self.store.log_dir / f"{w.name}.log",
                workload=w.name,
                node=w.node,
            )
            state.processes.append(process)
            waits.append(processes.PortWait(process, w.ports))
        self.store.save(state)
        processes.wait_until_listening(waits, READY_TIMEOUT)

    def expand(self, argv: Sequence[str], **values: object) -> list[str]:
        """Substitute {python}, {vip:<service>.<namespace>} and `values` in a demo command."""
        vips = {f"vip:{s.name}.{s.namespace}": str(s.vip) for s in self.topology.demo.services}
        table = {"python": sys.executable, **vips, **{k: str(v) for k, v in values.items()}}
        return [re.sub(r"\{([^{}]*)\}", lambda m: table.get(m[1], m[0]), arg) for arg in argv]

    # ------------------------------------------------------------------ runtime changes

    def add_workload(
        self,
        name: str,
        node: str,
        namespace: str,
        service_account: str = "default",
        labels: dict[str, str] | None = None,
    ) -> WorkloadInfo:
        """Add an idle workload to the running lab (for benchmarks and tests)."""
        require_root("adding a lab workload")
        for field, value, limit in (
            ("name", name, MAX_WORKLOAD_NAME),
            ("namespace", namespace, 63),
            ("service_account", service_account, 63),
        ):
            if not _NAME.match(value) or len(value) > limit:
                raise UsageError(
                    f"workload {field} {value!r} must be a lowercase DNS label of at most "
                    f"{limit} characters"
                )
        with self.store.locked():
            state = self._running_state()
            if name in state.workloads:
                raise ConflictError(f"the lab already has a workload named '{name}'")
            target = self.topology.node(node)
            netns = workload_netns(node, name)
            if netns in {n.netns for n in self.topology.nodes} | {FABRIC_NETNS} | {
                w.netns for w in state.workloads.values()
            }:
                raise ConflictError(f"netns {netns} is taken; choose another workload name")
            workload = Workload(name, namespace, node, service_account, dict(labels or {}))
            used = [w.ip for w in state.workloads.values() if w.node == node]
            info = self._info(workload, used, demo=False)
            ip_batch(plumbing.add_namespaces([info.netns]))
            ip_batch([plumbing.add_workload_link(info, target)])
            ip_batches_parallel(
                {
                    target.netns: plumbing.attach_workload_to_node(info),
                    info.netns: plumbing.configure_workload(info),
                }
            )
            cgroups.create(Path(info.cgroup))
            state.workloads[name] = info
            if state.demo:
                self._apply_services(state)
            self.store.save(state)
            return info

    def spawn(self, workload: str, argv: Sequence[str], name: str) -> int:
        """Start a detached process in a workload; it is logged and killed by `down`."""
        info = self.workload(workload)
        return self._spawn(info.netns, Path(info.cgroup), argv, name, workload=workload)

    def node_spawn(self, node: str, argv: Sequence[str], name: str) -> int:
        """Start a detached process in a node's netns and cgroup (outside `workloads/`)."""
        n = self.topology.node(node)
        return self._spawn(n.netns, cgroups.node_cgroup(node), argv, name, node=node)

    def _spawn(
        self,
        netns: str,
        cgroup: Path,
        argv: Sequence[str],
        name: str,
        *,
        workload: str | None = None,
        node: str | None = None,
    ) -> int:
        require_root("starting a lab process")
        with self.store.locked():
            state = self._running_state()
            log = self.store.log_dir / f"{_file_name(name)}.log"
            process = processes.spawn(netns, cgroup, argv, name, log, workload=workload, node=node)
            state.processes.append(process)
            self.store.save(state)
            return process.pid

    def stop(self, pid: int) -> bool:
        """Stop one process started by spawn/node_spawn; False if it had already ended."""
        with self.store.locked():
            state = self._running_state()
            mine = [p for p in state.processes if p.pid == pid]
            stopped = processes.stop(mine)
            state.processes = [p for p in state.processes if p.pid != pid]
            self.store.save(state)
            return bool(stopped)

    # ------------------------------------------------------------------ running commands

    def exec(
        self,
        workload: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a workload (its netns and cgroup) and wait for it."""
        info = self.workload(workload)
        return processes.run(
            info.netns, Path(info.cgroup), argv, timeout=timeout, check=check, input=input
        )

    def node_exec(
        self,
        node: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's netns and cgroup and wait for it."""
        n = self.topology.node(node)
        return processes.run(
            n.netns, cgroups.node_cgroup(node), argv, timeout=timeout, check=check, input=input
        )

    def traffic(
        self, requests: int, duration_limit: float, json_report: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the demo's load client (demo.traffic in the topology) and wait for its report."""
        traffic = self.topology.demo.traffic
        if traffic is None:
            raise UsageError(f"{self.topology.source} has no demo.traffic section")
        argv = self.expand(traffic.command, requests=requests, duration_limit=duration_limit)
        if json_report:
            argv.append("--json")
        return self.exec(traffic.workload, argv, timeout=duration_limit + 30, check=False)

    # ------------------------------------------------------------------ lookups

    def _running_state(self) -> LabState:
        state = self.store.load()
        if state is None or state.status not in (UP, BUILDING):
            raise UnavailableError(
                f"no lab is running ({self.store.path} is missing)",
                hint="start one with 'sudo weft lab up --demo'",
            )
        return state

    def workloads(self) -> list[WorkloadInfo]:
        return list(self._running_state().workloads.values())

    def workload(self, name: str) -> WorkloadInfo:
        state = self._running_state()
        try:
            return state.workloads[name]
        except KeyError:
            known = ", ".join(sorted(state.workloads)) or "none"
            raise UsageError(
                f"the lab has no workload named '{name}' (workloads: {known})"
            ) from None

    def processes(self) -> list[ProcessInfo]:
        return list(self._running_state().processes)

    def workload_ip(self, name: str) -> str:
        return self.workload(name).ip

    def node_ip(self, node: str) -> str:
        return str(self.topology.node(node).ip)

    def node_netns(self, node: str) -> str:
        return self.topology.node(node).netns

    def cgroup_path(self, node: str, workload: str | None = None) -> str:
        """The node's cgroup, or a workload's; eBPF capture attaches at `<node>/workloads`."""
        self.topology.node(node)
        if workload is None:
            return str(cgroups.node_cgroup(node))
        info = self.workload(workload)
        if info.node != node:
            raise UsageError(f"workload '{workload}' runs on node '{info.node}', not '{node}'")
        return info.cgroup

    def status(self) -> dict[str, Any]:
        """Everything an operator (or `weft lab status -o json`) wants to know about the lab."""
        state = self.store.load()
        if state is None:
            return {"state": "down", "stateFile": str(self.store.path)}
        present = set(cleanup.lab_namespaces())
        demo = self.topology.demo
        return {
            "state": state.status,
            "stateFile": str(self.store.path),
            "demo": state.demo,
            "buildSeconds": state.build_seconds,
            "nodes": [_node_status(n, n.netns in present) for n in self.topology.nodes],
            "namespaces": [
                {"name": ns.name, "labels": dict(ns.labels), "inMesh": ns.in_mesh}
                for ns in (demo.namespaces if state.demo else ())
            ],
            "workloads": [
                {
                    "name": w.name,
                    "namespace": w.namespace,
                    "node": w.node,
                    "ip": w.ip,
                    "netns": w.netns,
                    "netnsPresent": w.netns in present,
                    "cgroup": w.cgroup,
                    "serviceAccount": w.service_account,
                    "labels": w.labels,
                    "ports": list(w.ports),
                }
                for w in sorted(state.workloads.values(), key=lambda w: (w.node, w.name))
            ],
            "services": [
                {
                    "name": s.name,
                    "namespace": s.namespace,
                    "vip": str(s.vip),
                    "ports": [p.port for p in s.ports],
                    "endpoints": [
                        w.ip
                        for w in state.workloads.values()
                        if _selects(s.selector, s.namespace, w)
                    ],
                }
                for s in (demo.services if state.demo else ())
            ],
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "workload": p.workload,
                    "node": p.node,
                    "alive": processes.is_running(p),
                    "log": p.log,
                }
                for p in state.processes
            ],
        }


def _selects(selector: Any, namespace: str, w: WorkloadInfo) -> bool:
    return w.namespace == namespace and all(w.labels.get(k) == v for k, v in selector.items())


def _node_status(n: Node, present: bool) -> dict[str, Any]:
    return {
        "name": n.name,
        "role": n.role,
        "ip": str(n.ip),
        "podCIDR": str(n.pod_cidr) if n.pod_cidr else None,
        "netns": n.netns,
        "netnsPresent": present,
        "cgroup": str(cgroups.node_cgroup(n.name)),
    }


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "process"
