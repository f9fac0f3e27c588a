"""Plaintext inbound (15006) on loopback: policy with no identity, then a real relay to the pod.

Loopback has no TPROXY, so the original destination is named by the test (the one stand-in);
the redirect itself is exercised in the lab (tests/e2e/test_mesh_features.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
from ipaddress import IPv4Address

import pytest

from agent.plaintext_inbound import PlaintextInbound, permissive_addresses
from agent.state import NodeState
from agent.telemetry import Telemetry
from tests.resource_yaml import (
    CATALOG_CALLERS,
    authorization_policy,
    documents,
    namespace,
    peer_authentication,
    workload,
)
from tests.unit.agent.mesh_config import node_state

CLUSTER = documents(
    namespace("shop"),
    namespace("legacy", ambient=False),
    workload("catalog", "shop", "127.0.0.2", "node2", service_account="catalog"),
    workload("vault", "shop", "127.0.0.4", "node2", service_account="vault"),
    workload("legacy-client", "legacy", "127.0.0.1", "node2"),
    peer_authentication("vault-strict", "shop", "STRICT", app="vault"),
)
LOOPBACK_CLIENTS = authorization_policy(
    "loopback-clients", "shop", app="catalog", ip_blocks=["127.0.0.1/32"]
)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # until the client's FIN: half-close must pass through
    await writer.drain()
    writer.close()


async def exchange(state: NodeState, workload_ip: str) -> tuple[bytes, Telemetry]:
    """Send b'weft' * 1000 through a PlaintextInbound to an echo server at `workload_ip`."""
    pod = await asyncio.start_server(echo, workload_ip, 0)
    pod_port = pod.sockets[0].getsockname()[1]
    telemetry = Telemetry(io.StringIO())
    inbound = PlaintextInbound(
        lambda: state,
        telemetry,
        IPv4Address("127.0.0.1"),
        port=0,
        original_destination=lambda local: (workload_ip, pod_port),
    )
    await inbound.start("127.0.0.1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", inbound.port)
        writer.write(b"weft" * 1000)
        writer.write_eof()
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        writer.close()
        await asyncio.sleep(0.05)  # the agent's side closes and logs
    finally:
        await inbound.close()
        pod.close()
    return data, telemetry


def run(state: NodeState, ip: str) -> tuple[bytes, Telemetry]:
    return asyncio.run(asyncio.wait_for(exchange(state, ip), 20))


def access_lines(telemetry: Telemetry) -> str:
    """What the agent wrote to its access log (turned on by the weft.access logger's level)."""
    assert isinstance(telemetry.access.stream, io.StringIO)
    return telemetry.access.stream.getvalue()


def test_a_permissive_workload_gets_plaintext_through_the_agent_counted_as_insecure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    data, telemetry = run(node_state("node2", CLUSTER), "127.0.0.2")
    assert data == b"weft" * 1000
    metrics = telemetry.exposition().decode()
    assert 'connection_security_policy="none"' in metrics
    assert 'destination_workload="catalog"' in metrics
    assert 'source_workload="legacy-client"' in metrics
    assert '"route": "plaintext"' in access_lines(telemetry)


def test_policy_applies_with_no_identity_a_principal_rule_never_admits_plaintext(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    data, telemetry = run(node_state("node2", CLUSTER, CATALOG_CALLERS), "127.0.0.2")
    assert data == b""
    log = access_lines(telemetry)
    assert '"outcome": "denied"' in log
    assert '"policy": "shop/catalog-callers"' in log


def test_an_ip_block_rule_admits_a_plaintext_client() -> None:
    data, _ = run(node_state("node2", CLUSTER, LOOPBACK_CLIENTS), "127.0.0.2")
    assert data == b"weft" * 1000


def test_a_strict_workload_takes_no_plaintext_even_if_it_reaches_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    data, telemetry = run(node_state("node2", CLUSTER), "127.0.0.4")
    assert data == b""
    assert "takes no plaintext" in access_lines(telemetry)


def test_only_local_meshed_permissive_workloads_are_redirected() -> None:
    assert permissive_addresses(node_state("node2", CLUSTER)) == {IPv4Address("127.0.0.2")}
    assert permissive_addresses(node_state("node1", CLUSTER)) == set()
