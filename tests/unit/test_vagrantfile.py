"""The Vagrant lab (vm/Vagrantfile, vm/provision/) defines exactly the nodes of vm/topology.yaml.

Vagrant itself is asked (`vagrant validate`, `vagrant status`, and its Ruby API through
vm/provision/describe-machines.rb): none of that needs a box, libvirtd or a network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VM_DIR = REPO / "vm"
PROVISION = VM_DIR / "provision"
TOPOLOGY = VM_DIR / "topology.yaml"
CI_SETTINGS = {
    "WEFT_VAGRANT_DRIVER": "qemu",
    "WEFT_VAGRANT_CPU_MODE": "maximum",
    "WEFT_VAGRANT_BOX": "weft/debian12-local",
}
VAGRANT_TIMEOUT_S = 60


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed: run scripts/setup.sh (it installs vagrant)"
        if os.environ.get("WEFT_REQUIRE_KERNEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def vagrant_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private VAGRANT_HOME so the tests neither read nor write the user's ~/.vagrant.d."""
    return tmp_path_factory.mktemp("vagrant-home")


def _vagrant_env(
    tmp_path: Path, vagrant_home: Path, settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_VAGRANT_")}
    env.update(
        VAGRANT_HOME=str(vagrant_home),
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"),
        # Checkpoint phones home to HashiCorp; tests talk to nobody.
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_NO_COLOR="1",
        WEFT_VAGRANT_SHIP_DIR=str(tmp_path / "ship"),
    )
    env.update(settings or {})
    return env


def run_vagrant(
    args: list[str], vm_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_require("vagrant"), *args],
        cwd=vm_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=VAGRANT_TIMEOUT_S,
        check=False,
    )


def describe_machines(vm_dir: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    _require("vagrant")
    result = subprocess.run(
        [_require("ruby"), str(PROVISION / "describe-machines.rb"), str(vm_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=VAGRANT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    machines: list[dict[str, Any]] = json.loads(result.stdout)
    return machines


def topology_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = yaml.safe_load(TOPOLOGY.read_text())["nodes"]
    return nodes


def machine_readable(stdout: str, kind: str) -> dict[str, str]:
    """`vagrant --machine-readable` lines are timestamp,target,type,data...: target -> data."""
    rows = (line.split(",", 3) for line in stdout.splitlines())
    return {row[1]: row[3] for row in rows if len(row) == 4 and row[2] == kind}


def lab_copy(tmp_path: Path, topology_text: str) -> Path:
    """The Vagrantfile and provision/ in a scratch vm/ directory with the given topology."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    shutil.copy(VM_DIR / "Vagrantfile", vm_dir)
    shutil.copytree(PROVISION, vm_dir / "provision")
    (vm_dir / "topology.yaml").write_text(topology_text)
    return vm_dir


@pytest.mark.parametrize("settings", [{}, CI_SETTINGS], ids=["user-defaults", "ci-settings"])
def test_vagrant_validate_accepts_the_lab(
    tmp_path: Path, vagrant_home: Path, settings: dict[str, str]
) -> None:
    result = run_vagrant(["validate"], VM_DIR, _vagrant_env(tmp_path, vagrant_home, settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrant_status_lists_exactly_the_topology_nodes(
    tmp_path: Path, vagrant_home: Path
) -> None:
    result = run_vagrant(
        ["status", "--machine-readable"], VM_DIR, _vagrant_env(tmp_path, vagrant_home)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    providers = machine_readable(result.stdout, "provider-name")
    assert set(providers) == {node["name"] for node in topology_nodes()}
    assert set(providers.values()) == {"libvirt"}
    # Nothing was created: status answered from the Vagrantfile alone.
    assert set(machine_readable(result.stdout, "state").values()) == {"not_created"}


def test_each_vm_has_its_topology_name_and_fabric_ip(tmp_path: Path, vagrant_home: Path) -> None:
    machines = {
        m["name"]: m for m in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home))
    }
    for node in topology_nodes():
        machine = machines[node["name"]]
        # node.sh names the VM and addresses eth1 itself (auto_config is off: faster).
        (weft,) = [p for p in machine["provisioners"] if p["name"] == "weft"]
        args = dict(zip(weft["args"][::2], weft["args"][1::2], strict=False))
        assert (args["--node"], args["--address"], args["--prefix"]) == (
            node["name"],
            node["ip"],
            "24",
        )
        assert [net["ip"] for net in machine["private_networks"]] == [node["ip"]]
        assert machine["private_networks"][0]["libvirt__network_name"] == "weft-fabric"


def test_settings_come_from_the_environment(tmp_path: Path, vagrant_home: Path) -> None:
    settings = {**CI_SETTINGS, "WEFT_VAGRANT_MEMORY": "1536", "WEFT_VAGRANT_CPUS": "2"}
    for machine in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home, settings)):
        assert (machine["box"], machine["driver"], machine["cpu_mode"]) == (
            "weft/debian12-local",
            "qemu",
            "maximum",
        )
        assert (machine["memory"], machine["cpus"]) == (1536, 2)


def test_user_defaults_are_kvm_and_a_public_debian_box(tmp_path: Path, vagrant_home: Path) -> None:
    for machine in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home)):
        assert (machine["box"], machine["driver"]) == ("debian/bookworm64", "kvm")


def test_only_the_ship_is_synced_by_rsync_and_one_shell_provisioner_installs(
    tmp_path: Path, vagrant_home: Path
) -> None:
    for machine in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home)):
        assert machine["synced_folders"] == ["/tmp/weft-ship"]
        assert [p["type"] for p in machine["provisioners"]] == ["shell"]


@pytest.mark.parametrize(
    ("topology", "named"),
    [
        ("nodes: [\n", "not valid YAML"),
        ("fabricCIDR: 10.77.0.0/24\n", "nodes: expected a non-empty list"),
        (
            "nodes:\n  - {name: control, role: control, ip: 10.77.0.x}\n",
            "nodes[0].ip: expected an IPv4 address",
        ),
        (
            "nodes:\n  - {name: control, role: control, ip: 10.77.0.2}\n"
            "  - {name: node1, role: worker, ip: 10.77.0.11}\n",
            "nodes[1].podCIDR",
        ),
        (
            "nodes:\n  - {name: control, role: control, ip: 10.77.0.2}\n"
            "  - {name: control, role: worker, ip: 10.77.0.3, podCIDR: 10.88.1.0/24}\n",
            "nodes[1].name: expected a value not already used by nodes[0]",
        ),
        (
            "nodes:\n  - {name: node1, role: worker, ip: 10.77.0.11, podCIDR: 10.88.1.0/24}\n",
            "exactly one node with role control",
        ),
        (
            "fabricCIDR: 10.77.0.0/24\nnodes:\n  - {name: control, role: control, ip: 10.78.0.2}\n",
            "nodes[0].ip: expected an address inside fabricCIDR 10.77.0.0/24",
        ),
        (
            "nodes:\n  - {name: control, role: boss, ip: 10.77.0.2}\n",
            "nodes[0].role: expected one of control|worker",
        ),
    ],
    ids=[
        "bad-yaml",
        "no-nodes",
        "bad-ip",
        "worker-without-podCIDR",
        "duplicate-name",
        "no-control",
        "ip-outside-fabric",
        "unknown-role",
    ],
)
def test_malformed_topology_is_refused_naming_file_and_field(
    tmp_path: Path, vagrant_home: Path, topology: str, named: str
) -> None:
    vm_dir = lab_copy(tmp_path, topology)
    result = run_vagrant(["validate"], vm_dir, _vagrant_env(tmp_path, vagrant_home))
    assert result.returncode != 0
    assert f"{vm_dir / 'topology.yaml'}: " in result.stderr
    assert named in result.stderr


def test_missing_topology_is_refused_naming_the_file(tmp_path: Path, vagrant_home: Path) -> None:
    vm_dir = lab_copy(tmp_path, "")
    (vm_dir / "topology.yaml").unlink()
    result = run_vagrant(["status"], vm_dir, _vagrant_env(tmp_path, vagrant_home))
    assert result.returncode != 0
    assert f"{vm_dir / 'topology.yaml'}: no such file" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("WEFT_VAGRANT_DRIVER", "xen"), ("WEFT_VAGRANT_MEMORY", "lots")],
)
def test_bad_setting_is_refused_naming_the_variable(
    tmp_path: Path, vagrant_home: Path, variable: str, value: str
) -> None:
    env = _vagrant_env(tmp_path, vagrant_home, {variable: value})
    result = run_vagrant(["validate"], VM_DIR, env)
    assert result.returncode != 0
    assert f'{variable}="{value}"' in result.stderr


def _unit_root(tmp_path: Path) -> Path:
    """A scratch root holding the system's units, our units and a stand-in weft executable."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(PROVISION / "systemd", root / "etc/systemd/system")
    # Stand-ins for every program the units run (weft, and ip/mkdir of ExecStartPre).
    for unit in (PROVISION / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("Exec") and "=" in line:
                program = root / line.split("=", 1)[1].lstrip("-").split()[0].lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    return root


@pytest.mark.parametrize(
    "unit", ["weft-agent.service", "weft-controller.service", "weft-waypoint@shop-waypoint.service"]
)
def test_systemd_unit_verifies_cleanly(tmp_path: Path, unit: str) -> None:
    root = _unit_root(tmp_path)
    result = subprocess.run(
        [_require("systemd-analyze"), "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Unknown keys are only warnings (exit 0): any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _exec_start(unit: str) -> str:
    lines = (PROVISION / "systemd" / unit).read_text().splitlines()
    return next(line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart="))


def test_agent_unit_runs_the_agent_cli_with_node_controller_token_roots_and_cgroup() -> None:
    argv = _exec_start("weft-agent.service").split()
    assert argv[:3] == ["/opt/weft/venv/bin/weft", "agent", "run"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--node": "${WEFT_NODE}",
        "--controller": "${WEFT_CONTROLLER}",
        "--join-token": "/etc/weft/join-token",
        # Written by the Vagrantfile's join trigger, from the controller VM's state.
        "--trust-bundle": "/etc/weft/trust-bundle.pem",
        "--state-dir": "/var/lib/weft/agent",
        # Where vm/provision/workload.sh puts each workload's cgroup.
        "--workloads-cgroup": "/sys/fs/cgroup/weft/workloads",
    }
    assert "CGROUPS=/sys/fs/cgroup/weft/workloads" in (PROVISION / "workload.sh").read_text()


def test_waypoint_unit_runs_the_waypoint_in_its_netns_with_its_token_roots_and_state_dir() -> None:
    argv = _exec_start("weft-waypoint@.service").split()
    # weft-workload's `run`: its own netns at the Waypoint's address, the waypoint in front.
    assert argv[:5] == [
        "/usr/local/sbin/weft-workload", "run", "%i", "${WEFT_WAYPOINT_ADDRESS}", "--",
    ]  # fmt: skip
    assert argv[5:8] == ["/opt/weft/venv/bin/weft", "waypoint", "run"]
    flags = dict(zip(argv[8::2], argv[9::2], strict=True))
    assert flags == {
        "--name": "${WEFT_WAYPOINT_NAME}",
        "--namespace": "${WEFT_WAYPOINT_NAMESPACE}",
        "--service-account": "${WEFT_WAYPOINT_SERVICE_ACCOUNT}",
        "--controller": "${WEFT_CONTROLLER}",
        # Written by the Vagrantfile's waypoint trigger (the bundle by its join trigger).
        "--join-token": "/etc/weft/waypoint-%i.token",
        "--trust-bundle": "/etc/weft/trust-bundle.pem",
        "--state-dir": "/var/lib/weft/waypoints/%i",
        "--hbone": "0.0.0.0:15008",
        "--listen": "off",
        "--admin": "0.0.0.0:15020",
    }
    text = (PROVISION / "systemd" / "weft-waypoint@.service").read_text()
    # systemd makes the state dir, root-only: the saved SVID's key lives there.
    assert "StateDirectory=weft/waypoints/%i\nStateDirectoryMode=0700\n" in text
    assert "ExecStopPost=/usr/local/sbin/weft-workload stop %i\n" in text


def test_the_waypoint_is_started_on_its_worker_after_that_worker_joined(
    tmp_path: Path, vagrant_home: Path
) -> None:
    triggers = {
        m["name"]: m["triggers_after"]
        for m in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home))
    }
    assert triggers == {
        "control": [],
        "node1": ["weft: join node1 to the controller on control"],
        "node2": [
            "weft: join node2 to the controller on control",
            "weft: start waypoint shop/waypoint on node2",
        ],
    }


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (
            "{address: 10.88.2.20, node: control}",
            "document 2 (kind Waypoint).spec.node: expected a worker of",
        ),
        (
            "{address: 10.88.1.20, node: node2}",
            "document 2 (kind Waypoint).spec.address: expected an IPv4 address in node2's "
            "podCIDR 10.88.2.0/24",
        ),
    ],
    ids=["not-a-worker", "address-outside-podCIDR"],
)
def test_a_misplaced_waypoint_is_refused_naming_file_and_field(
    tmp_path: Path, vagrant_home: Path, spec: str, named: str
) -> None:
    vm_dir = lab_copy(tmp_path, TOPOLOGY.read_text())
    waypoints = vm_dir / "provision" / "waypoint.yaml"
    waypoints.write_text(
        "kind: Namespace\nmetadata: {name: shop}\n---\n"
        f"kind: Waypoint\nmetadata: {{name: waypoint, namespace: shop}}\nspec: {spec}\n"
    )
    result = run_vagrant(["validate"], vm_dir, _vagrant_env(tmp_path, vagrant_home))
    assert result.returncode != 0
    assert f"{waypoints}: {named}" in result.stderr


def test_controller_unit_runs_the_controller_cli() -> None:
    assert _exec_start("weft-controller.service").startswith(
        "/opt/weft/venv/bin/weft controller run "
    )


def _run_node_script(ship: Path, prefix: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(PROVISION / "node.sh"),
            *("--ship", str(ship), "--node", "node1", "--role", "worker"),
            *("--address", "10.77.0.11", "--controller", "10.77.0.2:15012"),
        ],
        env={**os.environ, "WEFT_PREFIX": str(prefix), "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_provisioning_without_a_ship_says_how_to_stage_one(tmp_path: Path) -> None:
    (tmp_path / "ship").mkdir()
    result = _run_node_script(tmp_path / "ship", tmp_path / "opt", os.environ["PATH"])
    assert result.returncode != 0
    assert "weft-src.tar.gz is missing" in result.stderr
    assert "vm/provision/stage-host.sh" in result.stderr
    assert not (tmp_path / "opt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/setup.sh refuses to run without root")
def test_node_provisioning_offline_names_debian_packages_missing_from_the_box(
    tmp_path: Path,
) -> None:
    ship = tmp_path / "ship"
    (ship / "wheelhouse").mkdir(parents=True)
    (ship / "wheelhouse" / "placeholder-0-py3-none-any.whl").write_bytes(b"")
    with tarfile.open(ship / "weft-src.tar.gz", "w:gz") as tar:
        tar.add(REPO / "scripts" / "setup.sh", arcname="scripts/setup.sh")
    # A mock dpkg-query that reports every package as not installed, as on a bare box.
    mocks = tmp_path / "mock-bin"
    mocks.mkdir()
    (mocks / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (mocks / "dpkg-query").chmod(0o755)

    result = _run_node_script(ship, tmp_path / "opt", f"{mocks}:{os.environ['PATH']}")

    assert result.returncode != 0
    assert "the guest is offline and these Debian packages are not in the box" in result.stderr
    assert "python3-bpfcc" in result.stderr


def test_staging_packs_the_project_without_virtualenv_or_vagrant_state(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "placeholder-0-py3-none-any.whl").write_bytes(b"")
    ship = tmp_path / "ship"
    result = subprocess.run(
        ["bash", str(PROVISION / "stage-host.sh"), str(ship)],
        env={**os.environ, "WEFT_WHEELHOUSE": str(wheels)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with tarfile.open(ship / "weft-src.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"pyproject.toml", "scripts/setup.sh", "vm/provision/node.sh"} <= names
    assert not any(n.startswith((".venv/", ".git/", "vm/.vagrant/")) for n in names)
    assert (ship / "wheelhouse" / "placeholder-0-py3-none-any.whl").exists()


def test_each_node_routes_the_other_workers_pod_cidrs_to_them(
    tmp_path: Path, vagrant_home: Path
) -> None:
    machines = {
        m["name"]: m for m in describe_machines(VM_DIR, _vagrant_env(tmp_path, vagrant_home))
    }
    nodes = topology_nodes()
    workers = [n for n in nodes if n["role"] == "worker"]
    for node in nodes:
        (weft,) = [p for p in machines[node["name"]]["provisioners"] if p["name"] == "weft"]
        args = weft["args"]
        routes = {args[i + 1] for i, arg in enumerate(args) if arg == "--route"}
        # The control node too: a waypoint reaches the controller from its pod IP.
        expected = {f"{w['podCIDR']}={w['ip']}" for w in workers if w["name"] != node["name"]}
        assert routes == expected, node["name"]
