"""The client side of a proxied connection: who is calling, its connection, and what is learnt
about each of its requests on the way through the waypoint (which becomes the request's
metrics and access-log line)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from waypoint.channel import Reader, SocketChannel, Writer
from waypoint.http1 import Event, Http1Error, Request, RequestParser
from waypoint.telemetry import RequestRecord
from waypoint.tunnel_channel import TunnelChannel
from weft.identity import Identity

Headers = tuple[tuple[str, str], ...]
READ_SIZE = 64 * 1024
# Readers that take a timeout themselves (one timer, armed only when nothing is buffered).
TIMED_READERS = (SocketChannel, TunnelChannel)

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing this proxy rewrites on each side.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "content-length", "expect", "http2-settings",
    }
)  # fmt: skip


def end_to_end(headers: Headers) -> list[tuple[str, str]]:
    """Drop hop-by-hop fields, including those the Connection header names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


class DownstreamBodyError(Exception):
    """The client broke its request body (or left) while it was being streamed upstream."""

    def __init__(self, cause: Http1Error | ConnectionError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class Downstream:
    """Who calls and where to: from the HBONE tunnel (its peer's SVID, its `:authority`), or,
    on plain TCP, only the peer address. A tunnel's destination decides the service; a Host
    header never overrides it, so a client cannot pick another service by spoofing Host."""

    source_ip: str | None = None
    identity: Identity | None = None  # the peer's SPIFFE identity (mutual TLS)
    destination: str | None = None  # the tunnel's authority: service VIP:port or host:port


@dataclass
class ClientConnection:
    """The downstream connection: its parser and events not consumed yet."""

    reader: Reader
    writer: Writer
    parser: RequestParser
    downstream: Downstream
    pending: deque[Event] = field(default_factory=deque)
    failure: Http1Error | None = None  # the parser failed after the events still pending

    async def next_event(self, timeout_s: float | None = None) -> Event:
        """The next request event; TimeoutError if no byte arrives for `timeout_s`."""
        pending = self.pending
        while not pending:
            if self.failure is not None:
                raise self.failure
            reader = self.reader
            if timeout_s is None:
                data = await reader.read(READ_SIZE)
            elif isinstance(reader, TIMED_READERS):
                data = await reader.read(READ_SIZE, timeout_s)
            else:
                # asyncio.timeout arms one timer; wait_for would start a task per read.
                async with asyncio.timeout(timeout_s):
                    data = await reader.read(READ_SIZE)
            self.feed(data)
        return pending.popleft()

    async def next_event_or_none(self, timeout_s: float) -> Event | None:
        """One read (TimeoutError if nothing comes within `timeout_s`): its first event, or
        None when those bytes did not complete one (a request head still on its way)."""
        reader = self.reader
        if isinstance(reader, TIMED_READERS):
            data = await reader.read(READ_SIZE, timeout_s)
        else:
            async with asyncio.timeout(timeout_s):
                data = await reader.read(READ_SIZE)
        self.feed(data)
        return self.pending.popleft() if self.pending else None

    def feed(self, data: bytes) -> None:
        """Parse bytes read from the client (b"": it closed its side) into pending events."""
        try:
            self.pending.extend(self.parser.feed(data) if data else self.parser.feed_eof())
        except Http1Error as error:
            if not error.events:
                raise
            self.pending.extend(error.events)  # serve what came before; fail after them
            self.failure = error

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Exchange:
    """What is learnt about one request as it goes; becomes its RequestRecord."""

    request: Request
    started: float
    start_time: str
    request_id: str
    trace_id: str = "-"
    route_name: str = "-"
    upstream_cluster: str = "-"
    upstream_host: str = "-"
    attempts: int = 0
    authz_policy: str = "-"
    audit_policies: tuple[str, ...] = ()
    destination_service: str = "unknown"
    identity: Identity | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    status: int = 0
    flags: str = "-"
    grpc_status: str = ""  # the grpc-status answered to a gRPC request ("" otherwise)
    body_read: bool = False  # the request's EndOfMessage has been consumed

    def record(self, duration_ms: float) -> RequestRecord:
        """The request's telemetry record, with Istio's source labels when the peer is known."""
        request = self.request
        service = self.destination_service
        name, _, rest = service.partition(".")
        return RequestRecord(
            start_time=self.start_time,
            method=request.method,
            path=request.target,
            authority=request.header("host") or "-",
            protocol=f"HTTP/{request.http_version}",
            response_code=self.status,
            response_flags=self.flags,
            grpc_response_status=self.grpc_status,
            duration_ms=duration_ms,
            bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent,
            request_id=self.request_id,
            trace_id=self.trace_id,
            route_name=self.route_name,
            upstream_cluster=self.upstream_cluster,
            upstream_host=self.upstream_host,
            attempts=self.attempts,
            authz_policy=self.authz_policy,
            audit_policies=self.audit_policies,
            user_agent=request.header("user-agent") or "-",
            destination_service=service,
            destination_service_name=name if rest else "unknown",
            destination_service_namespace=rest.split(".")[0] if rest else "unknown",
            **source_labels(self.identity),
        )


def split_authority(authority: str) -> tuple[str, str]:
    """`host:port`, `[v6]:port` or `host` -> (host, port or "")."""
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1 :]
        return authority[1:end], rest[1:] if rest.startswith(":") else ""
    name, _, port = authority.partition(":")
    return name, port


def source_labels(identity: Identity | None) -> dict[str, str]:
    """Istio's source labels; the workload name is not known from an SVID, so it stays unknown."""
    if identity is None:
        return {}
    return {
        "source_principal": identity.uri,
        "source_workload_namespace": identity.namespace,
        "connection_security_policy": "mutual_tls",
    }


def note_downstream_failure(exchange: Exchange, error: Exception) -> None:
    if isinstance(error, Http1Error):
        exchange.status, exchange.flags = error.status, "downstream_protocol_error"
    else:
        exchange.flags = "downstream_disconnect"


@dataclass(frozen=True)
class RequestBody:
    """A request body read ahead: `data` complete, or its first part with the rest to stream."""

    data: bytes
    complete: bool
