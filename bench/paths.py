"""The paths traffic can take from the bench client to a server: direct, meshed, or a peer proxy.

Each path says whether it can run here (`availability`), brings up what it needs (`setup`,
returning where the client connects for each server), names the processes whose CPU and memory
are its cost (`mesh_processes`), and removes what it started (`teardown`). A later issue plugs a
meshed path in by filling in its `setup`.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.listening import wait_listening
from bench.loads.catalog import SERVICE_PORTS
from bench.mesh_testbed import (
    L7_VIP,
    BenchMesh,
    BenchWaypoint,
    acquire_mesh,
    release_mesh,
    start_waypoint,
    stop_waypoint,
    verify_through_mesh,
    verify_through_waypoint,
)
from bench.peer_configs import haproxy_config, stunnel_client_config, stunnel_server_config
from bench.pki import create_peer_pki
from bench.priority import prioritized
from bench.testbed import BenchLayout, Testbed
from waypoint.workers import default_workers
from weft.errors import UnavailableError

ALL_LOADS = frozenset({"bulk", "rr", "connrate", "http1", "http16", "grpc"})  # stream1m: proxies
HTTP_LOADS = frozenset({"http1", "http16", "grpc"})


@dataclass(frozen=True)
class PathTarget:
    """Where the load client runs and, for each service, the address it connects to."""

    client: str
    addresses: dict[str, tuple[str, int]]
    http_host: str | None = None  # the Host header HTTP loads send, if the path routes by it


class BenchPath:
    """A path; subclasses set the class attributes and override what they need."""

    name: str = ""
    description: str = ""
    baseline: str = "direct"  # the unmeshed path its figures are divided by
    peer: str | None = None  # the proxy a user would pick instead, if any
    loads: frozenset[str] = ALL_LOADS

    def __init__(self) -> None:
        self._processes: dict[int, str] = {}  # pid -> name, of what setup started
        self._testbed: Testbed | None = None

    def availability(self) -> str | None:
        """None if the path can run here, else why not (shown as "not available: <reason>")."""
        return None

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        raise NotImplementedError

    def mesh_pids(self) -> list[int]:
        return list(self._processes)

    def mesh_processes(self) -> dict[int, str]:
        """pid -> name of each process this path adds (its cost is theirs)."""
        return dict(self._processes)

    def record_process(self, testbed: Testbed, pid: int, name: str) -> None:
        """Count a process setup started as this path's cost, and stop it at teardown."""
        self._testbed = testbed
        self._processes[pid] = name

    def teardown(self) -> None:
        """Stop what setup started, by pid, through the lab (which also forgets them)."""
        if self._testbed is not None:
            for pid in self._processes:
                self._testbed.stop(pid)
        self._processes.clear()


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package itself is missing
        return False


def _direct_addresses(testbed: Testbed, workload: str) -> dict[str, tuple[str, int]]:
    ip = testbed.workload_ip(workload)
    return {service: (ip, port) for service, port in SERVICE_PORTS.items()}


class DirectPath(BenchPath):
    name = "direct"
    description = "no mesh: client workload to a server workload on another node"

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        return PathTarget(layout.client, _direct_addresses(testbed, layout.remote_server))


class DirectSameNodePath(BenchPath):
    name = "direct-same-node"
    description = "no mesh: client workload to a server workload on the same node"
    baseline = "direct-same-node"

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        return PathTarget(layout.client, _direct_addresses(testbed, layout.local_server))


class StunnelPath(BenchPath):
    """An stunnel on each node: the client's node wraps plaintext in TLS 1.3 with a client cert."""

    name = "stunnel"
    description = "stunnel mTLS pair between the two nodes (TLS 1.3, ECDSA P-256, client certs)"
    CLIENT_PORT_BASE = 20000  # client node listens on 20000 + index, server node on 21000 + index
    SERVER_PORT_BASE = 21000

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        pki = create_peer_pki(workdir / "stunnel-pki")
        client_node_ip = testbed.node_ip(layout.client_node)
        server_node_ip = testbed.node_ip(layout.server_node)
        server_ip = testbed.workload_ip(layout.remote_server)
        client_routes, server_routes = {}, {}
        for index, (service, port) in enumerate(SERVICE_PORTS.items()):
            client_port = self.CLIENT_PORT_BASE + index
            tunnel_port = self.SERVER_PORT_BASE + index
            client_routes[service] = (client_node_ip, client_port, server_node_ip, tunnel_port)
            server_routes[service] = (server_node_ip, tunnel_port, server_ip, port)
        sides = (
            (layout.client_node, "client", stunnel_client_config(pki, client_routes)),
            (layout.server_node, "server", stunnel_server_config(pki, server_routes)),
        )
        for node, side, text in sides:
            config = workdir / f"stunnel-{side}.conf"
            config.write_text(text)
            name = f"bench-stunnel-{side}"
            pid = testbed.node_spawn(node, prioritized(["stunnel", str(config)]), name)
            self.record_process(testbed, pid, name)
        for node, routes in (
            (layout.client_node, client_routes),
            (layout.server_node, server_routes),
        ):
            wait_listening(testbed, [route[1] for route in routes.values()], node=node)
        return PathTarget(
            layout.client, {service: (r[0], r[1]) for service, r in client_routes.items()}
        )


class HaproxyPath(BenchPath):
    """haproxy on the server's node as one HTTP hop (HTTP/1.1 and h2c for gRPC)."""

    name = "haproxy"
    description = "haproxy HTTP hop on the server's node (HTTP/1.1 keep-alive, h2c for gRPC)"
    peer = None
    loads = HTTP_LOADS | {"stream1m"}
    HTTP_PORT = 22080
    GRPC_PORT = 22090

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        node_ip = testbed.node_ip(layout.server_node)
        server_ip = testbed.workload_ip(layout.remote_server)
        config = workdir / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                node_ip,
                http=(self.HTTP_PORT, server_ip, SERVICE_PORTS["http"]),
                grpc=(self.GRPC_PORT, server_ip, SERVICE_PORTS["grpc"]),
            )
        )
        argv = prioritized(["haproxy", "-f", str(config), "-db"])
        pid = testbed.node_spawn(layout.server_node, argv, "bench-haproxy")
        self.record_process(testbed, pid, "bench-haproxy")
        wait_listening(testbed, [self.HTTP_PORT, self.GRPC_PORT], node=layout.server_node)
        return PathTarget(
            layout.client,
            {"http": (node_ip, self.HTTP_PORT), "grpc": (node_ip, self.GRPC_PORT)},
        )


class MeshPath(BenchPath):
    """A path through Weft itself: meshed twins of the bench workloads, captured by the agents."""

    component_modules: tuple[str, ...] = ("agent.main", "agent.cli")  # what runs `weft agent`
    component_name = "node agent"
    same_node = False

    def __init__(self) -> None:
        super().__init__()
        self._mesh: BenchMesh | None = None

    def availability(self) -> str | None:
        if not any(_module_exists(name) for name in self.component_modules):
            missing = " and ".join(self.component_modules)
            return f"{self.component_name} not built yet ({missing} missing)"
        return None

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        mesh = acquire_mesh(testbed, layout, self.name)
        self._mesh = mesh
        meshed = mesh.layout
        server = meshed.local_server if self.same_node else meshed.remote_server
        nodes = [meshed.client_node] if self.same_node else [meshed.client_node, meshed.server_node]
        for node in nodes:
            self._processes[mesh.agent_pid(node)] = f"weft-agent-{node}"
        target = PathTarget(meshed.client, _direct_addresses(mesh.lab, server))
        ip, port = target.addresses["http"]

        def probe() -> None:
            mesh.lab.exec(
                meshed.client, ["curl", "-sS", "-o", "/dev/null", "-m", "5", f"http://{ip}:{port}/"]
            )

        # The source side counts every captured connection; cross-node, the destination agent
        # must count it too (it arrived over HBONE, not around the mesh).
        verify_through_mesh(mesh.lab, meshed.client_node, "source", probe, self.name)
        if not self.same_node:
            verify_through_mesh(mesh.lab, meshed.server_node, "destination", probe, self.name)
        return target

    def teardown(self) -> None:
        self._processes.clear()  # the agents are the mesh's: release_mesh stops them
        if self._mesh is not None:
            release_mesh(self._mesh, self.name)
            self._mesh = None


class WeftSameNodePath(MeshPath):
    name = "weft-same-node"
    description = "Weft L4, client and server on one node (eBPF capture, in-kernel splice)"
    baseline = "direct-same-node"
    same_node = True


class WeftCrossNodePath(MeshPath):
    name = "weft-cross-node"
    description = "Weft L4 between two nodes (capture, HBONE mTLS tunnel between agents)"
    peer = "stunnel"


# The resources the standalone waypoint runs: one Service on the bench HTTP server's port and an
# HTTPRoute sending every path of it to that Service (whose endpoint is the bench server, given
# with --endpoint). Requests name the Service in their Host header, as in the mesh.
WAYPOINT_RESOURCES = """\
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {weft.io/use-waypoint: bench-waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: bench-http, namespace: bench}
spec:
  clusterIP: 10.96.250.10
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: weft.io/v1
kind: Waypoint
metadata: {name: bench-waypoint, namespace: bench}
spec: {address: 10.96.250.11, node: node2}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench-http, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: bench-http, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: bench-http, port: 8080}]
"""
WAYPOINT_SERVICE = "bench-http.bench:8080"  # the Host clients send; also the backend's name


class WeftWaypointPath(BenchPath):
    """`weft waypoint run` as one L7 hop on the server's node, where haproxy runs its hop: the
    same backend, the same nodes, HTTP/1.1 keep-alive both sides, routed by Host with a
    compiled HTTPRoute. Its access log is on (one JSON line per request, as deployed);
    haproxy's default configuration logs nothing. Both run with their defaults on the same
    CPUs: haproxy a thread per CPU, the waypoint a worker process per CPU (`--workers`); the
    CPU each used is measured over its whole process tree."""

    name = "weft-waypoint"
    description = (
        "Weft L7 waypoint hop on the server's node (HTTPRoute by Host, HTTP/1.1, a worker per CPU)"
    )
    peer = "haproxy"
    loads = frozenset({"http1", "http16", "stream1m"})
    HTTP_PORT = 22180

    def availability(self) -> str | None:
        if not _module_exists("waypoint.cli"):
            return "waypoint not built yet (waypoint.cli missing)"
        return None

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        node_ip = testbed.node_ip(layout.server_node)
        server_ip = testbed.workload_ip(layout.remote_server)
        resources = workdir / "waypoint.yaml"
        resources.write_text(WAYPOINT_RESOURCES)
        argv = [sys.executable, "-m", "weft.cli", "waypoint", "run", "-f", str(resources)]
        argv += ["--name", "bench-waypoint", "--namespace", "bench", "--admin", "off"]
        argv += ["--endpoint", f"{WAYPOINT_SERVICE}={server_ip}:{SERVICE_PORTS['http']}"]
        argv += ["--listen", f"{node_ip}:{self.HTTP_PORT}"]
        pid = testbed.node_spawn(layout.server_node, prioritized(argv), "bench-waypoint")
        self.record_process(testbed, pid, "bench-waypoint")
        # Python and its imports start in seconds on a quiet machine, slower on a busy one.
        wait_listening(testbed, [self.HTTP_PORT], node=layout.server_node, timeout=60.0)
        self._wait_for_workers(testbed, layout.server_node, default_workers(), timeout=60.0)
        return PathTarget(
            layout.client, {"http": (node_ip, self.HTTP_PORT)}, http_host=WAYPOINT_SERVICE
        )

    def _wait_for_workers(self, testbed: Testbed, node: str, count: int, timeout: float) -> None:
        """Until every worker listens: SO_REUSEPORT gives a connection only to those that do,
        and the loads open theirs once, at the start."""
        deadline = time.monotonic() + timeout
        while True:
            argv = ["ss", "-Hltn", f"sport = :{self.HTTP_PORT}"]
            listening = testbed.node_exec(node, argv, check=False).stdout.splitlines()
            if len(listening) >= count:
                return
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"{len(listening)} of {count} waypoint workers listen on node {node} "
                    f"after {timeout:.0f} s",
                    hint="look at the waypoint's log in the lab's log directory",
                )
            time.sleep(0.1)


class WeftWaypointMeshPath(MeshPath):
    """The waypoint inside the mesh, deployed as the lab deploys its own (own SVID, fed by the
    controller): the client's connection to a Service VIP is captured, its agent tunnels it over
    HBONE to the waypoint on the server's node, which routes each request and tunnels it over
    HBONE to the server's agent, which hands it to the server. Its figures divided by
    weft-cross-node's (the same nodes, L4 only) are what the L7 hop adds inside the mesh."""

    name = "weft-waypoint-mesh"
    description = (
        "Weft L7 in the mesh: capture -> agent -> HBONE -> waypoint (server's node) -> HBONE -> "
        "agent -> server"
    )
    peer = "weft-cross-node"
    loads = frozenset({"http1", "http16"})
    component_modules = ("agent.main", "agent.cli")

    def __init__(self) -> None:
        super().__init__()
        self._waypoint: BenchWaypoint | None = None

    def availability(self) -> str | None:
        if not _module_exists("waypoint.cli"):
            return "waypoint not built yet (waypoint.cli missing)"
        return super().availability()

    def setup(self, testbed: Testbed, layout: BenchLayout, workdir: Path) -> PathTarget:
        mesh = acquire_mesh(testbed, layout, self.name)
        self._mesh = mesh
        meshed = mesh.layout
        for node in (meshed.client_node, meshed.server_node):
            self._processes[mesh.agent_pid(node)] = f"weft-agent-{node}"
        waypoint = self._waypoint = start_waypoint(mesh)
        self._processes[waypoint.pid] = "weft-waypoint"
        address = (L7_VIP, SERVICE_PORTS["http"])

        def probe() -> None:
            mesh.lab.exec(
                meshed.client,
                ["curl", "-sS", "-o", "/dev/null", "-m", "5", f"http://{address[0]}:{address[1]}/"],
                check=False,
            )

        # Through the waypoint (its request counter grows), and captured by the client's agent.
        verify_through_waypoint(mesh.lab, waypoint, probe, self.name)
        verify_through_mesh(mesh.lab, meshed.client_node, "source", probe, self.name)
        return PathTarget(meshed.client, {"http": address})

    def teardown(self) -> None:
        if self._waypoint is not None and self._mesh is not None:
            stop_waypoint(self._mesh.lab, self._waypoint)
            self._waypoint = None
        super().teardown()


PATH_TYPES: tuple[type[BenchPath], ...] = (
    DirectPath,
    DirectSameNodePath,
    WeftSameNodePath,
    WeftCrossNodePath,
    StunnelPath,
    WeftWaypointPath,
    WeftWaypointMeshPath,
    HaproxyPath,
)
PATH_NAMES: tuple[str, ...] = tuple(path_type.name for path_type in PATH_TYPES)


def make_path(name: str) -> BenchPath:
    for path_type in PATH_TYPES:
        if path_type.name == name:
            return path_type()
    raise KeyError(name)
