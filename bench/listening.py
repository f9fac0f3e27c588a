"""Waits until a server in a lab namespace is listening, so a load never races its server."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.testbed import Testbed
from weft.errors import UnavailableError


def listening_ports(ss_output: str) -> set[int]:
    """Local ports of `ss -Hltn` lines ("LISTEN 0 4096 10.88.1.10:8080 0.0.0.0:*")."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and ":" in fields[3]:
            port = fields[3].rsplit(":", 1)[1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def wait_listening(
    testbed: Testbed,
    ports: Sequence[int],
    *,
    workload: str | None = None,
    node: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Poll `ss` in a workload's or a node's namespace until every port listens."""
    where = f"workload {workload}" if workload else f"node {node}"
    deadline = time.monotonic() + timeout
    missing = set(ports)
    while time.monotonic() < deadline:
        if workload is not None:
            out = testbed.exec(workload, ["ss", "-Hltn"], check=False).stdout
        else:
            assert node is not None, "wait_listening needs a workload or a node"
            out = testbed.node_exec(node, ["ss", "-Hltn"], check=False).stdout
        missing = set(ports) - listening_ports(out)
        if not missing:
            return
        time.sleep(0.1)
    raise UnavailableError(
        f"nothing listens on port(s) {sorted(missing)} in {where} after {timeout:.0f} s",
        hint="look at the server's log in the lab's log directory ('weft lab status')",
    )
