"""The lab with the demo shop: reachability by IP and VIP, netns and cgroup placement, the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from itertools import combinations

import pytest

from tests.e2e.lab_checks import weft
from vm.lab.lab import Lab
from vm.lab.probes import connect_probe_argv, listener_argv
from vm.lab.state import WorkloadInfo

IDLE_PORT = 5000


def demo_workloads(lab: Lab) -> list[WorkloadInfo]:
    """The topology's demo workloads (other tests may add workloads of their own)."""
    return [w for w in lab.workloads() if w.demo]


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


@pytest.fixture(scope="module")
def listening(lab: Lab) -> dict[str, int]:
    """Every demo workload listening on a port: servers on theirs, idle ones on IDLE_PORT."""
    ports = {}
    spawned = []
    for w in demo_workloads(lab):
        if w.ports:
            ports[w.name] = w.ports[0]
        else:
            spawned.append(lab.spawn(w.name, listener_argv(IDLE_PORT), f"{w.name}-listener"))
            ports[w.name] = IDLE_PORT
    for w in demo_workloads(lab):  # wait until the idle listeners are up (bounded)
        if ports[w.name] == IDLE_PORT:
            lab.exec(
                w.name,
                [
                    "sh",
                    "-c",
                    f"for i in $(seq 50); do ss -Hltn | grep -q :{IDLE_PORT} && exit 0; "
                    "sleep 0.1; done; exit 1",
                ],
            )
    yield ports
    for pid in spawned:
        lab.stop(pid)


def test_every_workload_reaches_every_other_by_ip_on_the_same_and_other_nodes(
    lab: Lab, listening: dict[str, int]
):
    workloads = demo_workloads(lab)
    pairs = list(combinations(workloads, 2))
    assert any(a.node == b.node for a, b in pairs)
    assert any(a.node != b.node for a, b in pairs)
    failures = {}
    for source in workloads:
        targets = [(w.ip, listening[w.name]) for w in workloads if w.name != source.name]
        out = lab.exec(source.name, connect_probe_argv(targets))
        failed = json.loads(out.stdout)
        if failed:
            failures[source.name] = failed
    assert failures == {}


def test_service_vip_spreads_connections_over_every_endpoint(lab: Lab):
    # reviews has v1 on node1 and v2 on node2; missing one in 40 tries has odds 2**-39.
    versions = Counter()
    for _ in range(40):
        out = lab.exec("loadgen", ["curl", "-sS", "-m", "3", "http://10.96.0.12:8080/reviews/1"])
        versions[json.loads(out.stdout)["version"]] += 1
    assert set(versions) == {"v1", "v2"}


def test_vip_reaches_an_endpoint_on_another_node(lab: Lab):
    assert lab.workload("loadgen").node != lab.workload("catalog").node
    out = lab.exec("loadgen", ["curl", "-sS", "-m", "3", "http://10.96.0.11:8080/products"])
    assert "price_cents" in out.stdout


def test_workload_reaches_itself_through_its_own_vip(lab: Lab):
    # The hairpin case: the DNAT picks the caller itself; without masquerade it would hang.
    probe = connect_probe_argv([("10.96.0.21", 7000)])
    assert json.loads(lab.exec("echo", probe).stdout) == []


def test_demo_processes_run_in_their_workload_netns_and_cgroup(lab: Lab):
    demo = {w.name for w in demo_workloads(lab)}
    processes = [p for p in lab.processes() if p.workload in demo and p.name == p.workload]
    assert {p.workload for p in processes} >= {"frontend", "catalog", "ratings", "echo"}
    for p in processes:
        w = lab.workload(p.workload or "")
        with open(f"/proc/{p.pid}/cgroup") as handle:
            unified = next(line for line in handle if line.startswith("0::"))
        assert unified.strip() == f"0::/weft/{w.node}/workloads/{w.name}"
        assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == netns_inode(w.netns)


def test_exec_joins_the_workload_cgroup_and_sees_only_the_workload_address(lab: Lab):
    out = lab.exec("frontend", ["sh", "-c", "cat /proc/self/cgroup; ip -o -4 addr show"])
    assert "0::/weft/node1/workloads/frontend" in out.stdout
    addresses = re.findall(r"inet (\S+)", out.stdout)
    assert sorted(addresses) == sorted(["127.0.0.1/8", f"{lab.workload_ip('frontend')}/32"])


def test_exec_raises_with_the_output_when_check_is_set(lab: Lab):
    with pytest.raises(subprocess.CalledProcessError, match="no such place"):
        lab.exec("loadgen", ["sh", "-c", "echo no such place >&2; exit 4"])
    assert lab.exec("loadgen", ["sh", "-c", "exit 4"], check=False).returncode == 4


def test_node_processes_run_in_the_node_cgroup_outside_workloads(lab: Lab):
    out = lab.node_exec("node2", ["sh", "-c", "cat /proc/self/cgroup; ip -o -4 addr show eth0"])
    assert "0::/weft/node2\n" in out.stdout
    assert lab.node_ip("node2") in out.stdout
    assert lab.cgroup_path("node2") == lab.cgroup_path("node2", "catalog").split("/workloads/")[0]


def test_node_spawn_is_recorded_and_stopped(lab: Lab):
    pid = lab.node_spawn("node1", ["sleep", "30"], "sleeper")
    with open(f"/proc/{pid}/cgroup") as handle:
        assert "0::/weft/node1\n" in handle.read()
    assert any(p.pid == pid for p in lab.processes())
    assert lab.stop(pid)
    assert all(p.pid != pid for p in lab.processes())


def test_added_workload_gets_the_next_ip_and_reaches_services(lab: Lab):
    used = {w.ip for w in lab.workloads() if w.node == "node2"}
    info = lab.add_workload("e2e-extra", "node2", "shop", labels={"app": "extra"})
    assert info.ip not in used
    assert info.ip.startswith("10.88.2.")
    out = lab.exec("e2e-extra", ["curl", "-sS", "-m", "3", "http://10.96.0.11:8080/products"])
    assert "price_cents" in out.stdout


def test_weft_lab_exec_returns_the_commands_exit_code(lab: Lab):
    assert weft("lab", "exec", "loadgen", "--", "sh", "-c", "exit 7").returncode == 7
    result = weft("lab", "exec", "loadgen", "--", "cat", "/proc/self/cgroup")
    assert result.returncode == 0
    assert "/weft/node1/workloads/loadgen" in result.stdout


def test_weft_lab_exec_names_the_known_workloads_when_the_name_is_wrong(lab: Lab):
    result = weft("lab", "exec", "nosuch", "--", "true")
    assert result.returncode == 2
    assert "frontend" in result.stderr


def test_weft_lab_status_json_lists_every_workload_with_its_process_alive(lab: Lab):
    result = weft("lab", "status", "-o", "json")
    assert result.returncode == 0
    status = json.loads(result.stdout)
    assert status["state"] == "up"
    assert {w["name"] for w in status["workloads"]} >= {w.name for w in lab.workloads()}
    assert all(w["netnsPresent"] for w in status["workloads"])
    names = {w.name for w in demo_workloads(lab)}
    demo = [p for p in status["processes"] if p["workload"] in names and p["name"] in names]
    assert demo
    assert all(p["alive"] for p in demo)


def test_weft_lab_logs_shows_the_end_of_a_demo_process_log(lab: Lab):
    result = weft("lab", "logs", "catalog", "-n", "5")
    assert result.returncode == 0
    assert "demo.catalog" in result.stdout or "8080" in result.stdout
    assert "running" in result.stdout.splitlines()[0]


def test_weft_lab_traffic_succeeds_through_the_service_vips(lab: Lab):
    result = weft("lab", "traffic", "--requests", "40", "--duration-limit", "30", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_second_up_says_the_lab_is_running(lab: Lab):
    result = weft("lab", "up", "--demo")
    assert result.returncode == 5
    assert "already running" in result.stderr
    assert "--replace" in result.stderr


def test_non_root_is_told_to_use_sudo(lab: Lab):
    for command in (["up"], ["down"], ["status"], ["exec", "loadgen", "--", "true"]):
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "weft.cli",
                "lab",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 3, (command, result.stderr)
        assert "needs root" in result.stderr
        assert "sudo" in result.stderr
    assert lab.status()["state"] == "up"  # and nothing was touched
