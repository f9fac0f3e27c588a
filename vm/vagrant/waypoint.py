"""The Vagrant lab's waypoints: where they run (vm/provision/waypoint.yaml), ready or failing.

Each Waypoint document there becomes the unit `weft-waypoint@<namespace>-<name>` on its worker
VM (vm/Vagrantfile's waypoint trigger), running in netns `wl-<namespace>-<name>` at the
Waypoint's address, with its admin endpoint (metrics, /healthz/ready) on 15020 in that netns.
`weft lab up --vagrant` waits for each to be ready as a named step: one that does not start
fails `up` naming the unit and its journal, whose last lines go into the lab's log.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from vm.vagrant.lab import guest, log_file
from vm.vagrant.steps import StepError

WAYPOINTS_FILE = Path(__file__).resolve().parents[1] / "provision" / "waypoint.yaml"
ADMIN_PORT = 15020
READY_TIMEOUT = 600.0  # emulated guests, the agent compiling its eBPF beside it
RESTARTS_BEFORE_FAILING = 3
JOURNAL_LINES = 40


@dataclass(frozen=True)
class LabWaypoint:
    name: str
    namespace: str
    node: str
    address: str

    @property
    def reference(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def instance(self) -> str:
        return f"{self.namespace}-{self.name}"

    @property
    def unit(self) -> str:
        return f"weft-waypoint@{self.instance}.service"

    @property
    def netns(self) -> str:
        return f"wl-{self.instance}"


def lab_waypoints(path: Path = WAYPOINTS_FILE) -> list[LabWaypoint]:
    """The Waypoint documents of `path` (the Vagrantfile checked them before the VMs came up)."""
    documents = yaml.safe_load_all(path.read_text())
    waypoints = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Waypoint"]
    return [
        LabWaypoint(
            d["metadata"]["name"],
            d["metadata"]["namespace"],
            d["spec"]["node"],
            d["spec"]["address"],
        )
        for d in waypoints
    ]


def admin_get(wp: LabWaypoint, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:15020<path> inside the waypoint's netns."""
    url = shlex.quote(f"http://127.0.0.1:{ADMIN_PORT}{path}")
    result = guest(
        wp.node,
        f"nsenter --net=/run/netns/{wp.netns} curl -sS -m 5 -w '\\n%{{http_code}}' {url}",
        check=False,
    )
    body, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def journal(wp: LabWaypoint, lines: int = JOURNAL_LINES) -> str:
    return guest(wp.node, f"journalctl -u {wp.unit} --no-pager -n {lines}", check=False).stdout


def _unit_state(wp: LabWaypoint) -> tuple[str, int]:
    """(ActiveState, NRestarts) of the waypoint's unit."""
    shown = guest(
        wp.node, f"systemctl show -p ActiveState -p NRestarts {wp.unit}", check=False
    ).stdout
    fields = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    restarts = fields.get("NRestarts", "0")
    return fields.get("ActiveState", "unknown"), int(restarts) if restarts.isdigit() else 0


def _fail(wp: LabWaypoint, why: str) -> StepError:
    log = log_file()
    with log.open("a") as out:
        out.write(f"\n### journalctl -u {wp.unit} on {wp.node}\n{journal(wp)}\n")
    return StepError(
        f"waypoint {wp.reference} on {wp.node}",
        log,
        f"{why}; its journal: `journalctl -u {wp.unit}` on {wp.node} (last lines in the log)",
    )


def wait_ready(
    progress: Callable[[str], None], timeout: float = READY_TIMEOUT, interval: float = 3.0
) -> None:
    """Until every lab waypoint answers /healthz/ready (it has its SVID and a configuration)."""
    for wp in lab_waypoints():
        progress(f"waiting for waypoint {wp.reference} ({wp.unit} on {wp.node})")
        deadline = time.monotonic() + timeout
        while True:
            if admin_get(wp, "/healthz/ready")[0] == 200:
                break
            state, restarts = _unit_state(wp)
            if state == "failed" or restarts >= RESTARTS_BEFORE_FAILING:
                raise _fail(wp, f"the unit is {state} after {restarts} restarts")
            if time.monotonic() > deadline:
                raise _fail(wp, f"not ready within {timeout:.0f} s (unit {state})")
            time.sleep(interval)
