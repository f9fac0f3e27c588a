"""Same-node splice end to end (issue 5): a captured client process, the agent's real
splice_connections and a server workload. 1 GiB each way with checksums at both ends, half-close
and reset in each direction, and bytes sent before the agent registered the pair."""

from __future__ import annotations

import socket
import threading
from ipaddress import IPv4Address
from typing import Any

from kernel_sandbox import AGENT_ADDR, Node
from splice_bed import splice_bed
from splice_peer import GREETING, read_to_eof, recv_all, reset, send_stream

from agent.bpf.maps import Enrollment, Inbound, Mode

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
GIB = 1 << 30
EARLY_CONNECTIONS = 200


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


def test_one_gib_each_way_arrives_intact_at_both_ends(node: Node) -> None:
    at_server: dict[str, Any] = {}
    with (
        splice_bed(node, AMBIENT, 7201) as bed,
        bed.server(stream_both_ways(GIB, at_server)) as server,
    ):
        at_client = bed.client("stream", GIB)
        server.join(30)
        (result,) = bed.wait_for_results(1, 30)

    print("RESULT", result, at_client, at_server)
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


def test_bytes_sent_at_once_by_both_ends_arrive_in_order_on_many_connections(node: Node) -> None:
    """Each client writes 40 times right after connect() and each server greets right after
    accept(): bytes that travel before the agent registered the pair and bytes that travel
    after must reach the other end in the order they were sent."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(GREETING)
        while data := conn.recv(1 << 16):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    with splice_bed(node, AMBIENT, 7206) as bed, bed.server(serve) as server:
        out = bed.client("early", EARLY_CONNECTIONS)
        server.join(10)
        results = bed.wait_for_results(EARLY_CONNECTIONS, 30)
    assert out == {"connections": EARLY_CONNECTIONS, "wrong": []}
    assert server.outcomes == []
    assert len(results) == EARLY_CONNECTIONS
    assert not any(r.reset for r in results)
