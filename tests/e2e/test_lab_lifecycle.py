"""Lab lifecycle: repeated up/down leaves nothing; a killed `up` is cleaned by `down` and by `up`.

These tests tear labs down, so they are marked `lab_lifecycle` and run after every other test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.lab_checks import weft
from vm.lab.cleanup import BPF_PINS, find_leftovers
from vm.lab.lab import Lab
from vm.lab.probes import connect_probe_argv, listener_argv
from vm.lab.processes import ProcessFailedError
from vm.lab.state import DEFAULT_STATE_DIR, pid_alive
from vm.lab.topology import load_topology, parse_topology

pytestmark = [pytest.mark.lab_lifecycle, pytest.mark.usefixtures("lab_lock")]

STATE_FILE = DEFAULT_STATE_DIR / "state.json"
LOG_DIR = DEFAULT_STATE_DIR / "logs"


def recorded_pids() -> list[int]:
    try:
        return [p["pid"] for p in json.loads(STATE_FILE.read_text())["processes"]]
    except (OSError, ValueError, KeyError):
        return []


def lab_cgroup_pids() -> list[int]:
    """Processes anywhere on the machine that still sit in a lab cgroup."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cgroup = Path(f"/proc/{entry}/cgroup").read_text()
            except OSError:
                continue
            if "0::/weft/" in cgroup and pid_alive(int(entry)):
                pids.append(int(entry))
    return pids


def nothing_left(pids: list[int]) -> dict[str, object]:
    left = find_leftovers()
    alive = [p for p in pids if pid_alive(p)] + lab_cgroup_pids()
    if alive:
        left["processes"] = alive
    return left


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def kill_up_midway() -> list[int]:
    """Start `weft lab up --demo --replace`, SIGKILL it once the demo is starting; pids seen."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)  # logs outlive `down`; start from none
    up = subprocess.Popen(
        [sys.executable, "-m", "weft.cli", "lab", "up", "--demo", "--replace"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = wait_for(lambda: LOG_DIR.exists() and any(LOG_DIR.iterdir()), 30)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait(10)
    assert started, "weft lab up never got as far as starting the demo"
    time.sleep(0.2)  # let the spawned processes get going: they must be found and killed
    return recorded_pids()


def plant_leaks() -> None:
    """The other kinds of leftovers cleanup must find with no state file: pins, links, tables."""
    (BPF_PINS / "leaked-by-test").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ip", "link", "add", "weftleak0", "type", "veth", "peer", "name", "weftleak1"],
        check=True,
    )
    subprocess.run(["nft", "add", "table", "inet", "weft"], check=True)


def test_three_up_down_cycles_leave_nothing_behind():
    for cycle in range(3):
        up = weft("lab", "up", "--demo", "--replace")
        assert up.returncode == 0, up.stderr
        pids = recorded_pids()
        assert len(pids) >= 6
        down = weft("lab", "down")
        assert down.returncode == 0, down.stderr
        assert nothing_left(pids) == {}, f"cycle {cycle + 1}"
    assert weft("lab", "down").returncode == 0  # idempotent on an empty machine
    assert weft("lab", "status").returncode == 4


def test_killed_up_is_cleaned_by_down():
    pids = kill_up_midway()
    plant_leaks()
    status = weft("lab", "status", "-o", "json")
    assert json.loads(status.stdout)["state"] == "building"
    down = weft("lab", "down")
    assert down.returncode == 0, down.stderr
    assert "removed" in down.stdout
    assert nothing_left(pids) == {}


def test_killed_up_is_cleaned_by_the_next_up_without_replace():
    pids = kill_up_midway()
    plant_leaks()
    STATE_FILE.unlink()  # even with no record at all, leftovers are found by name
    up = weft("lab", "up", "--demo")
    assert up.returncode == 0, up.stderr
    assert "cleaned up first" in up.stderr
    assert all(not pid_alive(p) for p in pids)
    assert find_leftovers().keys() <= {"netns", "cgroups"}  # the new lab's own
    assert "root links" not in find_leftovers()
    assert weft("lab", "down").returncode == 0
    assert nothing_left(pids) == {}


def test_workload_whose_process_dies_is_reported_with_the_end_of_its_log(
    lab_factory: Callable[..., Lab],
):
    doc = load_topology().to_document()
    frontend = next(w for w in doc["demo"]["workloads"] if w["name"] == "frontend")
    frontend["command"] = [
        "{python}",
        "-c",
        "print('frontend: cannot read its configuration'); raise SystemExit(3)",
    ]
    topology = parse_topology(doc, "test topology")
    started = time.monotonic()
    with pytest.raises(ProcessFailedError) as caught:
        lab_factory(topology)
    assert time.monotonic() - started < 20  # reported, not waited out
    message = str(caught.value)
    assert "frontend" in message
    assert "cannot read its configuration" in message
    status = weft("lab", "status", "-o", "json")
    processes = json.loads(status.stdout)["processes"]
    assert not next(p for p in processes if p["name"] == "frontend")["alive"]


def test_four_workers_route_to_each_other(lab_factory: Callable[..., Lab]):
    lab = lab_factory(nodes=4, demo=False)
    assert [n.name for n in lab.topology.workers] == ["node1", "node2", "node3", "node4"]
    for i in range(1, 5):
        lab.add_workload(f"probe{i}", f"node{i}", "bench")
    listener = lab.spawn("probe4", listener_argv(5000), "listener")
    assert listener
    targets = [(lab.workload_ip("probe4"), 5000)]
    deadline = time.monotonic() + 10
    while True:
        out = json.loads(lab.exec("probe1", connect_probe_argv(targets)).stdout)
        if out == [] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out == []
    route = lab.node_exec("node1", ["ip", "route", "get", lab.workload_ip("probe4")]).stdout
    assert f"via {lab.node_ip('node4')}" in route
