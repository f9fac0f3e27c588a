"""STRICT inbound (issue 5): an enrolled STRICT workload accepts new TCP connections only from
its node agent; every other attempt is dropped in eBPF and counted against the workload."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

import pytest
from kernel_sandbox import (
    AGENT_ADDR,
    SERVER_ADDR,
    STRANGER_ADDR,
    Listeners,
    Netns,
    Node,
    in_cgroup,
    run_client,
)

from agent.bpf.loader import cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode

STRICT = Enrollment(Mode.AMBIENT, Inbound.STRICT, IPv4Address(AGENT_ADDR))
PERMISSIVE = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
DROP_TIMEOUT_S = 1.0


def exchange(ns: Netns, src: str, dst: tuple[str, int], payload: bytes, timeout: float) -> bytes:
    """Connect from address `src` inside `ns`, send, half-close, read the answer to EOF."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        return s

    with ns.socket_in(make) as s:
        s.settimeout(timeout)
        s.connect(dst)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def serve_as(node: Node, listen: Listeners, workload_enrollment: Enrollment, port: int) -> int:
    """A listener owned by a new workload (its socket is created inside the workload's cgroup)."""
    workload = node.workload("server", workload_enrollment)
    with in_cgroup(workload):
        listen(SERVER_ADDR, port, "server")
    return cgroup_id(workload)


def test_strict_workload_accepts_the_agent_and_drops_anyone_else(
    node: Node, node_listen: Listeners
) -> None:
    workload = serve_as(node, node_listen, STRICT, 9090)

    assert exchange(node.netns, AGENT_ADDR, (SERVER_ADDR, 9090), b"a", 5) == b"server:a"
    with pytest.raises(TimeoutError):  # the SYN is dropped: no answer, not even a reset
        exchange(node.netns, STRANGER_ADDR, (SERVER_ADDR, 9090), b"s", DROP_TIMEOUT_S)

    stats = node.maps.stats(workload)
    assert stats is not None
    assert stats.inbound_dropped >= 1  # SYN retransmissions within the timeout count too


def test_permissive_workload_accepts_anyone(node: Node, node_listen: Listeners) -> None:
    workload = serve_as(node, node_listen, PERMISSIVE, 9091)
    assert exchange(node.netns, STRANGER_ADDR, (SERVER_ADDR, 9091), b"s", 5) == b"server:s"
    stats = node.maps.stats(workload)
    assert stats is not None
    assert stats.inbound_dropped == 0


def test_strict_workload_still_gets_replies_on_connections_it_opened(
    node: Node, node_listen: Listeners
) -> None:
    client = node.workload("strict-client", STRICT)
    node_listen(AGENT_ADDR, 15008, "hbone")  # not captured: the agent's own address
    result = run_client(node.netns, client, AGENT_ADDR, 15008, "out")
    assert result.reply == "hbone:out"
