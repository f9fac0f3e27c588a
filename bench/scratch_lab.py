"""A two-node stand-in for vm.lab: namespaces `weft-bench-*`, for developing and testing the bench.

It offers the part of the Lab API the benchmark uses (bench.testbed.Testbed). Nodes are joined
by one veth (the fabric); each node bridges its workloads on a /24 and routes to the other's.
Everything it makes is removed by `down()`, which also finds namespaces leaked by a killed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "weft-bench-"
NODES = ("a", "b")


def _run(argv: Sequence[str], timeout: float = 30, check: bool = True) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def leaked_namespaces() -> list[str]:
    """Every `weft-bench-*` network namespace on the machine."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


@dataclass
class ScratchLab:
    """Nodes `weft-bench-a` and `weft-bench-b`; workloads `weft-bench-<node>-<name>`."""

    node_ips: dict[str, str] = field(default_factory=dict)
    workload_ips: dict[str, str] = field(default_factory=dict)
    workload_nodes: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="weft-bench-")))
    _logs: list[IO[bytes]] = field(default_factory=list)

    def up(self) -> None:
        self.down()
        for index, node in enumerate(NODES, start=1):
            ns = PREFIX + node
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            _run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", ns, "addr", "add", f"10.98.{index}.1/24", "dev", "br0"])
            _run(["ip", "-n", ns, "link", "set", "br0", "up"])
            self.node_ips[node] = f"10.99.0.{index}"
        a, b = (PREFIX + node for node in NODES)
        _run(
            ["ip", "-n", a, "link", "add", "fab", "type", "veth", "peer", "name", "fab", "netns", b]
        )
        for index, ns in enumerate((a, b), start=1):
            _run(["ip", "-n", ns, "addr", "add", f"10.99.0.{index}/24", "dev", "fab"])
            _run(["ip", "-n", ns, "link", "set", "fab", "up"])
        _run(["ip", "-n", a, "route", "add", "10.98.2.0/24", "via", "10.99.0.2"])
        _run(["ip", "-n", b, "route", "add", "10.98.1.0/24", "via", "10.99.0.1"])

    def add_workload(
        self,
        name: str,
        node: str,
        namespace: str,
        service_account: str = "default",
        labels: dict[str, str] | None = None,
    ) -> None:
        del namespace, service_account, labels  # no mesh here: only the network matters
        node_ns, ns = PREFIX + node, f"{PREFIX}{node}-{name}"
        index = NODES.index(node) + 1
        host = 10 + sum(1 for n in self.workload_nodes.values() if n == node)
        ip = f"10.98.{index}.{host}"
        port = f"v{host}"
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(
            [
                "ip",
                "-n",
                node_ns,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]
        )
        _run(["ip", "-n", node_ns, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", f"10.98.{index}.1"])
        self.workload_ips[name] = ip
        self.workload_nodes[name] = node

    def workload_ip(self, name: str) -> str:
        return self.workload_ips[name]

    def node_ip(self, node: str) -> str:
        return self.node_ips[node]

    def _netns(self, workload: str) -> str:
        return f"{PREFIX}{self.workload_nodes[workload]}-{workload}"

    def exec(
        self,
        workload: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self._exec_in(self._netns(workload), argv, timeout, check, input)

    def node_exec(
        self,
        node: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self._exec_in(PREFIX + node, argv, timeout, check, input)

    def spawn(self, workload: str, argv: Sequence[str], name: str) -> int:
        return self._spawn_in(self._netns(workload), argv, name)

    def node_spawn(self, node: str, argv: Sequence[str], name: str) -> int:
        return self._spawn_in(PREFIX + node, argv, name)

    def stop(self, pid: int) -> bool:
        if pid not in self.pids:
            return False
        self.pids.remove(pid)
        _stop_pid(pid)
        return True

    def _exec_in(
        self, ns: str, argv: Sequence[str], timeout: float, check: bool, stdin: str | None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=stdin,
        )

    def _spawn_in(self, ns: str, argv: Sequence[str], name: str) -> int:
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pids.append(proc.pid)
        return proc.pid

    def down(self) -> None:
        """Kill what was spawned (by pid), delete every `weft-bench-*` namespace. Idempotent."""
        for pid in self.pids:
            _stop_pid(pid)
        self.pids.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        for ns in sorted(leaked_namespaces(), key=len, reverse=True):  # workloads first
            _run(["ip", "netns", "delete", ns], check=False)
        self.workload_ips.clear()
        self.workload_nodes.clear()


def _stop_pid(pid: int) -> None:
    """SIGTERM, then SIGKILL after a grace period; reap it (it is our child)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return finished == 0
