"""Waypoints in the lab: each one a workload of its own, fed and identified by the controller.

A waypoint runs as a lab workload (its own netns, IP and cgroup in the namespace it serves,
ServiceAccount `waypoint`) labelled `weft.io/dataplane-mode: none`, as Istio's waypoint pods
are: the node agent neither captures its connections nor answers 15008 for its address, so
tunnels to the waypoint reach the waypoint itself, and its own tunnels to endpoints go out as
they are. It is registered as a Waypoint resource (not a Workload: the two may not share an
address) and gets its SVID by redeeming a one-time waypoint token at the controller, which it
then renews with that SVID and keeps in its state dir (a restart needs no new token); its
configuration comes from the controller's Watch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vm.lab.lab import Lab
from vm.lab.state import WorkloadInfo
from weft.errors import UnavailableError, UsageError

WAYPOINT_ADMIN_PORT = 15020
WAYPOINT_HBONE_PORT = 15008
READY_TIMEOUT = 60.0
REQUEST_HEADERS_TIMEOUT_S = 5.0  # lab clients are local: a head taking longer is an attack
DEMO_WAYPOINT_RESOURCES = Path(__file__).resolve().parents[2] / "demo" / "waypoint.yaml"


@dataclass(frozen=True)
class WaypointDeployment:
    """One waypoint: its resource name and namespace, the lab workload running it, the node
    it runs on, and the services of its namespace that use it."""

    name: str
    namespace: str
    node: str
    workload: str
    services: tuple[str, ...]
    service_account: str = "waypoint"

    @property
    def reference(self) -> str:
        return f"{self.namespace}/{self.name}"


# The demo's: reviews (HTTP canary, L7 authz) and ratings (gRPC), each served by a waypoint on
# the node that does not run it... mostly: reviews v2 shares node2 with shop's waypoint, so
# both the same-node and the cross-node tunnel out of a waypoint are exercised.
DEMO_WAYPOINTS = (
    WaypointDeployment("waypoint", "shop", "node2", "shop-wp", ("reviews",)),
    WaypointDeployment("waypoint", "ratings", "node1", "ratings-wp", ("ratings",)),
)


def ensure_workloads(lab: Lab, waypoints: Sequence[WaypointDeployment]) -> dict[str, WorkloadInfo]:
    """The lab workload of each waypoint, added to the running lab unless it is there."""
    existing = {w.name: w for w in lab.workloads()}
    placed: dict[str, WorkloadInfo] = {}
    for wp in waypoints:
        info = existing.get(wp.workload)
        if info is None:
            info = lab.add_workload(
                wp.workload, wp.node, wp.namespace, wp.service_account,
                {"app": wp.workload, "weft.io/dataplane-mode": "none",
                 "gateway.networking.k8s.io/gateway-name": wp.name},
            )  # fmt: skip
        elif (info.node, info.namespace) != (wp.node, wp.namespace):
            raise UsageError(
                f"lab workload {wp.workload} runs on {info.node} in {info.namespace}, "
                f"not on {wp.node} in {wp.namespace} as waypoint {wp.reference} needs"
            )
        placed[wp.reference] = info
    return placed


def waypoint_documents(
    waypoints: Sequence[WaypointDeployment], placed: dict[str, WorkloadInfo]
) -> list[dict[str, Any]]:
    """The Waypoint resources, at the addresses their workloads got."""
    return [
        {
            "apiVersion": "weft.io/v1",
            "kind": "Waypoint",
            "metadata": {"name": wp.name, "namespace": wp.namespace},
            "spec": {
                "address": placed[wp.reference].ip,
                "node": wp.node,
                "serviceAccount": wp.service_account,
                "port": WAYPOINT_HBONE_PORT,
            },
        }
        for wp in waypoints
    ]


def waypoint_argv(
    python_weft: Sequence[str], wp: WaypointDeployment, controller: str, directory: Path
) -> list[str]:
    return [
        *python_weft, "waypoint", "run", "--name", wp.name, "--namespace", wp.namespace,
        "--service-account", wp.service_account, "--controller", controller,
        "--join-token", str(token_file(directory, wp)),
        "--state-dir", str(directory / "waypoints" / f"{wp.namespace}-{wp.name}"),
        "--trust-bundle", str(directory / "controller" / "trust-bundle.pem"),
        "--hbone", f"0.0.0.0:{WAYPOINT_HBONE_PORT}", "--listen", "off",
        "--admin", f"0.0.0.0:{WAYPOINT_ADMIN_PORT}",
        "--request-headers-timeout", str(REQUEST_HEADERS_TIMEOUT_S),
    ]  # fmt: skip


def token_file(directory: Path, wp: WaypointDeployment) -> Path:
    return directory / f"waypoint-{wp.namespace}-{wp.name}.token"


def write_token(directory: Path, wp: WaypointDeployment, token_json: str) -> None:
    path = token_file(directory, wp)
    path.write_text(json.loads(token_json)["token"] + "\n")
    path.chmod(0o600)


def waypoint_http(lab: Lab, workload: str, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:15020<path> inside the waypoint's workload."""
    result = lab.exec(
        workload,
        ["curl", "-sS", "-m", "5", "-w", "\n%{http_code}",
         f"http://127.0.0.1:{WAYPOINT_ADMIN_PORT}{path}"],
        check=False, timeout=10,
    )  # fmt: skip
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def wait_ready(lab: Lab, wp: WaypointDeployment, pid: int, timeout: float = READY_TIMEOUT) -> None:
    """Until the waypoint listens and has applied a configuration from the controller."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if waypoint_http(lab, wp.workload, "/healthz/ready")[0] == 200:
            return
        if not Path(f"/proc/{pid}").exists():
            raise UnavailableError(
                f"waypoint {wp.reference} exited before it was ready",
                hint=f"see 'weft lab logs waypoint-{wp.namespace}-{wp.name}'",
            )
        time.sleep(0.2)
    raise UnavailableError(
        f"timed out after {timeout:g} s waiting for waypoint {wp.reference} to be ready",
        hint=f"see 'weft lab logs waypoint-{wp.namespace}-{wp.name}'",
    )
