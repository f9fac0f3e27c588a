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
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import Any, TypeVar

from agent.addresses import parse_address
from agent.certs.manager import CertificateManager
from agent.policy import ConnectionAttributes, DecisionCache
from agent.state import NodeState
from agent.telemetry import ConnectionRecord, Telemetry
from agent.tunnel.connect import connect_from, open_from
from weft.hbone import HboneServer, RelayResult
from weft.identity import Identity
from weft.model import Workload

log = logging.getLogger(__name__)
_T = TypeVar("_T")

Headers = tuple[tuple[str, str], ...]
CONNECT_TIMEOUT = 5.0

# authorize() and connect() of one tunnel run in the same task: the record passes between them.
_current: contextvars.ContextVar[ConnectionRecord | None] = contextvars.ContextVar(
    "weft_inbound_record", default=None
)


# A source agent sends the same few header blocks again and again: each is parsed once (a
# bounded cache: a block is at most 16 KiB, so at most 4 MiB are held).
@functools.lru_cache(maxsize=256)
def forwarded_for(headers: Headers) -> IPv4Address | None:
    """The original client address from `forwarded: for=<ip>` (RFC 7239), if any."""
    for name, value in headers:
        if name.lower() != "forwarded":
            continue
        for part in value.split(";"):
            key, _, raw = part.strip().partition("=")
            if key.lower() == "for":
                try:
                    return parse_address(raw.strip('"').split(":")[0])
                except ValueError:
                    return None
    return None


@functools.lru_cache(maxsize=256)
def baggage_workload(headers: Headers, peer: Identity) -> str:
    """The source workload's name from the W3C `baggage` the source agent sends (as ztunnel
    does), or "" when absent. Believed only for the namespace the peer's certificate proves."""
    for name, value in headers:
        if name.lower() != "baggage":
            continue
        members = {
            key.strip(): item.split(";")[0].strip()
            for key, _, item in (member.partition("=") for member in value.split(","))
        }
        if members.get("k8s.namespace.name") != peer.namespace:
            return ""
        for key in BAGGAGE_WORKLOAD_KEYS:
            if members.get(key):
                return members[key]
    return ""


# Distinct (peer, authority, header block) judgements an HBONE listener keeps per node state.
AUTHORIZED_MEMO_LIMIT = 1024


def _record_fields(record: ConnectionRecord) -> dict[str, Any]:
    """The fields a judged tunnel's record starts with (its clock starts anew each time)."""
    fields = dict(vars(record))
    del fields["started"]
    return fields


# The keys ztunnel reads a workload's name from, in its order.
BAGGAGE_WORKLOAD_KEYS = (
    "k8s.deployment.name", "k8s.cronjob.name", "k8s.pod.name", "k8s.job.name",
)  # fmt: skip


# Called twice per tunnel (authorize, connect) with the few authorities a node serves.
@functools.lru_cache(maxsize=1024)
def split_authority(authority: str) -> tuple[IPv4Address, int]:
    """`ip:port` -> (ip, port); LookupError (answered 503) for anything else."""
    host, _, port = authority.rpartition(":")
    try:
        address, number = parse_address(host), int(port)
    except ValueError:
        raise LookupError(f"authority {authority!r} is not ip:port") from None
    if not 0 < number < 65536:
        raise LookupError(f"authority {authority!r}: port out of range")
    return address, number


class Inbound:
    """The HBONE listeners of this node's workloads, kept in step with the node state."""

    def __init__(
        self,
        state: Callable[[], NodeState],
        certs: CertificateManager,
        telemetry: Telemetry,
        agent_address: IPv4Address,
        port: int = 15008,
        *,
        data_path: str = "python",
    ) -> None:
        self._state = state
        self.data_path = data_path
        self._certs = certs
        self._telemetry = telemetry
        self.agent_address = agent_address
        self.port = port
        self.servers: dict[IPv4Address, tuple[Identity, HboneServer]] = {}
        self._decisions = DecisionCache()

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
                relayed=self._relayed,
                data_path=self.data_path,
                connect_socket=self._connect_socket,
            )
            # The listener answers for the workload's address, which this node does not own;
            # loopback is always local (tests run the tunnel path there, without root).
            await server.start(str(address), self.port, transparent=not address.is_loopback)
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
        *,
        state: NodeState | None = None,
    ) -> bool:
        state = self._state() if state is None else state
        record.destination_workload = target.metadata.name
        record.destination_namespace = target.metadata.namespace
        record.destination_principal = state.identity(target).uri
        services = state.services_of(target)
        if services:
            s = services[0]
            record.destination_service = f"{s.metadata.name}.{s.metadata.namespace}"
        decision = self._decisions.decide(
            state,
            target.address,
            lambda: state.authorization_policies(target),
            ConnectionAttributes(source, source_ip, port),
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
        # What a tunnel's record says before its bytes (who, to whom, the decision) follows from
        # the node state, the peer, the authority and the header block alone, and a source agent
        # sends the same few again and again: each is judged once per state (a bounded memo),
        # and a tunnel's record is made from that judgement's fields in one call (a judgement
        # cost ~20 Python calls of address hashing and lookups per tunnel).
        memo: dict[tuple[Identity, str, Headers], tuple[dict[str, Any], bool]] = {}
        memo_state: list[NodeState | None] = [None]

        async def authorize(peer: Identity, authority: str, headers: Headers) -> bool:
            state = self._state()
            if state is not memo_state[0]:
                memo.clear()
                memo_state[0] = state
            key = (peer, authority, headers)
            found = memo.get(key)
            if found is None:
                record, allowed = self._authorize(state, listener, peer, authority, headers)
                if len(memo) >= AUTHORIZED_MEMO_LIMIT:
                    memo.clear()
                memo[key] = (_record_fields(record), allowed)
            else:
                fields, allowed = found
                record = ConnectionRecord(**fields)
            if not allowed:
                self._telemetry.connection_closed(record)
                return False
            _current.set(record)
            return True

        return authorize

    def _authorize(
        self,
        state: NodeState,
        listener: IPv4Address,
        peer: Identity,
        authority: str,
        headers: Headers,
    ) -> tuple[ConnectionRecord, bool]:
        """A tunnel's record as far as its CONNECT tells, and whether it may go on."""
        source_ip = forwarded_for(headers)
        record = ConnectionRecord("inbound", str(source_ip or "?"), authority)
        record.route = "hbone"
        record.security = "mutual_tls"
        record.source_principal = peer.uri
        record.source_namespace = peer.namespace
        source = state.workload_at(source_ip) if source_ip is not None else None
        # The controller sends a node only the workloads it may connect to, so a client on
        # another node is usually unknown here: its agent names it in the baggage header.
        record.source_workload = (
            source.metadata.name if source is not None else baggage_workload(headers, peer)
        )
        try:
            address, port = split_authority(authority)
        except LookupError as err:
            record.outcome, record.reason = "error", str(err)
            return record, False
        target = state.workload_at(address)
        if address != listener or target is None:
            record.outcome = "denied"
            record.reason = f"{authority} is not the workload behind {listener}:{self.port}"
            return record, False
        return record, self._judge(target, peer, source_ip, port, record, state=state)

    async def _connect(self, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._connect_counted(authority, open_from)

    async def _connect_socket(self, authority: str) -> socket.socket:
        """_connect() for a native stream: a bare socket, no asyncio transport or streams."""
        return await self._connect_counted(authority, connect_from)

    async def _connect_counted(
        self, authority: str, opener: Callable[[IPv4Address, IPv4Address, int], Awaitable[_T]]
    ) -> _T:
        """Connect to the tunnel's workload with `opener`, from the agent's address; the
        connection is counted as opened, or closed as unavailable when the connect fails."""
        address, port = split_authority(authority)
        record = _current.get() or ConnectionRecord("inbound", "?", authority)
        record.endpoint = authority
        try:
            connection = await opener(self.agent_address, address, port)
        except OSError as err:
            record.outcome, record.reason = "unavailable", repr(err)
            self._telemetry.connection_closed(record)
            raise
        self._telemetry.connection_opened(record)
        return connection

    def _relayed(self, result: RelayResult) -> None:
        """The tunnel's relay ended (in the task that authorized and connected it)."""
        record = _current.get()
        if record is None:
            return
        record.sent_bytes = result.bytes_from_tunnel  # towards the destination workload
        record.received_bytes = result.bytes_to_tunnel
        if result.reset and record.outcome == "ok":
            record.outcome = "reset"
        self._telemetry.connection_closed(record)

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
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await open_from(self.agent_address, endpoint.address, port)
        except (OSError, TimeoutError) as err:
            record.outcome, record.reason = "unavailable", repr(err)
            return None
