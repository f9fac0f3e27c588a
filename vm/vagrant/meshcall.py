"""A meshed call between the Vagrant lab's VMs, proven on the wire.

A client workload on one worker VM sends a marker to an echo workload on another, through the
node agents (eBPF capture in each guest's kernel, HBONE mTLS between the VMs), while tcpdump
records the VMs' private network at the server VM's port on it (a tap in the lab netns): the
call must cross it as TLS to port 15008, and the marker must never appear in clear.
"""

from __future__ import annotations

import json
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vm.vagrant import libvirt
from vm.vagrant.lab import guest, log_file
from vm.vagrant.pcap import looks_like_tls, read_segments
from vm.vagrant.steps import StepError

HBONE_PORT = 15008
CONTROLLER = "10.77.0.2:15012"
CONTROLLER_STATE = "/var/lib/weft/controller"
GUEST_PYTHON = "/opt/weft/venv/bin/python"
NAMESPACE = "vmlab"
ECHO_PORT = 7000
# Clients reach the echo server through a Service: the controller scopes each node's config to
# its own workloads and the services they may call, so a remote pod IP alone is not in it.
ECHO_VIP = "10.96.0.21"
READY_TIMEOUT = 600.0
CALL_TIMEOUT = 180.0


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    node: str
    ip: str
    command: tuple[str, ...]
    ports: tuple[int, ...] = ()


@dataclass
class CallResult:
    reply: bytes
    hbone_segments: int
    tls_records: int
    plaintext_hits: int
    direct_segments: int
    pcap: Path


def workloads(client_node: str, server_node: str) -> list[WorkloadSpec]:
    return [
        WorkloadSpec("echo", server_node, "10.88.2.10",
                     (GUEST_PYTHON, "-m", "demo.echo", "--port", str(ECHO_PORT)), (ECHO_PORT,)),
        WorkloadSpec("client", client_node, "10.88.1.10", ("sleep", "infinity")),
    ]  # fmt: skip


def resources(specs: list[WorkloadSpec]) -> list[dict[str, object]]:
    """The namespace (in the mesh) and the workloads, as `weft apply` documents."""
    documents: list[dict[str, object]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"weft.io/dataplane-mode": "ambient"}},
        }
    ]
    for w in specs:
        if w.ports:
            documents.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": w.name, "namespace": NAMESPACE},
                    "spec": {
                        "clusterIP": ECHO_VIP,
                        "selector": {"app": w.name},
                        "ports": [
                            {"name": f"tcp-{p}", "port": p, "targetPort": p} for p in w.ports
                        ],
                    },
                }
            )
        spec: dict[str, object] = {"address": w.ip, "node": w.node, "serviceAccount": w.name}
        if w.ports:
            spec["ports"] = {f"tcp-{p}": p for p in w.ports}
        documents.append(
            {
                "apiVersion": "weft.io/v1",
                "kind": "Workload",
                "metadata": {"name": w.name, "namespace": NAMESPACE, "labels": {"app": w.name}},
                "spec": spec,
            }
        )
    return documents


def wait_until(
    what: str, check: Callable[[], tuple[bool, str]], timeout: float, interval: float = 3.0
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return
        time.sleep(interval)
    raise StepError(what, log_file(), f"not done after {timeout:.0f} s: {last}")


def wait_agents_ready(nodes: list[str]) -> None:
    for node in nodes:

        def ready(node: str = node) -> tuple[bool, str]:
            result = guest(node, "curl -sS -m 5 http://127.0.0.1:15020/healthz/ready", check=False)
            status = guest(node, "systemctl is-active weft-agent", check=False).stdout.strip()
            return result.returncode == 0, f"weft-agent {status}: {result.stdout}{result.stderr}"

        wait_until(
            f"agent on {node} ready (journalctl -u weft-agent on {node})", ready, READY_TIMEOUT
        )


def start_process(node: str, name: str, ip: str, command: tuple[str, ...]) -> None:
    """(Re)start guest workload `name` on `node` (weft-workload, detached)."""
    argv = " ".join(shlex.quote(part) for part in command)
    guest(node, f"weft-workload stop {name}; weft-workload start {name} {ip} -- {argv}")


def apply(control: str, documents: list[dict[str, object]], name: str) -> None:
    """`weft apply` of `documents` on the control VM, as the controller's admin."""
    text = yaml.safe_dump_all(documents)
    guest(
        control,
        f"cat > /tmp/{name}.yaml <<'EOF'\n{text}EOF\n"
        f"weft apply -f /tmp/{name}.yaml --controller {CONTROLLER} "
        f"--admin-credential {CONTROLLER_STATE}/admin.pem",
    )


def start_workloads(specs: list[WorkloadSpec], control: str) -> None:
    for w in specs:
        start_process(w.node, w.name, w.ip, w.command)
    apply(control, resources(specs), "vmlab")


def agent_config(node: str) -> dict[str, Any]:
    result = guest(node, "curl -sS -m 5 http://127.0.0.1:15000/config_dump", check=False)
    try:
        dump: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        return {}
    return dump


def wait_config(client: WorkloadSpec, server: WorkloadSpec) -> None:
    """Until the agents have the workloads and the service: a call made earlier would leave
    the mesh (passthrough, in clear)."""

    def server_ready() -> tuple[bool, str]:
        dump = agent_config(server.node)
        mine = [w for w in dump.get("local_workloads", []) if w.get("address") == server.ip]
        return bool(mine and mine[0].get("inbound_listener")), f"config {dump}"

    def client_ready() -> tuple[bool, str]:
        dump = agent_config(client.node)
        mine = [w for w in dump.get("local_workloads", []) if w.get("address") == client.ip]
        service = [s for s in dump.get("services", []) if s.get("vip") == ECHO_VIP]
        ok = bool(mine and mine[0].get("in_mesh") and service and service[0].get("endpoints"))
        return ok, f"config {dump}"

    wait_until(f"the agent on {server.node} to serve {server.name}", server_ready, CALL_TIMEOUT)
    wait_until(f"the agent on {client.node} to know {ECHO_VIP}", client_ready, CALL_TIMEOUT)


def fabric_port(node: str) -> str:
    """The host side (a tap in the lab netns) of VM `node`'s interface on the fabric network.

    Captured there rather than on the bridge: a bridge's own interface does not see the
    unicast frames it forwards between two VMs.
    """
    listing = libvirt.virsh("domiflist", f"{libvirt.DOMAIN_PREFIX}{node}")
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "weft-fabric":
            return fields[0]
    raise StepError(
        f"find {node}'s port on the fabric", log_file(), listing.stdout + listing.stderr
    )


CLIENT = """
import socket, sys
marker = sys.argv[1].encode()
with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=20) as s:
    s.sendall(marker)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
sys.stdout.write(reply.decode())
"""


def call(client: WorkloadSpec, server: WorkloadSpec, marker: str) -> bytes:
    """The client sends `marker` to the echo server (retried while enrollment settles)."""
    command = (
        f"weft-workload exec {client.name} -- {GUEST_PYTHON} -c {shlex.quote(CLIENT)} "
        f"{marker} {ECHO_VIP} {ECHO_PORT}"
    )
    reply = b""

    def once() -> tuple[bool, str]:
        nonlocal reply
        result = guest(client.node, command, check=False, timeout=60)
        reply = result.stdout.encode()
        return result.stdout == marker, f"reply {result.stdout!r}, stderr {result.stderr[-500:]!r}"

    wait_until(f"meshed call {client.node}/{client.name} -> {server.node}/{server.name}",
               once, CALL_TIMEOUT, interval=5)  # fmt: skip
    return reply


def meshed_call(client_node: str = "node1", server_node: str = "node2") -> CallResult:
    """Run the meshed call with a capture on the fabric and check what crossed it."""
    specs = workloads(client_node, server_node)
    server, client = specs
    wait_agents_ready([client_node, server_node])
    start_workloads(specs, "control")
    wait_config(client, server)
    pcap = libvirt.RUN_DIR / "fabric.pcap"
    pcap.unlink(missing_ok=True)
    capture = subprocess.Popen(
        ["nsenter", f"--net={libvirt.NETNS_PATH}", "--", "tcpdump", "-i", fabric_port(server_node),
         "-w", str(pcap), "-U", "-s", "0", "-c", "20000", "tcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marker = f"WEFT-VM-MARKER-{secrets.token_hex(8)}"
    try:
        time.sleep(2)  # tcpdump opens the interface
        reply = call(client, server, marker)
        time.sleep(1)
    finally:
        capture.send_signal(signal.SIGINT)
        try:
            capture.wait(timeout=10)
        except subprocess.TimeoutExpired:
            capture.kill()
            capture.wait()
    segments = read_segments(pcap)
    hbone = [s for s in segments if HBONE_PORT in s.ports() and s.payload]
    return CallResult(
        reply=reply,
        hbone_segments=len(hbone),
        tls_records=sum(1 for s in hbone if looks_like_tls(s.payload)),
        plaintext_hits=sum(1 for s in segments if marker.encode() in s.payload)
        + pcap.read_bytes().count(marker.encode()),
        direct_segments=sum(1 for s in segments if ECHO_PORT in s.ports()),
        pcap=pcap,
    )
