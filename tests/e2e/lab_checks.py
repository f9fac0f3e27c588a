"""Helpers of the lab's e2e tests: the weft CLI, calls from workloads, agent metrics, policy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.metrics_text import metric_total  # noqa: F401  (the e2e tests import it from here)
from vm.lab.lab import Lab
from vm.lab.mesh import agent_http, weft_on_control

CATALOG_VIP = "10.96.0.11"
ECHO_VIP = "10.96.0.21"
CATALOG = f"http://{CATALOG_VIP}:8080/products"


def weft(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `weft` CLI as a separate process, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "weft.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> float:
    """Poll until `check()`; return how long it took (fails after `timeout` seconds)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)
    return time.monotonic() - started


def http_status(lab: Lab, workload: str, url: str, timeout: float = 5) -> str:
    """curl from inside a workload (its netns and cgroup: captured like the workload); "000"
    when the connection fails (a drop: after `timeout`)."""
    result = lab.exec(
        workload,
        ["curl", "-s", "-o", "/dev/null", "-m", f"{timeout:g}", "-w", "%{http_code}", url],
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    return result.stdout.strip()


def raw_echo(lab: Lab, client: str, address: str, timeout: float = 3) -> bool:
    """`client` -> `address`:7000 (the demo's echo), raw TCP with half-close: True if every byte
    comes back."""
    probe = (
        "import socket, sys\n"
        "timeout = float(sys.argv[2])\n"
        "s = socket.create_connection((sys.argv[1], 7000), timeout=timeout)\n"
        "s.settimeout(timeout); s.sendall(b'weft' * 100); s.shutdown(socket.SHUT_WR)\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "assert data == b'weft' * 100, data\n"
    )
    result = lab.exec(
        client, [sys.executable, "-c", probe, address, f"{timeout:g}"],
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    return result.returncode == 0


def agent_metrics(lab: Lab, node: str) -> str:
    status, body = agent_http(lab, node, "/metrics")
    assert status == 200, body
    return body


def access_log(lab: Lab, node: str) -> list[dict[str, object]]:
    """The agent's access-log records (one JSON object per connection) so far."""
    text = (lab.store.log_dir / f"agent-{node}.log").read_text()
    return [
        json.loads(line.split("weft.access: ", 1)[1])
        for line in text.splitlines()
        if "weft.access: " in line
    ]


@contextmanager
def applied(lab: Lab, directory: Path, name: str, text: str) -> Iterator[None]:
    """`weft apply -f` the YAML `text` (saved as `directory/name`); deleted when the block ends."""
    path = directory / name
    path.write_text(text)
    weft_on_control(lab, "apply", "-f", str(path))
    try:
        yield
    finally:
        weft_on_control(lab, "delete", "-f", str(path))


def service_route(namespace: str, service: str, port: int, *backends: str, rule: str = "") -> str:
    """An HTTPRoute named after the Service it attaches to (`service`:`port`), with one rule:
    `backends` are its backendRefs (flow mappings, e.g. "{name: reviews-v1, port: 8080}") and
    `rule` any further fields of it (e.g. "timeouts: {request: 5s}")."""
    refs = "".join(f"    - {backend}\n" for backend in backends)
    extra = f"    {rule}\n" if rule else ""
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        f"metadata: {{name: {service}, namespace: {namespace}}}\n"
        "spec:\n"
        f'  parentRefs: [{{group: "", kind: Service, name: {service}, port: {port}}}]\n'
        f"  rules:\n  - backendRefs:\n{refs}{extra}"
    )
