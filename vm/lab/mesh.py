"""Put a running lab in the mesh: the controller on `control`, an agent on every worker node.

Steps, each one what an operator would type: `weft controller init` and `run` on the control
node, `weft apply` of the lab's namespaces, workloads and services (generated from the lab
state), a join token per worker, then `weft agent run` in each worker's netns; it returns once
every agent answers /healthz/ready. Processes go through the lab (node_spawn), so
`weft lab down` stops them and `weft lab logs controller|agent-<node>` shows their logs.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vm.lab import processes
from vm.lab.lab import Lab
from vm.lab.state import WorkloadInfo
from vm.lab.topology import Node, Topology
from vm.lab.waypoints import (
    DEMO_WAYPOINT_RESOURCES,
    WaypointDeployment,
    ensure_workloads,
    wait_ready,
    waypoint_argv,
    waypoint_documents,
    write_token,
)
from weft.errors import UnavailableError
from weft.model import USE_WAYPOINT_LABEL

WEFT = [sys.executable, "-m", "weft.cli"]
CONTROLLER_GRPC_PORT = 15012
AGENT_METRICS_PORT = 15020
READY_TIMEOUT = 60.0


@dataclass
class MeshInfo:
    state_dir: Path
    controller: str
    controller_pid: int
    agent_pids: dict[str, int]
    waypoint_pids: dict[str, int] = field(default_factory=dict)  # "namespace/name" -> pid


def mesh_dir(lab: Lab) -> Path:
    return lab.store.directory / "mesh"


def lab_resources(
    topology: Topology,
    workloads: Sequence[WorkloadInfo],
    waypoints: Sequence[WaypointDeployment] = (),
) -> list[dict[str, Any]]:
    """The lab's namespaces, workloads and services as `weft apply` documents; with
    `waypoints`, the workloads running them are left out (their Waypoint resources claim
    those addresses) and the services they serve carry `weft.io/use-waypoint`."""
    documents: list[dict[str, Any]] = []
    waypoint_workloads = {wp.workload for wp in waypoints}
    served = {(s, wp.namespace): wp.name for wp in waypoints for s in wp.services}
    for ns in topology.demo.namespaces:
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": dict(ns.labels)},
            }
        )
    for w in workloads:
        if w.name in waypoint_workloads:
            continue
        documents.append(
            workload_document(
                w.name, w.namespace, w.labels,
                address=w.ip, node=w.node, service_account=w.service_account, ports=w.ports,
            )
        )  # fmt: skip
    for s in topology.demo.services:
        waypoint = served.get((s.name, s.namespace))
        labels = {} if waypoint is None else {USE_WAYPOINT_LABEL: waypoint}
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.namespace, "labels": labels},
                "spec": {
                    "clusterIP": str(s.vip),
                    "selector": dict(s.selector),
                    "ports": [
                        {"name": p.name, "port": p.port, "targetPort": p.target_port}
                        for p in s.ports
                    ],
                },
            }
        )
    return documents


def workload_document(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    *,
    address: str,
    node: str,
    service_account: str,
    ports: Sequence[int] = (),
    port_prefix: str = "tcp",
) -> dict[str, Any]:
    """A Workload as a `weft apply` document (the netns lab's and the Vagrant lab's alike);
    its ports are named `<port_prefix>-<port>`."""
    spec: dict[str, Any] = {"address": address, "node": node, "serviceAccount": service_account}
    if ports:
        spec["ports"] = {f"{port_prefix}-{p}": p for p in ports}
    return {
        "apiVersion": "weft.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": spec,
    }


def _quiet(_: str) -> None:
    pass


def up_mesh(
    lab: Lab,
    progress: Callable[[str], None] = _quiet,
    waypoints: Sequence[WaypointDeployment] = (),
) -> MeshInfo:
    """Start the controller and the agents in the running lab `lab` and wait until ready;
    with `waypoints` (e.g. DEMO_WAYPOINTS), also deploy those and the demo's L7 resources."""
    directory = mesh_dir(lab)
    # A new mesh starts from nothing: resources, tokens and node certificates of an earlier
    # one (another CA, policies a test left behind) must not leak into it.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    control = control_node(lab)
    state_dir = directory / "controller"
    controller = f"{control.ip}:{CONTROLLER_GRPC_PORT}"
    progress("initializing the controller (CA, store)")
    lab.node_exec(control.name, [*WEFT, "controller", "init", "--state-dir", str(state_dir)])
    progress(f"starting the controller on {control.name} ({controller})")
    controller_pid = start_controller(lab)
    _wait(
        lambda: CONTROLLER_GRPC_PORT in processes.listening_ports(controller_pid),
        f"the controller to listen on {controller}",
        30,
        controller_pid,
    )
    placed = ensure_workloads(lab, waypoints)
    progress("registering namespaces, workloads and services ('weft apply')")
    resources = directory / "lab-resources.yaml"
    documents = lab_resources(lab.topology, lab.workloads(), waypoints)
    resources.write_text(yaml.safe_dump_all(documents + waypoint_documents(waypoints, placed)))
    files = [resources] + ([DEMO_WAYPOINT_RESOURCES] if waypoints else [])
    lab.node_exec(
        control.name,
        [*WEFT, "apply", *(a for f in files for a in ("-f", str(f))), "--controller", controller,
         "--admin-credential", str(state_dir / "admin.pem")],
    )  # fmt: skip
    agent_pids: dict[str, int] = {}
    for node in lab.topology.workers:
        token = lab.node_exec(
            control.name,
            [*WEFT, "controller", "token", "create", "--node", node.name,
             "--state-dir", str(state_dir), "-o", "json"],
        ).stdout  # fmt: skip
        token_file = directory / f"{node.name}.token"
        token_file.write_text(json.loads(token)["token"] + "\n")
        token_file.chmod(0o600)
        progress(f"starting the agent on {node.name}")
        agent_pids[node.name] = start_agent(lab, node.name, controller)
    for node_name, pid in agent_pids.items():
        progress(f"waiting for the agent on {node_name} to be ready")
        wait_agent_ready(lab, node_name, pid)
    waypoint_pids = {}
    for wp in waypoints:
        progress(f"starting waypoint {wp.reference} on {wp.node} ({placed[wp.reference].ip})")
        token = lab.node_exec(
            control.name,
            [*WEFT, "controller", "token", "create", "--waypoint", wp.reference,
             "--state-dir", str(state_dir), "-o", "json"],
        ).stdout  # fmt: skip
        write_token(directory, wp, token)
        waypoint_pids[wp.reference] = lab.spawn(
            wp.workload, waypoint_argv(WEFT, wp, controller, directory),
            f"waypoint-{wp.namespace}-{wp.name}",
        )  # fmt: skip
    for wp in waypoints:
        progress(f"waiting for waypoint {wp.reference} to be ready")
        wait_ready(lab, wp, waypoint_pids[wp.reference])
    progress("closing connections opened before the mesh (they re-open through it)")
    reset_preexisting_connections(lab)
    info = MeshInfo(directory, controller, controller_pid, agent_pids, waypoint_pids)
    (directory / "mesh.json").write_text(
        json.dumps(
            {
                "controller": controller,
                "controller_pid": controller_pid,
                "agents": agent_pids,
                "waypoints": waypoint_pids,
            },
            indent=2,
        )
    )
    return info


def control_node(lab: Lab) -> Node:
    """The node that runs the controller."""
    return next(n for n in lab.topology.nodes if n.role == "control")


def start_controller(lab: Lab) -> int:
    """Start (or restart: its state dir keeps the CA and the store) the lab's controller."""
    control = control_node(lab)
    state_dir = mesh_dir(lab) / "controller"
    return lab.node_spawn(
        control.name,
        [*WEFT, "controller", "run", "--state-dir", str(state_dir), "--listen", str(control.ip)],
        "controller",
    )


def agent_argv(lab: Lab, node: str, controller: str) -> list[str]:
    directory = mesh_dir(lab)
    return [
        *WEFT, "agent", "run", "--node", node, "--controller", controller,
        "--join-token", str(directory / f"{node}.token"),
        "--trust-bundle", str(directory / "controller" / "trust-bundle.pem"),
        "--state-dir", str(directory / "agents" / node),
        "--workloads-cgroup", lab.cgroup_path(node) + "/workloads",
    ]  # fmt: skip


def start_agent(lab: Lab, node: str, controller: str) -> int:
    """Start (or restart: the saved node certificate is reused) the agent of `node`."""
    return lab.node_spawn(node, agent_argv(lab, node, controller), f"agent-{node}")


def weft_on_control(lab: Lab, *args: str, check: bool = True) -> str:
    """Run `weft ARGS...` on the control node against the lab's controller, as its admin."""
    control = control_node(lab)
    state_dir = mesh_dir(lab) / "controller"
    result = lab.node_exec(
        control.name,
        [*WEFT, *args, "--controller", f"{control.ip}:{CONTROLLER_GRPC_PORT}",
         "--admin-credential", str(state_dir / "admin.pem")],
        check=check,
    )  # fmt: skip
    return result.stdout + result.stderr


def client_connections_filter(listening_ports: Sequence[int]) -> list[str]:
    """An `ss` filter for the established TCP connections a workload opened as a client."""
    if not listening_ports:
        return ["state", "established"]
    served = " and ".join(f"sport != :{port}" for port in sorted(listening_ports))
    return ["state", "established", f"( {served} )"]


def reset_preexisting_connections(lab: Lab, namespaces: Sequence[str] | None = None) -> None:
    """Reset the client connections of meshed workloads (`ss -K`).

    Capture acts on connect(): a keep-alive connection opened before the mesh would carry
    traffic around it for as long as it lives. Restarting pods does this in Kubernetes; the
    lab kills those sockets instead, and the clients reconnect, through the mesh.
    """
    meshed = set(namespaces or [ns.name for ns in lab.topology.demo.namespaces if ns.in_mesh])
    for w in lab.workloads():
        if w.namespace in meshed:
            lab.exec(w.name, ["ss", "-K", "-tn", *client_connections_filter(w.ports)], check=False)


def agent_http(lab: Lab, node: str, path: str, port: int = AGENT_METRICS_PORT) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:<port><path> inside node `node`'s netns."""
    result = lab.node_exec(
        node,
        ["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
        check=False,
        timeout=10,
    )
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def wait_agent_ready(lab: Lab, node: str, pid: int, timeout: float = READY_TIMEOUT) -> None:
    _wait(
        lambda: agent_http(lab, node, "/healthz/ready")[0] == 200,
        f"the agent on {node} to be ready (GET :{AGENT_METRICS_PORT}/healthz/ready)",
        timeout,
        pid,
        lambda: agent_http(lab, node, "/healthz/ready")[1],
    )


def _wait(
    done: Callable[[], bool],
    what: str,
    timeout: float,
    pid: int,
    detail: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        if not Path(f"/proc/{pid}").exists():
            raise UnavailableError(
                f"gave up waiting for {what}: process {pid} exited",
                hint="see 'weft lab logs controller' or 'weft lab logs agent-<node>'",
            )
        time.sleep(0.2)
    extra = f" ({detail()})" if detail is not None else ""
    raise UnavailableError(
        f"timed out after {timeout:g} s waiting for {what}{extra}",
        hint="see 'weft lab logs controller' or 'weft lab logs agent-<node>'",
    )


def down_mesh(lab: Lab, info: MeshInfo) -> None:
    """Stop the agents and the controller and detach capture, leaving the lab as it was.

    Stopping an agent alone leaves capture attached and failing closed (by design); a lab
    without the mesh must reach its services directly again, so capture is detached too.
    """
    for pid in info.waypoint_pids.values():
        lab.stop(pid)
    for node, pid in info.agent_pids.items():
        lab.stop(pid)
        lab.node_exec(node, [*WEFT, "agent", "detach", "--scope", node, "--purge"], check=False)
        lab.node_exec(node, ["ip", "rule", "del", "priority", "1500"], check=False)
    lab.stop(info.controller_pid)
