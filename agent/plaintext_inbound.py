"""Plaintext inbound (15006): non-mesh clients' TCP to PERMISSIVE meshed workloads, via the agent.

A client outside the mesh has no SVID, so it cannot speak HBONE; in PERMISSIVE mode (the
default) it may still reach a meshed workload, but through the agent, so L4 policy applies to
it with no identity (a rule naming principals or namespaces never matches it) and the
connection is counted and logged (`connection_security_policy="none"`). The node steers those
connections here (agent.runtime.plaintext_redirect: TPROXY keeps the original destination as
the accepted socket's local address). A STRICT workload never gets one: it is not redirected,
and eBPF drops what reaches it around the agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Address

from agent.policy import ConnectionAttributes, DecisionCache
from agent.state import NodeState
from agent.telemetry import ConnectionRecord, Telemetry, accounted
from agent.tunnel.connect import open_from
from agent.tunnel.pipe import pipe
from weft.hbone.accept import listening_socket
from weft.hbone.relay import abort_tcp
from weft.model import MutualTLSMode, Workload

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0


def admissible(state: NodeState, address: IPv4Address, port: int) -> Workload | None:
    """The local meshed workload at `address` if it takes plaintext on `port`, else None."""
    target = state.workload_at(address)
    if target is None or target.node != state.node or not state.in_mesh(target):
        return None
    if state.mtls_mode(target, port) != MutualTLSMode.PERMISSIVE:
        return None
    return target


def permissive_addresses(state: NodeState) -> set[IPv4Address]:
    """Local meshed workloads whose default mode is PERMISSIVE: the redirect's address set.

    Per-port STRICT overrides are judged again on accept (`admissible`), so a port that is
    STRICT on a PERMISSIVE workload is closed by the agent rather than let through.
    """
    return {
        w.address
        for w in state.local_workloads()
        if state.in_mesh(w) and state.mtls_mode(w, 0) == MutualTLSMode.PERMISSIVE
    }


class PlaintextInbound:
    """The 15006 listener: judge each redirected connection, then relay it to the workload."""

    def __init__(
        self,
        state: Callable[[], NodeState],
        telemetry: Telemetry,
        agent_address: IPv4Address,
        port: int = 15006,
        original_destination: Callable[[tuple[str, int]], tuple[str, int]] = lambda local: local,
    ) -> None:
        # TPROXY leaves the original destination as the accepted socket's local address; tests
        # on loopback, which have no TPROXY, name it instead.
        self._original_destination = original_destination
        self._state = state
        self._telemetry = telemetry
        self.agent_address = agent_address
        self.port = port
        self._server: asyncio.Server | None = None
        self._decisions = DecisionCache()

    async def start(self, host: str) -> None:
        """Listen on `host`:port; transparent, as TPROXY delivers foreign destinations to it."""
        sock = listening_socket(host, self.port, transparent=not host.startswith("127."))
        self._server = await asyncio.start_server(self.handle, sock=sock, backlog=1024)
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = self._original_destination(writer.get_extra_info("sockname")[:2])
        record = ConnectionRecord("inbound", f"{peer[0]}:{peer[1]}", f"{local[0]}:{local[1]}")
        record.route, record.security = "plaintext", "none"
        await accounted(self._telemetry, record, writer, self._serve(reader, writer, record))

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ConnectionRecord,
    ) -> None:
        source_ip = IPv4Address(record.src.rpartition(":")[0])
        host, _, number = record.dst.rpartition(":")
        address, port = IPv4Address(host), int(number)
        state = self._state()
        source = state.workload_at(source_ip)
        if source is not None:
            record.source_workload = source.metadata.name
            record.source_namespace = source.metadata.namespace
        target = admissible(state, address, port)
        if target is None:
            record.outcome = "denied"
            record.reason = f"{address}:{port} takes no plaintext (not a local PERMISSIVE workload)"
            abort_tcp(writer)
            return
        record.destination_workload = target.metadata.name
        record.destination_namespace = target.metadata.namespace
        record.destination_principal = state.identity(target).uri
        services = state.services_of(target)
        if services:
            record.destination_service = (
                f"{services[0].metadata.name}.{services[0].metadata.namespace}"
            )
        decision = self._decisions.decide(
            state,
            target.address,
            lambda: state.authorization_policies(target),
            ConnectionAttributes(None, source_ip, port),
        )
        record.policy = decision.policy
        record.rule = "" if decision.rule is None else str(decision.rule)
        record.reason = decision.reason
        if not decision.allowed:
            record.outcome = "denied"
            abort_tcp(writer)
            return
        record.endpoint = f"{address}:{port}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                upstream = await open_from(self.agent_address, address, port)
        except (OSError, TimeoutError) as err:
            record.outcome, record.reason = "unavailable", repr(err)
            abort_tcp(writer)
            return
        self._telemetry.connection_opened(record)
        result = await pipe((reader, writer), upstream)
        record.sent_bytes, record.received_bytes = result.a_to_b, result.b_to_a
        record.outcome = "reset" if result.reset else "ok"
