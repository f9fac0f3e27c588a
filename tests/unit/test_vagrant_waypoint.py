"""The Vagrant lab's waypoint without VMs: its resources, where it runs, and how `up` fails on it.

The VMs themselves are in tests/e2e/test_vagrant_lab.py; here a stand-in for the guest's ssh
answers (named as such) lets the readiness step be driven to each of its outcomes.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vm.vagrant import lab, waypoint
from vm.vagrant.steps import StepError
from weft.resources.documents import parse_documents, read_documents

REPO = Path(__file__).resolve().parents[2]
WORKLOAD_SH = REPO / "vm" / "provision" / "workload.sh"


def test_the_lab_waypoint_runs_on_a_worker_at_an_address_of_its_pod_cidr() -> None:
    (wp,) = waypoint.lab_waypoints()
    assert (wp.reference, wp.unit, wp.netns) == (
        "shop/waypoint",
        "weft-waypoint@shop-waypoint.service",
        "wl-shop-waypoint",
    )
    nodes = {n["name"]: n for n in yaml.safe_load((REPO / "vm/topology.yaml").read_text())["nodes"]}
    node = nodes[wp.node]
    assert node["role"] == "worker"
    assert ipaddress.ip_address(wp.address) in ipaddress.ip_network(node["podCIDR"])


def test_the_waypoint_resources_and_the_demos_l7_ones_validate_together() -> None:
    """What the Vagrantfile's trigger applies in one `weft apply` (valid, no name clashes)."""
    files = [str(waypoint.WAYPOINTS_FILE), str(REPO / "demo" / "waypoint.yaml")]
    parsed = {
        (p.key.kind.value, p.key.namespace, p.key.name): p.document
        for p in parse_documents(read_documents(files))
    }
    assert ("Waypoint", "shop", "waypoint") in parsed
    assert ("HTTPRoute", "shop", "reviews") in parsed
    assert ("AuthorizationPolicy", "shop", "reviews-readers") in parsed
    reviews = parsed[("Service", "shop", "reviews")]
    assert reviews["metadata"]["labels"]["weft.io/use-waypoint"] == "waypoint"


class GuestStandIn:
    """Stands in for `lab.guest` (ssh into a VM, which unit tests cannot boot): answers the
    readiness probe, `systemctl show` and `journalctl` as a guest would."""

    def __init__(self, ready: bool, state: str, restarts: int) -> None:
        self.ready, self.state, self.restarts = ready, state, restarts
        self.commands: list[tuple[str, str]] = []

    def __call__(
        self, node: str, command: str, *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.commands.append((node, command))
        if "healthz/ready" in command:
            out = "ready\n200" if self.ready else "\n000"
        elif command.startswith("systemctl show"):
            out = f"ActiveState={self.state}\nNRestarts={self.restarts}\n"
        elif command.startswith("journalctl"):
            out = "waypoint: error: no valid SVID saved and the join token was refused\n"
        else:
            raise AssertionError(f"unexpected guest command {command!r}")
        return subprocess.CompletedProcess([command], 0, out, "")


@pytest.fixture
def lab_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(lab.libvirt, "RUN_DIR", tmp_path)
    lab.log_file().write_text("weft lab up --vagrant\n")
    return lab.log_file()


def _wait(monkeypatch: pytest.MonkeyPatch, guest: GuestStandIn, timeout: float = 5) -> None:
    monkeypatch.setattr(waypoint, "guest", guest)
    seen: list[str] = []
    progress: Callable[[str], None] = seen.append
    waypoint.wait_ready(progress, timeout=timeout, interval=0.01)
    assert seen == [
        "waiting for waypoint shop/waypoint (weft-waypoint@shop-waypoint.service on node2)"
    ]


def test_a_ready_waypoint_passes_the_step(monkeypatch: pytest.MonkeyPatch, lab_log: Path) -> None:
    guest = GuestStandIn(ready=True, state="active", restarts=0)
    _wait(monkeypatch, guest)
    ((node, probe),) = guest.commands
    assert node == "node2"
    assert probe.startswith("nsenter --net=/run/netns/wl-shop-waypoint curl ")


@pytest.mark.parametrize(
    ("state", "restarts", "why"),
    [
        ("activating", 3, "the unit is activating after 3 restarts"),
        ("failed", 0, "the unit is failed after 0 restarts"),
        ("activating", 0, "not ready within 0 s (unit activating)"),
    ],
    ids=["restarting", "failed", "too-slow"],
)
def test_a_waypoint_that_does_not_start_fails_up_naming_the_step_unit_and_journal(
    monkeypatch: pytest.MonkeyPatch, lab_log: Path, state: str, restarts: int, why: str
) -> None:
    with pytest.raises(StepError) as failure:
        _wait(monkeypatch, GuestStandIn(ready=False, state=state, restarts=restarts), timeout=0)
    error = failure.value
    assert error.step == "waypoint shop/waypoint on node2"
    assert why in error.message
    assert "journalctl -u weft-waypoint@shop-waypoint.service` on node2" in error.message
    assert error.log == lab_log
    assert str(lab_log) in str(error)
    logged = lab_log.read_text()
    assert "### journalctl -u weft-waypoint@shop-waypoint.service on node2" in logged
    assert "the join token was refused" in logged


def test_workload_run_refuses_a_bad_address_before_touching_anything() -> None:
    result = subprocess.run(
        ["bash", str(WORKLOAD_SH), "run", "wp-unit-test", "10.88.2.x", "--", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "'10.88.2.x' is not an IPv4 address" in result.stderr
    assert not Path("/run/netns/wl-wp-unit-test").exists()
