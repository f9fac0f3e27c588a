"""Weft over the bench's lab: the controller, an agent per node, and meshed bench workloads.

The meshed paths share one mesh: the first one set up adds the meshed client and servers (in
namespace `bench-mesh`), starts the servers, brings up the controller and the agents with
vm.lab.mesh (what `weft lab up --mesh` does) and applies the namespace, opted in, and a Service
per server with `weft apply`; the last one torn down deletes them and stops it all again.

The waypoint path adds a waypoint to that mesh as the lab deploys its own (vm.lab.waypoints): a
workload `mesh-wp` on the server's node, its own SVID from a waypoint token, its configuration
from the controller, serving a Service `mesh-l7` (the meshed server's HTTP port, labelled
`weft.io/use-waypoint`); a connection to that Service's VIP is captured by the client's agent
and tunnelled to the waypoint, which tunnels each request on to the server's agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.loads.catalog import SERVICE_PORTS
from bench.native import build_tools
from bench.priority import NICE
from bench.servers import start_servers
from bench.testbed import CONNECTION_RATE_SYSCTLS, BenchLayout, Testbed
from vm.lab.lab import Lab
from vm.lab.mesh import (
    WEFT,
    MeshInfo,
    agent_http,
    down_mesh,
    mesh_dir,
    reset_preexisting_connections,
    up_mesh,
    weft_on_control,
)
from vm.lab.waypoints import (
    WaypointDeployment,
    ensure_workloads,
    wait_ready,
    waypoint_argv,
    waypoint_documents,
    waypoint_http,
    write_token,
)
from weft.errors import UnavailableError
from weft.model import DATAPLANE_MODE_LABEL, USE_WAYPOINT_LABEL

MESH_NAMESPACE = "bench-mesh"
# Service VIPs for the meshed servers, outside the demo's 10.96.0.0/24. Nothing connects to them:
# a Service makes its endpoints known to every node (the controller sends a node only its own
# workloads and the endpoints of Services), so the client's agent can route a workload address.
SERVICE_VIPS = {"mesh-local": "10.96.250.1", "mesh-server": "10.96.250.2"}
L7_SERVICE = "mesh-l7"  # the meshed server's HTTP port, behind the bench waypoint
L7_VIP = "10.96.250.3"
WAYPOINT_NAME = "bench-waypoint"
WAYPOINT_WORKLOAD = "mesh-wp"
REQUESTS_METRIC = "istio_requests_total"
ENROLL_TIMEOUT = 60.0
OPENED_METRIC = "istio_tcp_connections_opened_total"
# WEFT_BENCH_AGENT_POLICY=batch runs the mesh's agents and waypoint at SCHED_BATCH (no wakeup
# preemption of the task on the CPU they wake on), for A/B runs against the default SCHED_OTHER
# (bench/README.md "The connect() figure"). Unset: SCHED_OTHER, as everywhere else.
AGENT_POLICY_ENV = "WEFT_BENCH_AGENT_POLICY"


@dataclass
class BenchMesh:
    """A running mesh over the bench's lab, and the meshed workloads the paths use."""

    lab: Lab
    info: MeshInfo
    layout: BenchLayout
    server_pids: list[int]
    resources: Path  # what the bench applied to the controller, deleted again at the end
    users: set[str] = field(default_factory=set)

    def agent_pid(self, node: str) -> int:
        return self.info.agent_pids[node]


_MESHES: dict[int, BenchMesh] = {}  # id(lab) -> its mesh, shared by the meshed paths


def meshed_layout(layout: BenchLayout) -> BenchLayout:
    """The meshed twins of the bench workloads, on the same nodes."""
    return BenchLayout(
        client_node=layout.client_node,
        server_node=layout.server_node,
        client="mesh-client",
        local_server="mesh-local",
        remote_server="mesh-server",
    )


def acquire_mesh(testbed: Testbed, layout: BenchLayout, user: str) -> BenchMesh:
    """The mesh over `testbed` (started now if no path uses it yet), held by path `user`."""
    if not isinstance(testbed, Lab):
        raise UnavailableError(
            "the meshed paths need a vm.lab Lab (the controller and agents run in its nodes)",
            hint="run 'weft bench' with '--testbed lab' or '--testbed running'",
        )
    mesh = _MESHES.get(id(testbed))
    if mesh is None:
        mesh = _start_mesh(testbed, layout)
        _MESHES[id(testbed)] = mesh
    mesh.users.add(user)
    return mesh


def release_mesh(mesh: BenchMesh, user: str) -> None:
    """Let go of the mesh; the last user stops the agents, the controller and the servers."""
    mesh.users.discard(user)
    if mesh.users:
        return
    _MESHES.pop(id(mesh.lab), None)
    for pid in mesh.server_pids:
        mesh.lab.stop(pid)
    # The controller's store outlives this run (vm.lab.mesh reuses it): leave it as we found it.
    weft_on_control(mesh.lab, "delete", "-f", str(mesh.resources), check=False)
    down_mesh(mesh.lab, mesh.info)


def _start_mesh(lab: Lab, layout: BenchLayout) -> BenchMesh:
    meshed = meshed_layout(layout)
    present = {w.name for w in lab.workloads()}
    for workload, node in ((meshed.client, meshed.client_node), *meshed.servers):
        if workload not in present:  # a lab kept up (--testbed running) may have them already
            lab.add_workload(workload, node, MESH_NAMESPACE, workload, {"app": workload})
    settings = [f"{key}={value}" for key, value in CONNECTION_RATE_SYSCTLS.items()]
    lab.exec(meshed.client, ["sysctl", "-q", "-w", *settings])
    mesh_names = {"controller"} | {f"agent-{node.name}" for node in lab.topology.workers}
    running = [p for p in lab.processes() if p.name in mesh_names]
    if running:
        raise UnavailableError(
            f"the lab already runs a mesh ({', '.join(p.name for p in running)}); the bench "
            "starts its own",
            hint="'weft lab down' it, or run 'weft bench' with '--testbed lab --replace'",
        )
    # vm.lab.mesh keeps its controller store across labs; addresses of an earlier lab's
    # workloads in it conflict with this lab's. No mesh runs (checked above), so start afresh.
    shutil.rmtree(mesh_dir(lab), ignore_errors=True)
    server_pids = start_servers(lab, meshed, build_tools())
    try:
        info = up_mesh(lab)
    except BaseException:
        for process in lab.processes():  # what up_mesh started before it failed
            if process.name in mesh_names:
                lab.stop(process.pid)
        for pid in server_pids:
            lab.stop(pid)
        raise
    for pid in info.agent_pids.values():
        _prioritize(pid)
    resources = mesh_dir(lab) / "bench-mesh.yaml"
    resources.write_text(yaml.safe_dump_all(bench_resources(meshed)))
    mesh = BenchMesh(lab, info, meshed, server_pids, resources)
    try:
        # vm.lab.mesh registers the demo's namespaces only; ours is applied the public way.
        weft_on_control(lab, "apply", "-f", str(resources))
        placed = ((meshed.client, meshed.client_node), *meshed.servers)
        for node in (layout.client_node, layout.server_node):
            wait_enrolled(lab, node, [w for w, on in placed if on == node], meshed.servers)
        reset_preexisting_connections(lab, [MESH_NAMESPACE])
    except BaseException:
        mesh.users.add("setup")
        release_mesh(mesh, "setup")
        raise
    return mesh


def _prioritize(pid: int) -> None:
    """Give a process, every thread and child of it, the bench's priority (bench.priority).

    vm.lab.mesh starts the agents and waypoints (the same way for the tests), not through
    `prioritized`, so without this they ran at nice 0 against the peers' -5 on a machine shared
    with other work.
    """
    batch = os.environ.get(AGENT_POLICY_ENV) == "batch"  # an experiment: see AGENT_POLICY_ENV
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            if batch:
                os.sched_setscheduler(int(task.name), os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, int(task.name), NICE)
            for child in (task / "children").read_text().split():
                _prioritize(int(child))


def bench_resources(meshed: BenchLayout) -> list[dict[str, Any]]:
    """The namespace (opted in) and a Service per meshed server, as `weft apply` documents."""
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": MESH_NAMESPACE, "labels": {DATAPLANE_MODE_LABEL: "ambient"}},
        }
    ]
    for server, _node in meshed.servers:
        ports = [
            {"name": f"tcp-{name}", "port": port, "targetPort": port}
            for name, port in SERVICE_PORTS.items()
        ]
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": server, "namespace": MESH_NAMESPACE},
                "spec": {
                    "clusterIP": SERVICE_VIPS[server],
                    "selector": {"app": server},
                    "ports": ports,
                },
            }
        )
    return documents


def wait_enrolled(
    lab: Lab,
    node: str,
    workloads: list[str],
    servers: tuple[tuple[str, str], ...],
    timeout: float = ENROLL_TIMEOUT,
) -> None:
    """Wait until the agent of `node` has its workloads in the mesh, knows every server as a
    Service endpoint, and reports itself ready."""
    wanted = {f"{MESH_NAMESPACE}/{w}" for w in workloads}
    services = {f"{server}.{MESH_NAMESPACE}" for server, _node in servers}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status, body = agent_http(lab, node, "/config_dump", port=15000)
        if status == 200:
            dump = json.loads(body)
            meshed = {w["workload"] for w in dump.get("local_workloads", []) if w.get("in_mesh")}
            known = {s["service"] for s in dump.get("services", []) if s.get("endpoints")}
            ready, last = agent_http(lab, node, "/healthz/ready")
            if wanted <= meshed and services <= known and ready == 200:
                return
        time.sleep(0.3)
    raise UnavailableError(
        f"the agent on {node} did not enroll {', '.join(sorted(wanted))} or learn the services "
        f"{', '.join(sorted(services))} within {timeout:g} s "
        f"(readiness: {last.strip()[:300]})",
        hint=f"see 'weft lab logs agent-{node}' and 'weft config-dump --node {node}'",
    )


def opened_connections(lab: Lab, node: str, reporter: str) -> float:
    """The agent's istio_tcp_connections_opened_total for one reporter (source/destination)."""
    status, body = agent_http(lab, node, "/metrics")
    if status != 200:
        raise UnavailableError(f"the agent on {node} did not serve /metrics (HTTP {status})")
    return opened_in_exposition(body, reporter)


def opened_in_exposition(text: str, reporter: str) -> float:
    """Sum of the opened-connections counter's samples of one reporter, in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(OPENED_METRIC + "{") and f'reporter="{reporter}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def verify_through_mesh(
    lab: Lab, node: str, reporter: str, probe: Callable[[], None], what: str
) -> None:
    """Fail unless `probe`'s connection is counted by the agent on `node`: no silent bypass."""
    before = opened_connections(lab, node, reporter)
    probe()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if opened_connections(lab, node, reporter) > before:
            return
        time.sleep(0.2)
    raise UnavailableError(
        f"{what}: a probe connection was not counted by the agent on {node} "
        f'({OPENED_METRIC}{{reporter="{reporter}"}} stayed at {before:g}); the traffic '
        "bypasses the mesh, so no figure of this path would be Weft's",
        hint=f"see 'weft config-dump --node {node}' (is the client enrolled?)",
    )


# --- the waypoint in the mesh ------------------------------------------------------------------


@dataclass
class BenchWaypoint:
    """A waypoint the bench runs in its mesh: where, its pid, what was applied for it."""

    deployment: WaypointDeployment
    pid: int
    resources: Path


def waypoint_deployment(meshed: BenchLayout) -> WaypointDeployment:
    """The bench's waypoint: on the server's node, serving the L7 Service in bench-mesh."""
    return WaypointDeployment(
        WAYPOINT_NAME, MESH_NAMESPACE, meshed.server_node, WAYPOINT_WORKLOAD, (L7_SERVICE,)
    )


def l7_service(meshed: BenchLayout) -> dict[str, Any]:
    """The Service that uses the waypoint: the remote meshed server's HTTP port."""
    port = SERVICE_PORTS["http"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": L7_SERVICE,
            "namespace": MESH_NAMESPACE,
            "labels": {USE_WAYPOINT_LABEL: WAYPOINT_NAME},
        },
        "spec": {
            "clusterIP": L7_VIP,
            "selector": {"app": meshed.remote_server},
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }


def start_waypoint(mesh: BenchMesh) -> BenchWaypoint:
    """Deploy the bench waypoint as vm.lab.mesh deploys the lab's: a workload not captured by
    its agent, a Waypoint resource at its address, a one-time token redeemed for its own SVID,
    `weft waypoint run` fed by the controller; returns once it is ready."""
    lab = mesh.lab
    wp = waypoint_deployment(mesh.layout)
    placed = ensure_workloads(lab, [wp])
    directory = mesh.info.state_dir
    resources = directory / "bench-waypoint.yaml"
    documents = [l7_service(mesh.layout), *waypoint_documents([wp], placed)]
    resources.write_text(yaml.safe_dump_all(documents))
    weft_on_control(lab, "apply", "-f", str(resources))
    pid = 0
    try:
        control = next(n for n in lab.topology.nodes if n.role == "control")
        token = lab.node_exec(
            control.name,
            [*WEFT, "controller", "token", "create", "--waypoint", wp.reference,
             "--state-dir", str(directory / "controller"), "-o", "json"],
        ).stdout  # fmt: skip
        write_token(directory, wp, token)
        pid = lab.spawn(
            wp.workload, waypoint_argv(WEFT, wp, mesh.info.controller, directory),
            f"waypoint-{wp.namespace}-{wp.name}",
        )  # fmt: skip
        wait_ready(lab, wp, pid)
        _prioritize(pid)  # started as the lab starts its waypoints, not through `prioritized`
    except BaseException:
        stop_waypoint(lab, BenchWaypoint(wp, pid, resources))
        raise
    return BenchWaypoint(wp, pid, resources)


def stop_waypoint(lab: Lab, waypoint: BenchWaypoint) -> None:
    """Stop the waypoint and delete what was applied for it (the store outlives the run)."""
    if waypoint.pid:
        lab.stop(waypoint.pid)
    weft_on_control(lab, "delete", "-f", str(waypoint.resources), check=False)


def waypoint_requests(lab: Lab, waypoint: BenchWaypoint) -> float:
    """The waypoint's istio_requests_total for the L7 Service, all label sets summed."""
    status, body = waypoint_http(lab, waypoint.deployment.workload, "/metrics")
    if status != 200:
        raise UnavailableError(f"the bench waypoint did not serve /metrics (HTTP {status})")
    return requests_in_exposition(body, f"{L7_SERVICE}.{MESH_NAMESPACE}.svc.cluster.local")


def requests_in_exposition(text: str, destination_service: str) -> float:
    """Sum of istio_requests_total samples for one destination_service, in Prometheus text."""
    total = 0.0
    label = f'destination_service="{destination_service}"'
    for line in text.splitlines():
        if line.startswith(REQUESTS_METRIC + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def verify_through_waypoint(
    lab: Lab, waypoint: BenchWaypoint, probe: Callable[[], None], what: str, timeout: float = 20.0
) -> None:
    """Fail unless a `probe` request is counted by the waypoint. The agents learn of the
    Waypoint and of the Service that uses it from the controller, so probes are repeated
    until then (a request that went around the waypoint does not count)."""
    before = waypoint_requests(lab, waypoint)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe()
        if waypoint_requests(lab, waypoint) > before:
            return
        time.sleep(0.3)
    raise UnavailableError(
        f"{what}: probe requests to {L7_SERVICE} ({L7_VIP}) were not counted by the waypoint "
        f"({REQUESTS_METRIC} stayed at {before:g} for {timeout:g} s); the traffic bypasses it, "
        "so no figure of this path would be the waypoint's",
        hint="see 'weft lab logs waypoint-bench-mesh-bench-waypoint' and "
        "'weft config-dump --node <client node>'",
    )
