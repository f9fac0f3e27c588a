"""Same-node splice end to end (issue 5): a captured client process, the agent's real
splice_connections and a server workload. 1 GiB each way with checksums at both ends, half-close
and reset in each direction, and bytes sent before the agent registered the pair.

Every test runs with the sk_msg splice (what this kernel attaches); half-close, reset and the
maps report also with the sk_skb fallback. The fallback is not held to the 1 GiB and early-bytes
tests: measured here, it occasionally stalls (the kernel's psock backlog stops transmitting
redirected bytes; the agent resets the connection after DRAIN_TIMEOUT_S) and can reorder bytes
that arrive while the agent enters the two sockets (one goes up to the agent, later ones are
moved by the kernel). Both are reasons the sk_msg splice replaced it where the kernel allows.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest
from kernel_sandbox import AGENT_ADDR, Node, made_cgroups, made_netns, made_pin_root
from splice_bed import splice_bed
from splice_peer import (
    GREETING,
    HOLD_PINGS,
    early_request,
    read_to_eof,
    recv_all,
    reset,
    send_stream,
)

from agent.bpf.links import splice_mode
from agent.bpf.loader import Loader
from agent.bpf.maps import Enrollment, Inbound, Mode, NodeMaps
from agent.bpf.programs import NODE, SPLICE_MSG
from agent.cli import maps_report

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
GIB = 1 << 30
EARLY_CONNECTIONS = 200


@pytest.fixture(scope="module", params=["sk_msg", "sk_skb"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    """A node splicing by sk_msg (this kernel's mode), or by sk_skb as where sk_msg cannot be
    attached (its program left out, as the loader leaves it out there)."""
    mode = request.param
    specs = NODE if mode == "sk_msg" else tuple(s for s in NODE if s is not SPLICE_MSG)
    with made_netns() as ns, made_cgroups() as tree, made_pin_root() as root:
        loader = Loader("node", pin_root=root)
        loader.attach(specs, tree.workloads)
        try:
            assert splice_mode(loader.links_dir) == mode, loader.skipped
            with NodeMaps(loader.maps_dir) as maps:
                assert maps.msg_splice == (mode == "sk_msg")
                yield Node(ns, tree, loader, maps)
        finally:
            loader.remove()


def stream_both_ways(total: int, outcome: dict[str, Any]) -> Any:
    """Server behaviour: send `total` bytes of the numbered stream while reading to EOF."""

    def serve(conn: socket.socket) -> None:
        def sender() -> None:
            outcome["sent_sha"] = send_stream(conn, total)
            conn.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=sender)
        thread.start()
        outcome["received"], outcome["received_sha"] = read_to_eof(conn)
        thread.join()

    return serve


SK_MSG_ONLY = pytest.mark.parametrize("node", ["sk_msg"], indirect=True)


@SK_MSG_ONLY
def test_one_gib_each_way_arrives_intact_at_both_ends(node: Node) -> None:
    at_server: dict[str, Any] = {}
    with (
        splice_bed(node, AMBIENT, 7201) as bed,
        bed.server(stream_both_ways(GIB, at_server)) as server,
    ):
        at_client = bed.client("stream", GIB)
        server.join(30)
        (result,) = bed.wait_for_results(1, 30)

    assert "error" not in at_client, at_client
    assert server.outcomes == []
    assert (at_client["received"], at_server["received"]) == (GIB, GIB)
    assert at_client["received_sha"] == at_server["sent_sha"]  # server -> client, in order
    assert at_server["received_sha"] == at_client["sent_sha"]  # client -> server, in order
    assert (result.a_to_b, result.b_to_a, result.reset) == (GIB, GIB, False)
    stats = node.maps.stats(bed.client_workload)
    assert stats is not None
    assert stats.spliced_bytes >= GIB  # most of it moved in the kernel, counted for the client
    print(f"1 GiB each way in {at_client['seconds']:.1f} s")


def test_client_half_close_reaches_the_server_which_still_answers(node: Node) -> None:
    def serve(conn: socket.socket) -> None:
        data = recv_all(conn)  # returns only once the client's FIN came through
        conn.sendall(b"got %d bytes after your FIN\n" % len(data))

    with splice_bed(node, AMBIENT, 7202) as bed, bed.server(serve) as server:
        out = bed.client("stream", 3 << 20)  # sends 3 MiB, half-closes, reads to EOF
        server.join(10)
        (result,) = bed.wait_for_results(1, 10)
    assert out.get("received") == len(b"got 3145728 bytes after your FIN\n"), out
    assert server.outcomes == []
    assert not result.reset


def test_server_half_close_reaches_the_client_which_still_sends(node: Node) -> None:
    received: dict[str, Any] = {}

    def serve(conn: socket.socket) -> None:
        conn.sendall(GREETING)
        conn.shutdown(socket.SHUT_WR)  # the client must see EOF while it can still send
        received["count"], received["sha"] = read_to_eof(conn)

    with splice_bed(node, AMBIENT, 7203) as bed, bed.server(serve) as server:
        out = bed.client("late-send", 5 << 20)
        server.join(10)
        (result,) = bed.wait_for_results(1, 10)
    assert out.get("greeting") == GREETING.decode(), out
    assert received == {"count": 5 << 20, "sha": out["sent_sha"]}
    assert out["rest"] == 0
    assert not result.reset


def test_a_half_closed_client_reading_late_still_gets_the_whole_reply(node: Node) -> None:
    """The server answers after the client's FIN and closes; the client reads only later, when
    the server's FIN has already closed its connection. Nothing may be lost meanwhile (bytes
    queued in a socket's sockmap state, not in TCP's receive queue, would be)."""
    echoed: dict[str, Any] = {}

    def serve(conn: socket.socket) -> None:
        echoed["count"], echoed["sha"] = read_to_eof(conn)
        send_stream(conn, 4 << 20)
        conn.shutdown(socket.SHUT_WR)

    with splice_bed(node, AMBIENT, 7208) as bed, bed.server(serve) as server:
        out = bed.client("late-read", 1 << 20)
        server.join(10)
        (result,) = bed.wait_for_results(1, 10)
    assert server.outcomes == []
    assert echoed == {"count": 1 << 20, "sha": out["sent_sha"]}
    assert (out["received"], out["received_sha"]) == (4 << 20, send_stream(None, 4 << 20))
    assert not result.reset


def test_client_reset_resets_the_server_side(node: Node) -> None:
    seen: list[str] = []

    def serve(conn: socket.socket) -> None:
        conn.sendall(GREETING)
        try:
            recv_all(conn)
            seen.append("eof")
        except ConnectionResetError:
            seen.append("reset")

    with splice_bed(node, AMBIENT, 7204) as bed, bed.server(serve) as server:
        out = bed.client("reset")
        server.join(10)
        (result,) = bed.wait_for_results(1, 10)
    assert out == {"greeting": GREETING.decode()}
    assert seen == ["reset"]
    assert result.reset


def test_server_reset_resets_the_client_side(node: Node) -> None:
    def serve(conn: socket.socket) -> None:
        conn.recv(1 << 16)  # the client's first bytes: the connection is spliced by now
        reset(conn)

    with splice_bed(node, AMBIENT, 7205) as bed, bed.server(serve) as server:
        out = bed.client("expect-reset")
        server.join(10)
        (result,) = bed.wait_for_results(1, 10)
    assert out == {"outcome": "reset"}
    assert result.reset


@SK_MSG_ONLY
def test_bytes_sent_at_once_by_both_ends_arrive_in_order_on_many_connections(node: Node) -> None:
    """Each client writes 40 times right after connect() and each server greets right after
    accept(): bytes that travel before the agent registered the pair and bytes that travel
    after must reach the other end in the order they were sent."""

    def serve(conn: socket.socket) -> None:
        for i in range(0, len(GREETING), 4):  # several writes, the first right after accept()
            conn.sendall(GREETING[i : i + 4])
        while data := conn.recv(1 << 16):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    with splice_bed(node, AMBIENT, 7206) as bed, bed.server(serve) as server:
        out = bed.client("early", EARLY_CONNECTIONS)
        server.join(10)
        results = bed.wait_for_results(EARLY_CONNECTIONS, 30)
    if out["wrong"]:
        print("WRONG", out["wrong"])
        print("RESULTS", sorted({(r.a_to_b, r.b_to_a, r.reset) for r in results}))
        print("SERVER", server.outcomes)
    assert out == {"connections": EARLY_CONNECTIONS, "wrong": []}
    assert server.outcomes == []
    assert len(results) == EARLY_CONNECTIONS
    assert not any(r.reset for r in results)
    request = sum(len(b"".join(early_request(i))) for i in range(EARLY_CONNECTIONS))
    total = 2 * request + EARLY_CONNECTIONS * len(GREETING)
    stats = node.maps.stats(bed.client_workload)
    assert stats is not None
    # Both paths were taken: the agent forwarded early bytes, and the kernel moved later ones.
    assert 0 < stats.spliced_bytes < total


def test_agent_maps_reports_the_splice_mode_and_each_live_pair(node: Node) -> None:
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    with splice_bed(node, AMBIENT, 7207) as bed, bed.server(echo):
        client = bed.start_client("hold")
        try:
            assert client.stdout is not None
            assert client.stdin is not None
            pings = {"echoes": ["ping\n"] * HOLD_PINGS}
            assert json.loads(client.stdout.readline()) == pings
            report = maps_report(node.loader.scope_dir, node.maps)["splice"]
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.wait(10) == 0
        finally:
            client.kill()
        bed.wait_for_results(1, 10)

    mode = "sk_msg" if node.maps.msg_splice else "sk_skb"
    assert report["mode"] == mode
    if mode == "sk_skb":
        assert report["pairs"] == []  # the sk_skb splice keeps no per-pair switch state
        return
    # The client's socket and the server's. A socket switches at its first send after the
    # agent has forwarded what it sent by TCP: by the last ping the agent has caught up.
    assert len(report["pairs"]) == 2
    for pair in report["pairs"]:
        assert pair["mode"] in {"direct", "through the agent"}
        assert pair["forwarded_bytes"] == pair["passed_tcp_bytes"]
        assert pair["passed_tcp_bytes"] + pair["direct_bytes"] == 5 * HOLD_PINGS
    assert any(pair["mode"] == "direct" for pair in report["pairs"])
    # Each sends onto the agent's socket facing the other: its own tuple, turned around.
    client_end, server_end = sorted(report["pairs"], key=lambda p: p["socket"])
    assert client_end["sends_to"] == turned_around(server_end["socket"])
    assert server_end["sends_to"] == turned_around(client_end["socket"])


def turned_around(tuple_text: str) -> str:
    local, remote = tuple_text.split("->")
    return f"{remote}->{local}"
