"""Outbound agent -> HBONE (real mTLS) -> inbound agent -> workload, all on loopback, no root.

Two agents' data paths run in one process: node1's OutboundProxy and node2's Inbound, each with
its own CertificateManager fed by the real CA. Only the kernel's original-destination map is
replaced (FakeOriginalDestinations): capture itself is tested in tests/kernel and tests/e2e.
Every test runs on both HBONE data paths (python, and native: weft._native, where the accepted
socket and the workload's socket go to C bare, without asyncio streams).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sys
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import Any

import pytest

from agent.certs.manager import CertificateManager
from agent.inbound import Inbound
from agent.outbound import OutboundProxy
from agent.telemetry import Telemetry
from tests.resource_yaml import (
    FRONTEND_PRINCIPAL,
    authorization_policy,
    documents,
    namespace,
    service,
    workload,
)
from tests.unit.agent.issuer import InProcessIssuer
from tests.unit.agent.mesh_config import node_state
from weft.hbone import HbonePool
from weft.hbone.native_session import native_available

# Loopback addresses play the workloads: frontend on node1, catalog (the server) on node2.
SHOP_NAMESPACE = namespace("shop")
FRONTEND = workload("frontend", "shop", "127.0.0.3", "node1", service_account="frontend")
CATALOG = (
    workload("catalog", "shop", "127.0.0.2", "node2", service_account="catalog"),
    service("catalog", "shop", "10.96.0.11", 7000, port_name="tcp"),
)
CLUSTER = documents(SHOP_NAMESPACE, FRONTEND, *CATALOG)
DENY_FRONTEND = authorization_policy(
    "no-frontend", "shop", action="DENY", principals=[FRONTEND_PRINCIPAL]
)


# The data path of the agents through_mesh() builds, set per test by the fixture below.
_data_path = {"name": "python"}


@pytest.fixture(autouse=True, params=["python", "native"])
def data_path(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and not native_available():
        pytest.skip("weft._native is not built (pip install -e . with libssl-dev)")
    _data_path["name"] = request.param
    return str(request.param)


class FakeOriginalDestinations:
    """Stands in for the pinned weft_orig_tp map: every connection was meant for `target`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = (IPv4Address(target[0]), target[1], 0)

    def __call__(
        self, peer: tuple[str, int], local: tuple[str, int]
    ) -> tuple[IPv4Address, int, int] | None:
        return self.target


async def echo_server(host: str, port: int) -> asyncio.Server:
    """The workload: echoes, and half-closes after the client does."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, port, reuse_address=True)


async def through_mesh(
    extra_policy: str,
    target: tuple[str, int],
    client: Callable[[int], Awaitable[object]],
    node2_cluster: str = CLUSTER,
) -> tuple[object, Telemetry, Telemetry]:
    issuer = InProcessIssuer(dt.timedelta(hours=1))
    node1 = node_state("node1", CLUSTER)
    node2 = node_state("node2", node2_cluster, extra_policy)
    certs1 = CertificateManager(issuer, issuer.bundle)
    certs2 = CertificateManager(issuer, issuer.bundle)
    certs1.ensure(node1.local_identities())
    certs2.ensure(node2.local_identities())
    for certs, state in ((certs1, node1), (certs2, node2)):
        for identity in state.local_identities():
            assert await certs.wait_issued(identity, 5)
    tel1, tel2 = Telemetry(), Telemetry()
    path = _data_path["name"]
    inbound2 = Inbound(lambda: node2, certs2, tel2, IPv4Address("127.0.0.1"), data_path=path)
    await inbound2.sync()
    inbound1 = Inbound(lambda: node1, certs1, tel1, IPv4Address("127.0.0.1"), data_path=path)
    pool = HbonePool(certs1.client_context, data_path=path)
    outbound = OutboundProxy(lambda: node1, FakeOriginalDestinations(target), pool, inbound1, tel1)
    await outbound.start("127.0.0.1", 0)
    port = outbound.port
    server = await echo_server("127.0.0.2", 7000)
    try:
        result = await client(port)
    finally:
        server.close()
        await outbound.close()
        await inbound2.close()
        await pool.close()
        await certs1.close()
        await certs2.close()
    return result, tel1, tel2


def as_frontend(payload: bytes) -> Callable[[int], Awaitable[bytes | str]]:
    """A client connecting from the frontend's address: send, half-close, read to the end."""

    async def client(port: int) -> bytes | str:
        sock = socket.socket()
        sock.bind(("127.0.0.3", 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        try:
            data = await reader.read()
        except ConnectionResetError:
            return "reset"
        finally:
            writer.close()
        return data

    return client


def run(coroutine: Awaitable[tuple[object, Telemetry, Telemetry]]) -> tuple[object, ...]:
    async def bounded() -> tuple[object, Telemetry, Telemetry]:
        return await asyncio.wait_for(coroutine, 20)

    return asyncio.run(bounded())


def sample(telemetry: Telemetry, name: str, **labels: str) -> float:
    total = 0.0
    for metric in telemetry.registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_service_traffic_crosses_hbone_with_half_close_and_is_counted_on_both_sides() -> None:
    payload = b"weft" * 50_000
    data, tel1, tel2 = run(through_mesh("", ("10.96.0.11", 7000), as_frontend(payload)))
    assert data == payload
    assert isinstance(tel1, Telemetry)
    assert isinstance(tel2, Telemetry)
    assert sample(tel1, "istio_tcp_connections_opened_total", reporter="source") == 1
    assert sample(tel1, "weft_hbone_handshakes_total") == 1
    assert sample(tel1, "weft_hbone_tunnels_opened_total") == 1
    assert sample(tel1, "istio_tcp_sent_bytes_total", destination_service="catalog.shop") == len(
        payload
    )
    assert sample(
        tel2,
        "istio_tcp_received_bytes_total",
        reporter="destination",
        source_principal="spiffe://cluster.local/ns/shop/sa/frontend",
        destination_workload="catalog",
    ) == len(payload)


def test_denied_at_the_destination_the_client_sees_its_connection_fail() -> None:
    data, _, tel2 = run(through_mesh(DENY_FRONTEND, ("10.96.0.11", 7000), as_frontend(b"hello")))
    assert data in (b"", "reset")
    assert isinstance(tel2, Telemetry)
    assert sample(tel2, "weft_connections_refused_total", reason="denied") == 1
    assert sample(tel2, "istio_tcp_connections_opened_total") == 0


def test_unreachable_workload_port_resets_the_client() -> None:
    data, tel1, _ = run(through_mesh("", ("127.0.0.2", 7999), as_frontend(b"hello")))
    assert data in (b"", "reset")
    assert isinstance(tel1, Telemetry)
    assert sample(tel1, "weft_connections_refused_total", reason="unavailable") == 1


def test_the_destination_names_a_source_workload_it_was_not_told_about() -> None:
    """The controller sends node2 only the workloads it may reach (services' endpoints), not
    the frontend: its name comes from the baggage header the source agent sends."""
    without_frontend = documents(SHOP_NAMESPACE, *CATALOG)
    data, _, tel2 = run(
        through_mesh("", ("10.96.0.11", 7000), as_frontend(b"hello"), without_frontend)
    )
    assert data == b"hello"
    assert isinstance(tel2, Telemetry)
    labels = {"reporter": "destination", "source_workload_namespace": "shop"}
    assert sample(tel2, "istio_tcp_connections_opened_total", **labels) == 1
    assert (
        sample(tel2, "istio_tcp_connections_opened_total", source_workload="frontend", **labels)
        == 1
    )


def test_new_connections_share_one_pooled_tls_connection() -> None:
    """A new application connection costs one HTTP/2 stream, not a TLS handshake."""

    async def five_connections(port: int) -> list[bytes | str]:
        return [await as_frontend(b"ping %d" % i)(port) for i in range(5)]

    data, tel1, _ = run(through_mesh("", ("10.96.0.11", 7000), five_connections))
    assert data == [b"ping %d" % i for i in range(5)]
    assert isinstance(tel1, Telemetry)
    assert sample(tel1, "weft_hbone_tunnels_opened_total") == 5
    assert sample(tel1, "weft_hbone_handshakes_total") == 1


def test_on_the_native_path_the_agents_make_no_asyncio_streams_per_connection(
    data_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Native: the accepted socket and the workload's socket go to C bare (no transport,
    StreamReader/Writer, dup and abort per connection); the python path makes them (so the
    count can fail)."""
    made: list[str] = []
    real = asyncio.open_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith(("agent.", "weft.")):
            made.append(caller)
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", counting)

    async def three_connections(port: int) -> list[bytes | str]:
        return [await as_frontend(b"ping %d" % i)(port) for i in range(3)]

    data, _, _ = run(through_mesh("", ("10.96.0.11", 7000), three_connections))
    assert data == [b"ping %d" % i for i in range(3)]
    if data_path == "native":
        assert made == []
    else:  # outbound's accepted socket and inbound's connection to the workload, each time
        assert sorted(set(made)) == ["agent.outbound", "agent.tunnel.connect"]
        assert len(made) == 6
