"""Outbound capture of AF_INET6 sockets dialing IPv4-mapped addresses (::ffff:a.b.c.d), as grpcio
does: redirected to the agent's IPv4 listener like connect4, and left alone when not captured."""

from __future__ import annotations

from ipaddress import IPv4Address

from kernel_sandbox import AGENT_ADDR, SERVER_ADDR, UNROUTED_ADDR, Listeners, Node, run_client

from agent.bpf.loader import cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode, OriginalDestination

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))


def mapped(addr: str) -> str:
    return f"::ffff:{addr}"


def test_v4_mapped_connect_reaches_the_agent_which_recovers_the_ipv4_original_destination(
    node: Node, node_listen: Listeners
) -> None:
    workload = node.workload("client6", AMBIENT)
    agent = node_listen(AGENT_ADDR, 15001, "agent")
    seen: list[OriginalDestination | None] = []
    agent.on_accept = lambda conn: seen.append(
        node.maps.original_destination(conn.getpeername(), conn.getsockname())
    )

    result = run_client(node.netns, workload, mapped(UNROUTED_ADDR), 80, "hello")

    assert result.reply == "agent:hello"
    assert result.peer is not None
    assert result.peer[:2] == (mapped(UNROUTED_ADDR), 80)  # the detour stays invisible
    assert seen == [OriginalDestination(IPv4Address(UNROUTED_ADDR), 80, cgroup_id(workload))]
    stats = node.maps.stats(cgroup_id(workload))
    assert stats is not None
    assert (stats.captured, stats.passed) == (1, 0)


def test_v4_mapped_loopback_is_not_captured(node: Node, node_listen: Listeners) -> None:
    workload = node.workload("loop6", AMBIENT)
    node_listen(AGENT_ADDR, 15001, "agent")
    node_listen("127.0.0.1", 8080, "server")
    result = run_client(node.netns, workload, mapped("127.0.0.1"), 8080, "hi")
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
