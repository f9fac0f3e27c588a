"""Outbound capture (issue 5): which connects are redirected to the agent, what the agent learns
about them from the maps, and what is left alone; IPv4 sockets and AF_INET6 ones dialing
IPv4-mapped addresses (::ffff:a.b.c.d, as grpcio does) alike."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from kernel_sandbox import (
    AGENT_ADDR,
    SERVER_ADDR,
    UNROUTED_ADDR,
    Listeners,
    Node,
    run_client,
)

from agent.bpf.loader import Loader, cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode, OriginalDestination
from agent.bpf.programs import NODE

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
OPTED_OUT = Enrollment(Mode.NONE, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
FORGET_WAIT_S = 3.0


def mapped(addr: str) -> str:
    """The IPv4-mapped IPv6 form of an IPv4 address: what an AF_INET6 socket dials."""
    return f"::ffff:{addr}"


# The same capture through connect4 (an IPv4 socket) and connect6 (an IPv4-mapped address).
FAMILIES = [pytest.param(str, id="ipv4"), pytest.param(mapped, id="ipv4-mapped-ipv6")]


@pytest.mark.parametrize("dial", FAMILIES)
def test_captured_connect_reaches_the_agent_which_recovers_the_original_destination(
    node: Node, node_listen: Listeners, dial: Callable[[str], str]
) -> None:
    workload = node.workload("client", AMBIENT)
    agent = node_listen(AGENT_ADDR, 15001, "agent")
    seen: list[OriginalDestination | None] = []
    agent.on_accept = lambda conn: seen.append(
        node.maps.original_destination(conn.getpeername(), conn.getsockname())
    )

    result = run_client(node.netns, workload, dial(UNROUTED_ADDR), 80, "hello")

    assert result.reply == "agent:hello"
    assert result.peer is not None
    assert result.peer[:2] == (dial(UNROUTED_ADDR), 80)  # the application never sees the detour
    assert seen == [OriginalDestination(IPv4Address(UNROUTED_ADDR), 80, cgroup_id(workload))]
    stats = node.maps.stats(cgroup_id(workload))
    assert stats is not None
    assert (stats.captured, stats.passed) == (1, 0)


def test_original_destination_entries_are_forgotten_when_the_connection_closes(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("closer", AMBIENT)
    agent = node_listen(AGENT_ADDR, 15001, "agent")
    run_client(node.netns, workload, UNROUTED_ADDR, 81)
    peer, local = agent.accepted[0].peer, agent.accepted[0].local
    deadline = time.monotonic() + FORGET_WAIT_S
    while node.maps.original_destination(peer, local) is not None:
        assert time.monotonic() < deadline, "the 4-tuple entry outlived its connection"
        time.sleep(0.05)


@dataclass(frozen=True)
class Bypass:
    enrollment: Enrollment | None
    dst: str  # where the server listens
    skip_port: int | None = None
    dial: Callable[[str], str] = str  # the address form the client dials dst by


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Bypass(AMBIENT, "127.0.0.1"), id="loopback destination"),
        pytest.param(Bypass(AMBIENT, "127.0.0.1", dial=mapped), id="ipv4-mapped loopback"),
        pytest.param(Bypass(AMBIENT, SERVER_ADDR, skip_port=8080), id="excluded port"),
        pytest.param(Bypass(OPTED_OUT, SERVER_ADDR), id="workload opted out (mode none)"),
        pytest.param(Bypass(None, SERVER_ADDR), id="not enrolled, like the agent's own cgroup"),
    ],
)
def test_connects_that_must_not_be_captured_reach_their_destination(
    node: Node, node_listen: Listeners, case: Bypass
) -> None:
    enrollment, dst, skip_port = case.enrollment, case.dst, case.skip_port
    workload = node.workload("bypass", enrollment)
    node_listen(AGENT_ADDR, 15001, "agent")
    node_listen(dst, 8080, "server")
    if skip_port is not None:
        node.maps.skip_port(skip_port)
    try:
        result = run_client(node.netns, workload, case.dial(dst), 8080, "hi")
    finally:
        if skip_port is not None:
            node.maps.unskip_port(skip_port)
    assert result.reply == "server:hi"
    stats = node.maps.stats(cgroup_id(workload))
    assert stats is None or stats.captured == 0


def test_v4_mapped_connect_of_a_workload_not_enrolled_reaches_its_destination(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("plain6", None)
    node_listen(AGENT_ADDR, 15001, "agent")
    server = node_listen(SERVER_ADDR, 8080, "server")
    result = run_client(node.netns, workload, mapped(SERVER_ADDR), 8080, "hi")
    assert result.reply == "server:hi"
    assert result.peer is not None
    assert result.peer[:2] == (mapped(SERVER_ADDR), 8080)
    assert len(server.accepted) == 1


def test_a_workload_talking_to_its_agent_directly_is_not_captured_into_it(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("direct", AMBIENT)
    node_listen(AGENT_ADDR, 15001, "capture")
    node_listen(AGENT_ADDR, 15008, "hbone")
    result = run_client(node.netns, workload, AGENT_ADDR, 15008, "x")
    assert result.reply == "hbone:x"


def test_captured_connects_fail_closed_when_the_agent_is_not_listening(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("failclosed", AMBIENT)
    server = node_listen(SERVER_ADDR, 8080, "server")
    result = run_client(node.netns, workload, SERVER_ADDR, 8080)
    assert result.error == errno.ECONNREFUSED  # refused by the missing agent, not bypassed
    assert server.accepted == []


def test_udp_is_never_captured(node: Node) -> None:
    workload = node.workload("udp", AMBIENT)
    receiver = node.netns.socket_in(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with receiver:
        receiver.bind((SERVER_ADDR, 5353))
        receiver.settimeout(5)
        code = (
            "import os, socket, sys; "
            "open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w').write(str(os.getpid())); "
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.connect(('{SERVER_ADDR}', 5353)); s.send(b'dns')"
        )
        subprocess.run(
            ["nsenter", f"--net={node.netns.path}", sys.executable, "-c", code, str(workload)],
            check=True,
            timeout=10,
        )
        assert receiver.recv(16) == b"dns"


def test_state_survives_an_agent_restart_and_capture_keeps_working(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("restart", AMBIENT)
    node.maps.skip_port(2222)
    try:
        restarted = Loader("node", pin_root=node.loader.scope_dir.parent).attach(
            NODE, node.cgroups.workloads
        )
        assert all(a.reused for a in restarted)  # the same links, no second attachment
        assert node.maps.enrollment(cgroup_id(workload)) == AMBIENT  # pinned maps kept state
        node_listen(AGENT_ADDR, 15001, "agent")
        assert run_client(node.netns, workload, UNROUTED_ADDR, 80, "again").reply == "agent:again"
        node_listen(SERVER_ADDR, 2222, "ssh")
        assert run_client(node.netns, workload, SERVER_ADDR, 2222, "x").reply == "ssh:x"
    finally:
        node.maps.unskip_port(2222)
