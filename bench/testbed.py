"""What the benchmark needs from a lab, and the workloads it adds to one."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from weft.errors import WeftError

# The mesh namespace of the benchmark's own workloads: not opted in, so `direct` is unmeshed.
BENCH_NAMESPACE = "bench"

# Connection-rate loads open tens of thousands of connections a minute; TIME_WAIT sockets would
# exhaust the ephemeral ports. Reusing them for new outgoing connections (safe with TCP
# timestamps) keeps the load measuring connection setup, not port scarcity. Set in the lab's own
# namespaces (the bench client's, the nodes'), which go with the lab. The port range stays the
# kernel's: the wide one (1024-65000) this once set outlived the bench in a shared lab (low
# ports then showed up as sources in later tests), and nothing connecting here binds a port.
CONNECTION_RATE_SYSCTLS: Mapping[str, str] = {
    "net.ipv4.tcp_tw_reuse": "1",
}


class Testbed(Protocol):
    """The part of vm.lab.lab.Lab the benchmark uses; tests may pass anything shaped like it."""

    def workload_ip(self, name: str) -> str: ...

    def node_ip(self, node: str) -> str: ...

    def exec(
        self,
        workload: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def spawn(self, workload: str, argv: Sequence[str], name: str) -> int: ...

    def node_exec(
        self,
        node: str,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def node_spawn(self, node: str, argv: Sequence[str], name: str) -> int: ...

    def stop(self, pid: int) -> bool: ...

    def add_workload(
        self,
        name: str,
        node: str,
        namespace: str,
        service_account: str = "default",
        labels: dict[str, str] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class BenchLayout:
    """Where the benchmark's client and servers run: two nodes, a server on each."""

    client_node: str
    server_node: str
    client: str = "bench-client"
    local_server: str = "bench-local"  # on the client's node: the same-node paths
    remote_server: str = "bench-server"  # on the other node: the cross-node paths

    @property
    def servers(self) -> tuple[tuple[str, str], ...]:
        """(workload, node) of each server workload."""
        return ((self.local_server, self.client_node), (self.remote_server, self.server_node))


def prepare_layout(testbed: Testbed, client_node: str, server_node: str) -> BenchLayout:
    """Add the bench workloads to the lab and tune their and their nodes' port reuse."""
    layout = BenchLayout(client_node=client_node, server_node=server_node)
    workloads = ((layout.client, client_node), *layout.servers)
    for workload, node in workloads:
        try:
            testbed.workload_ip(workload)
            continue  # left by an earlier run on a lab that stayed up: idle, reuse it
        except (KeyError, WeftError):
            pass
        testbed.add_workload(workload, node, BENCH_NAMESPACE, workload)
    settings = [f"{key}={value}" for key, value in CONNECTION_RATE_SYSCTLS.items()]
    testbed.exec(layout.client, ["sysctl", "-q", "-w", *settings])
    for node in (client_node, server_node):
        testbed.node_exec(node, ["sysctl", "-q", "-w", *settings])
    return layout
