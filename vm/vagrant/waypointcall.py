"""An HTTP call through the Vagrant lab's waypoint: frontend on node1 -> reviews, served by
shop/waypoint on node2.

The demo's slice that the waypoint serves runs as guest workloads, laid out and registered as
the netns demo has them (vm/topology.yaml): reviews-v1 (node1) and reviews-v2 (node2), the
demo's reviews server, and frontend (an idle client with the frontend's identity, node1). A
request from frontend to the reviews VIP is captured by node1's agent, tunnelled (HBONE) to the
waypoint, routed by the demo's HTTPRoute (90/10 v1/v2) and authorized by its
AuthorizationPolicy (GET /reviews/* from the frontend only) there, and tunnelled on to the
chosen backend's agent. Proof that it went through the waypoint: the waypoint's
istio_requests_total (reporter="waypoint") grew and its journal has the request's access-log
line; that policy is applied there: a DELETE gets the waypoint's 403.
"""

from __future__ import annotations

import json
import secrets
import shlex
from dataclasses import dataclass
from typing import Any

from vm.lab.mesh import workload_document
from vm.vagrant import meshcall
from vm.vagrant.lab import guest
from vm.vagrant.meshcall import CALL_TIMEOUT, GUEST_PYTHON, agent_config, wait_until
from vm.vagrant.waypoint import LabWaypoint, admin_get, journal, lab_waypoints

NAMESPACE = "shop"
REVIEWS_VIP = "10.96.0.12"  # vm/provision/waypoint.yaml's reviews Service
REVIEWS_PORT = 8080
REQUEST_COUNTER = "istio_requests_total"


@dataclass(frozen=True)
class DemoWorkload:
    name: str
    node: str
    ip: str
    service_account: str
    labels: dict[str, str]
    command: tuple[str, ...]
    ports: tuple[int, ...] = ()

    def document(self) -> dict[str, object]:
        return workload_document(
            self.name, NAMESPACE, self.labels, address=self.ip, node=self.node,
            service_account=self.service_account, ports=self.ports, port_prefix="http",
        )  # fmt: skip


def _reviews(version: str, node: str, ip: str) -> DemoWorkload:
    command = (GUEST_PYTHON, "-m", "demo.reviews", "--port", str(REVIEWS_PORT))
    labels = {"app": "reviews", "version": version}
    return DemoWorkload(
        f"reviews-{version}", node, ip, "reviews", labels,
        (*command, "--version", version), (REVIEWS_PORT,),
    )  # fmt: skip


FRONTEND = DemoWorkload(
    "frontend", "node1", "10.88.1.20", "frontend", {"app": "frontend", "version": "v1"},
    ("sleep", "infinity"),
)  # fmt: skip
BACKENDS = (_reviews("v1", "node1", "10.88.1.21"), _reviews("v2", "node2", "10.88.2.22"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class WaypointCallResult:
    waypoint: LabWaypoint
    path: str
    reply: Reply
    denied: Reply
    requests_before: float
    requests_after: float
    access_log: dict[str, Any]  # the waypoint's access-log line for the GET, from its journal


def start(control: str = "control") -> None:
    """Start the workloads and register them; returns at once (the servers start meanwhile)."""
    for w in (FRONTEND, *BACKENDS):
        meshcall.start_process(w.node, w.name, w.ip, w.command)
    meshcall.apply(control, [w.document() for w in (FRONTEND, *BACKENDS)], "waypoint-demo")


def request(method: str, path: str) -> Reply:
    """`curl` from the frontend workload to the reviews VIP (captured there by the agent)."""
    url = shlex.quote(f"http://{REVIEWS_VIP}:{REVIEWS_PORT}{path}")
    result = guest(
        FRONTEND.node,
        f"weft-workload exec {FRONTEND.name} -- curl -sS -m 20 -i -X {method} {url}",
        check=False,
        timeout=60,
    )
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = lines[0].split()[1] if lines and len(lines[0].split()) > 1 else ""
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    return Reply(int(status) if status.isdigit() else 0, headers, body or result.stderr[-500:])


def requests_total(wp: LabWaypoint) -> float:
    """The waypoint's istio_requests_total (reporter="waypoint") for the reviews service."""
    status, text = admin_get(wp, "/metrics")
    total = 0.0
    for line in text.splitlines() if status == 200 else ():
        labelled = 'reporter="waypoint"' in line and 'destination_service_name="reviews"' in line
        if line.startswith(REQUEST_COUNTER + "{") and labelled:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _frontend_ready() -> tuple[bool, str]:
    dump: dict[str, Any] = agent_config(FRONTEND.node)
    mine = [w for w in dump.get("local_workloads", []) if w.get("address") == FRONTEND.ip]
    service = [s for s in dump.get("services", []) if s.get("vip") == REVIEWS_VIP]
    return bool(mine and mine[0].get("in_mesh") and service), f"config {dump}"


def call_through_waypoint() -> WaypointCallResult:
    """GET /reviews/<random id> from frontend until answered (enrolment settles), then a
    DELETE; the waypoint's counter and journal read before and after."""
    (wp,) = [w for w in lab_waypoints() if w.namespace == NAMESPACE]
    wait_until(f"the agent on {FRONTEND.node} to know {REVIEWS_VIP}", _frontend_ready, CALL_TIMEOUT)
    before = requests_total(wp)
    product = secrets.randbelow(900_000_000) + 100_000_000
    path = f"/reviews/{product}"
    reply = Reply(0, {}, "")

    def answered() -> tuple[bool, str]:
        nonlocal reply
        reply = request("GET", path)
        return reply.status == 200, f"{reply.status} {reply.headers} {reply.body[:300]!r}"

    wait_until(f"GET {path} from {FRONTEND.node}/frontend through {wp.reference}", answered,
               CALL_TIMEOUT, interval=5)  # fmt: skip
    denied = request("DELETE", path)
    after = requests_total(wp)
    line: dict[str, Any] = {}

    def logged() -> tuple[bool, str]:
        # The access log goes out in batches (every half second) to stdout: the journal.
        nonlocal line
        text = journal(wp, 200)
        for entry in text.splitlines():
            start = entry.find("{")
            if start >= 0 and f'"path":"{path}"' in entry and '"method":"GET"' in entry:
                line = json.loads(entry[start:])
                return True, ""
        return False, text[-1000:]

    wait_until(f"{wp.unit}'s journal to log GET {path}", logged, 20, interval=1)
    return WaypointCallResult(wp, path, reply, denied, before, after, line)
