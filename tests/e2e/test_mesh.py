"""The demo shop through the mesh: real eBPF capture, real mTLS HBONE between lab nodes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from vm.lab.lab import Lab
from vm.lab.mesh import MeshInfo, agent_http, down_mesh, up_mesh

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mesh(lab: Lab) -> Iterator[MeshInfo]:
    info = up_mesh(lab)
    try:
        # Keep-alive connections the demo opened before the mesh (or through an earlier agent)
        # die with it, and the demo's HTTP client reports a reuse of one as a 500: one short
        # round lets it drop them before the measured rounds.
        lab.traffic(requests=10, duration_limit=15)
        yield info
    finally:
        down_mesh(lab, info)


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics(lab: Lab, node: str) -> str:
    status, body = agent_http(lab, node, "/metrics")
    assert status == 200, body
    return body


def test_demo_traffic_flows_through_the_mesh_with_zero_errors(lab: Lab, mesh: MeshInfo) -> None:
    before = metric_total(
        metrics(lab, "node1"), "istio_tcp_connections_opened_total", reporter="source"
    )
    result = lab.traffic(requests=60, duration_limit=40, json_report=True)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report, report
    node1 = metrics(lab, "node1")
    node2 = metrics(lab, "node2")
    opened = metric_total(node1, "istio_tcp_connections_opened_total", reporter="source")
    assert opened > before
    # frontend on node1 reaches catalog on node2 only through HBONE, as its own identity:
    assert (
        metric_total(
            node2,
            "istio_tcp_connections_opened_total",
            reporter="destination",
            destination_workload="catalog",
            source_workload="frontend",
            source_principal="spiffe://cluster.local/ns/shop/sa/frontend",
            connection_security_policy="mutual_tls",
        )
        >= 1
    )
    # Bytes are counted when a connection closes (as ztunnel does); the echo connections close.
    assert (
        metric_total(
            node1, "istio_tcp_received_bytes_total", reporter="source", destination_workload="echo"
        )
        > 0
    )


def test_agents_report_workload_certificates_and_their_config(lab: Lab, mesh: MeshInfo) -> None:
    status, body = agent_http(lab, "node2", "/certs", port=15000)
    assert status == 200
    rows = json.loads(body)
    identities = {r["identity"]: r for r in rows}
    assert "spiffe://cluster.local/ns/shop/sa/catalog" in identities
    assert identities["spiffe://cluster.local/ns/shop/sa/catalog"]["state"] == "valid"
    # legacy is not in the mesh: no certificate is requested for it
    assert not any("/ns/legacy/" in i for i in identities)
    status, body = agent_http(lab, "node1", "/config_dump", port=15000)
    dump = json.loads(body)
    assert dump["version"] > 0
    assert {w["workload"] for w in dump["local_workloads"]} >= {"shop/frontend", "shop/loadgen"}


def fabric_capture(lab: Lab, requests: int) -> list[str]:
    """tcpdump on the fabric bridge (ASCII payloads too) while the demo load runs."""
    capture = subprocess.Popen(
        ["ip", "netns", "exec", "weft-fabric", "tcpdump", "-i", "br0", "-n", "-l", "-A",
         "-c", "4000", "tcp and not port 15012"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
    )  # fmt: skip
    try:
        assert capture.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in capture.stderr.readline():
            assert time.monotonic() < deadline, "tcpdump did not start"
        result = lab.traffic(requests=requests, duration_limit=30)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        capture.terminate()
        dump, _ = capture.communicate(timeout=10)
    return dump.splitlines()


def test_fabric_carries_http_only_inside_tls_to_15008(lab: Lab, mesh: MeshInfo) -> None:
    lines = fabric_capture(lab, 30)
    headers = [line for line in lines if " IP " in line]
    assert any(".15008" in line for line in headers), "no HBONE on the fabric"
    # The HTTP services (8080) are never reached directly across nodes...
    assert not [line for line in headers if ".8080" in line]
    # ...and the demo's HTTP payload never crosses the fabric in clear.
    text = "\n".join(lines)
    assert "HTTP/1.1" not in text
    assert "GET /" not in text


@pytest.mark.xfail(
    strict=True,
    reason="grpcio connects with AF_INET6 sockets to v4-mapped addresses ([::ffff:10.96.0.20]), "
    "which cgroup/connect4 never sees: gRPC bypasses capture until ebpf/ hooks connect6",
)
def test_fabric_carries_nothing_but_hbone_between_workloads(lab: Lab, mesh: MeshInfo) -> None:
    headers = [line for line in fabric_capture(lab, 30) if " IP " in line]
    assert headers
    assert not [line for line in headers if ".15008" not in line]
