"""Inbound (port 15008): one HBONE listener per local workload, authorizing and connecting to it.

Each listener presents its workload's SVID (agent.tunnel.delivery explains the addressing);
the peer's SPIFFE ID was verified against the trust bundle by TLS, then every CONNECT is judged
by L4 AuthorizationPolicy (agent.policy) and, if allowed, connected to the workload from the
agent's address (the one a STRICT workload accepts). Same-node connections from outbound take
the same decision through `connect_local`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from agent.certs.manager import CertificateManager
from agent.policy import ConnectionAttributes, decide
from agent.state import NodeState
from agent.telemetry import ConnectionRecord, Telemetry
from weft.hbone import HboneServer
from weft.identity import Identity
from weft.model import Workload

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]
IP_TRANSPARENT = 19  # linux/in.h; the socket module does not export it

# authorize() and connect() of one tunnel run in the same task: the record passes between them.
_current: contextvars.ContextVar[ConnectionRecord | None] = contextvars.ContextVar(
    "weft_inbound_record", default=None
)


def forwarded_for(headers: Headers) -> IPv4Address | None:
    """The original client address from `forwarded: for=<ip>` (RFC 7239), if any."""
    for name, value in headers:
        if name.lower() != "forwarded":
            continue
        for part in value.split(";"):
            key, _, raw = part.strip().partition("=")
            if key.lower() == "for":
                try:
                    return IPv4Address(raw.strip('"').split(":")[0])
                except ValueError:
                    return None
    return None


def make_transparent(server: HboneServer) -> None:
    """Let the listener answer for an address this node does not own (the workload's).

    Without IP_TRANSPARENT the kernel accepts the SYN but finds no route for a SYN-ACK from a
    foreign source address. HboneServer has no option for it yet (asked for in the report), so
    the flag is set on its listening socket after start(); it applies from the next SYN on.
    """
    listener = server._server
    assert listener is not None
    if all(sock.getsockname()[0].startswith("127.") for sock in listener.sockets):
        return  # loopback is always local (tests run the tunnel path there, without root)
    for sock in listener.sockets:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def split_authority(authority: str) -> tuple[IPv4Address, int]:
    """`ip:port` -> (ip, port); LookupError (answered 503) for anything else."""
    host, _, port = authority.rpartition(":")
    try:
        address, number = IPv4Address(host), int(port)
    except ValueError:
        raise LookupError(f"authority {authority!r} is not ip:port") from None
    if not 0 < number < 65536:
        raise LookupError(f"authority {authority!r}: port out of range")
    return address, number


class _CountingProtocol(asyncio.StreamReaderProtocol):
    """Counts bytes from the workload and closes the access-log record when the socket closes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        record: ConnectionRecord,
        on_close: Callable[[ConnectionRecord], None],
    ) -> None:
        super().__init__(reader)
        self.record = record
        self._on_close = on_close

    def data_received(self, data: bytes) -> None:
        self.record.received_bytes += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.record.outcome == "ok":
            self.record.outcome = "reset"
        self._on_close(self.record)
        super().connection_lost(exc)


class _CountingWriter(asyncio.StreamWriter):
    def __init__(self, *args: Any, record: ConnectionRecord) -> None:
        super().__init__(*args)
        self.record = record

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.record.sent_bytes += len(data)
        super().write(data)


class Inbound:
    """The HBONE listeners of this node's workloads, kept in step with the node state."""

    def __init__(
        self,
        state: Callable[[], NodeState],
        certs: CertificateManager,
        telemetry: Telemetry,
        agent_address: IPv4Address,
        port: int = 15008,
    ) -> None:
        self._state = state
        self._certs = certs
        self._telemetry = telemetry
        self.agent_address = agent_address
        self.port = port
        self.servers: dict[IPv4Address, tuple[Identity, HboneServer]] = {}

    async def sync(self) -> None:
        """Listen for every local in-mesh workload that has an SVID; stop for departed ones."""
        state = self._state()
        wanted = {w.address: state.identity(w) for w in state.local_workloads() if state.in_mesh(w)}
        for address, (identity, server) in list(self.servers.items()):
            if wanted.get(address) != identity:
                del self.servers[address]
                await server.close()
        for address, identity in wanted.items():
            if address in self.servers or not self._certs.has(identity):
                continue
            server = HboneServer(
                self._certs.server_context(identity),
                self._authorizer(address),
                self._connect,
            )
            await server.start(str(address), self.port)
            make_transparent(server)
            self.servers[address] = (identity, server)
            log.info("HBONE inbound for %s on %s:%d", identity, address, self.port)

    async def close(self) -> None:
        for _, server in self.servers.values():
            await server.close()
        self.servers.clear()

    # --- policy -----------------------------------------------------------------------------

    def _judge(
        self,
        target: Workload,
        source: Identity | None,
        source_ip: IPv4Address | None,
        port: int,
        record: ConnectionRecord,
    ) -> bool:
        state = self._state()
        record.destination_workload = target.metadata.name
        record.destination_namespace = target.metadata.namespace
        record.destination_principal = state.identity(target).uri
        services = state.services_of(target)
        if services:
            s = services[0]
            record.destination_service = f"{s.metadata.name}.{s.metadata.namespace}"
        decision = decide(
            state.authorization_policies(target), ConnectionAttributes(source, source_ip, port)
        )
        record.policy = decision.policy
        record.rule = "" if decision.rule is None else str(decision.rule)
        record.reason = decision.reason
        if decision.audited_by:
            record.reason += f" (audited by {','.join(decision.audited_by)})"
        if not decision.allowed:
            record.outcome = "denied"
        return decision.allowed

    def _authorizer(
        self, listener: IPv4Address
    ) -> Callable[[Identity, str, Headers], asyncio.Future[bool] | Any]:
        async def authorize(peer: Identity, authority: str, headers: Headers) -> bool:
            source_ip = forwarded_for(headers)
            record = ConnectionRecord("inbound", str(source_ip or "?"), authority)
            record.route = "hbone"
            record.security = "mutual_tls"
            record.source_principal = peer.uri
            record.source_namespace = peer.namespace
            source = self._state().workload_at(source_ip) if source_ip is not None else None
            if source is not None:
                record.source_workload = source.metadata.name
            try:
                address, port = split_authority(authority)
            except LookupError as err:
                record.outcome, record.reason = "error", str(err)
                self._telemetry.connection_closed(record)
                return False
            target = self._state().workload_at(address)
            if address != listener or target is None:
                record.outcome = "denied"
                record.reason = f"{authority} is not the workload behind {listener}:{self.port}"
                self._telemetry.connection_closed(record)
                return False
            if not self._judge(target, peer, source_ip, port, record):
                self._telemetry.connection_closed(record)
                return False
            _current.set(record)
            return True

        return authorize

    async def _connect(self, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address, port = split_authority(authority)
        record = _current.get() or ConnectionRecord("inbound", "?", authority)
        record.endpoint = authority
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = _CountingProtocol(reader, record, self._telemetry.connection_closed)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, str(address), port, local_addr=(str(self.agent_address), 0)
            )
        except OSError as err:
            record.outcome, record.reason = "unavailable", repr(err)
            self._telemetry.connection_closed(record)
            raise
        self._telemetry.connection_opened(record)
        return reader, _CountingWriter(transport, protocol, reader, loop, record=record)

    # --- same node --------------------------------------------------------------------------

    async def connect_local(
        self,
        endpoint: Workload,
        source: Identity,
        source_ip: IPv4Address,
        port: int,
        record: ConnectionRecord,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if not self._judge(endpoint, source, source_ip, port, record):
            return None
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    str(endpoint.address), port, local_addr=(str(self.agent_address), 0)
                ),
                5,
            )
        except (OSError, TimeoutError) as err:
            record.outcome, record.reason = "unavailable", repr(err)
            return None
