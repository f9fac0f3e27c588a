"""Same-node splice (issue 5): once the agent hands an authorized pair of sockets to the kernel,
bytes cross between them without reaching the agent, and are counted for the source workload."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

from kernel_sandbox import AGENT_ADDR, SERVER_ADDR, Listeners, Node

from agent.bpf.loader import cgroup_id
from agent.bpf.maps import Enrollment, Inbound, Mode
from agent.capture.splice import Splice, socket_cookie

AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, IPv4Address(AGENT_ADDR))
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
TIMEOUT_S = 10.0


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def tcp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    return s


@contextlib.contextmanager
def accepted_at_the_agent(
    node: Node, port: int
) -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """In the node's netns: a client connected to the agent's AGENT_ADDR:port, the agent's
    accepted end of it (downstream), and an upstream socket not yet connected."""

    def make_listener() -> socket.socket:
        s = tcp_socket()
        s.bind((AGENT_ADDR, port))
        s.listen(1)
        return s

    with (
        node.netns.socket_in(make_listener) as agent_listener,
        node.netns.socket_in(tcp_socket) as client,
        node.netns.socket_in(tcp_socket) as upstream,
    ):
        client.connect((AGENT_ADDR, port))
        downstream, _ = agent_listener.accept()
        with downstream:
            yield client, downstream, upstream


def test_spliced_pair_carries_both_directions_without_the_agent_reading_a_byte(
    node: Node, node_listen: Listeners
) -> None:
    workload = cgroup_id(node.workload("splice-src", AMBIENT))
    node_listen(SERVER_ADDR, 7070, "server")  # answers b"server:" + everything it read

    with accepted_at_the_agent(node, 15101) as (client, downstream, upstream):
        downstream.settimeout(TIMEOUT_S)
        upstream.connect((SERVER_ADDR, 7070))
        splice = Splice(node.maps, downstream, upstream, workload)
        splice.start()

        client.sendall(PAYLOAD)
        client.shutdown(socket.SHUT_WR)
        # The agent's only job now is to pass on each end of stream (a FIN is not data).
        assert splice.forward_until_eof(downstream, TIMEOUT_S) == 0  # no byte came up
        splice.pass_end_of_stream(downstream, TIMEOUT_S)
        # The server's answer went by in the kernel too; only its FIN came up.
        assert splice.forward_until_eof(upstream, TIMEOUT_S) == 0
        splice.pass_end_of_stream(upstream, TIMEOUT_S)
        reply = read_to_eof(client)
        splice.stop()

    assert reply == b"server:" + PAYLOAD
    stats = node.maps.stats(workload)
    assert stats is not None
    assert stats.spliced_bytes == len(PAYLOAD) + len(reply)


def test_socket_cookie_is_stable_and_distinct_per_socket() -> None:
    with socket.socket() as a, socket.socket() as b:
        assert socket_cookie(a) == socket_cookie(a)
        assert socket_cookie(a) != socket_cookie(b)


def test_a_request_queued_before_the_splice_started_is_sent_on_without_further_data(
    node: Node, node_listen: Listeners
) -> None:
    server = node_listen(SERVER_ADDR, 7071, "server")

    with accepted_at_the_agent(node, 15102) as (client, downstream, upstream):
        upstream.connect((SERVER_ADDR, 7071))
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # sent before the agent has decided
        assert select.select([downstream], [], [], TIMEOUT_S)[0]  # queued at the agent
        splice = Splice(node.maps, downstream, upstream, 0)
        splice.start()
        # The client sends nothing more; the queued request must still go on by itself.
        deadline = time.monotonic() + TIMEOUT_S
        cookie = socket_cookie(downstream)
        while not (node.maps.spliced_from(cookie) and splice.drained(downstream)):
            assert time.monotonic() < deadline, "the queued request was never sent on"
            time.sleep(0.01)
        client.shutdown(socket.SHUT_WR)
        assert splice.forward_until_eof(downstream, TIMEOUT_S) == 0
        splice.pass_end_of_stream(downstream, TIMEOUT_S)
        splice.forward_until_eof(upstream, TIMEOUT_S)
        splice.pass_end_of_stream(upstream, TIMEOUT_S)
        assert read_to_eof(client) == b"server:GET / HTTP/1.1\r\n\r\n"
        splice.stop()
    assert [a.data for a in server.accepted] == [b"GET / HTTP/1.1\r\n\r\n"]
