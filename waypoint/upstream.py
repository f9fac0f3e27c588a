"""The asyncio side of one concrete backend: its endpoints, pooled connections and attempts.

The decisions (which endpoint, whether a connection may open, whether an endpoint is ejected)
are made by resilience.py's state machines; this module only opens sockets, moves bytes and
reports outcomes back to them. How an endpoint is reached is injected (`connect`): plain TCP by
default, HBONE through outbound.py in the mesh.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from waypoint.channel import Reader, Writer, open_channel
from waypoint.config import TrafficPolicy
from waypoint.http1 import (
    LAST_CHUNK,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Http1Error,
    Response,
    ResponseParser,
    Upgraded,
    encode_chunk,
)
from waypoint.http2 import H2Peer
from waypoint.resilience import (
    Balancer,
    Clock,
    Failure,
    Grant,
    OpenConnection,
    OutlierDetector,
    Overflow,
    Queued,
    RandomSource,
    UpstreamConnection,
    UpstreamPool,
    UseConnection,
    make_balancer,
)

Headers = tuple[tuple[str, str], ...]
READ_SIZE = 64 * 1024
HTTP2_STREAMS = 100  # concurrent streams per upstream HTTP/2 connection before dialling another


@dataclass
class UpstreamStream:
    """An open TCP connection to an endpoint and the parser of its responses."""

    reader: Reader
    writer: Writer
    parser: ResponseParser
    pending: deque[Event] = field(default_factory=deque)
    failure: Http1Error | None = None  # the parser failed after the events still pending

    @property
    def stale(self) -> bool:
        """An idle connection the backend has closed (or that holds bytes nobody asked for)."""
        return (
            self.reader.at_eof()
            or self.writer.is_closing()
            or bool(self.pending)
            or self.failure is not None
        )

    async def next_event(self) -> Event:
        """The next response event; ConnectionError if the backend closed mid-response."""
        pending = self.pending
        while not pending:
            if self.failure is not None:
                raise self.failure
            data = await self.reader.read(READ_SIZE)
            try:
                pending.extend(self.parser.feed(data) if data else self.parser.feed_eof())
            except Http1Error as error:
                if not error.events:
                    raise
                pending.extend(error.events)  # what came before the error goes through first
                self.failure = error
        return pending.popleft()

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class NoHealthyEndpoint:
    """Every endpoint is ejected, or the backend has none."""


@dataclass(frozen=True)
class CircuitOpen:
    limit: str


@dataclass
class Attempt:
    """A try in flight or answered: the endpoint, the connection and, once it came, the head."""

    endpoint: str
    connection: UpstreamConnection
    stream: UpstreamStream | None = None
    response: Response | None = None
    close_after: bool = False


AttemptResult = Attempt | Failure | NoHealthyEndpoint | CircuitOpen

# connect(endpoint "ip:port") -> an open byte stream to it. OSError, LookupError or TimeoutError
# mean a connect failure. Plain TCP by default; HBONE (waypoint.outbound) in the mesh.
ConnectEndpoint = Callable[[str], Awaitable[tuple[Reader, Writer]]]


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`ip:port` or `[v6]:port` -> (ip, port)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


async def connect_tcp(endpoint: str) -> tuple[Reader, Writer]:
    host, port = split_endpoint(endpoint)
    channel = await open_channel(host, port)
    return channel, channel


class UpstreamBackend:
    """One concrete backend (a service:port a route sends to) and its endpoints."""

    def __init__(
        self,
        authority: str,
        endpoints: Sequence[str],
        policy: TrafficPolicy,
        *,
        clock: Clock,
        random: RandomSource,
        connect_timeout_s: float = 1.0,
        connect: ConnectEndpoint | None = None,
    ) -> None:
        self.authority = authority
        self.policy = policy
        self.connect = connect or connect_tcp
        self.endpoints = list(endpoints)
        self.pool = UpstreamPool(policy.connection_pool)
        self.balancer: Balancer = make_balancer(policy.load_balancer, random)
        self.outliers: OutlierDetector | None = None
        if policy.outlier_detection is not None:
            self.outliers = OutlierDetector(policy.outlier_detection, clock)
            self.outliers.set_endpoints(self.endpoints)
        self.connect_timeout_s = connect_timeout_s
        self._streams: dict[int, UpstreamStream] = {}
        self._http2: dict[str, tuple[H2Peer, asyncio.Task[None]]] = {}
        self._waiters: dict[int, asyncio.Future[Grant]] = {}

    async def attempt(
        self,
        method: str,
        head: bytes,
        body: bytes,
        headers: Headers,
        body_tail: AsyncIterator[bytes] | None = None,
    ) -> AttemptResult:
        """Pick an endpoint, get a connection, send the request and read the response head.

        `body` is sent as given (already framed); `body_tail`, for a body too large to buffer,
        yields the rest, which is sent chunk-encoded and ends with the last chunk."""
        endpoint = self.pick_endpoint(headers)
        if endpoint is None:
            return NoHealthyEndpoint()
        acquired = self.pool.acquire(endpoint)
        self._close_traded()
        if isinstance(acquired, Overflow):
            return CircuitOpen(acquired.limit)
        if isinstance(acquired, Queued):
            grant = await self._wait_for_grant(acquired.ticket)
        else:
            grant = acquired
        return await self._run(grant, method, head, body, body_tail)

    def pick_endpoint(self, headers: Headers) -> str | None:
        """An endpoint that is not ejected, chosen by the DestinationRule's load balancer."""
        available = self.outliers.available(self.endpoints) if self.outliers else self.endpoints
        return self.balancer.pick(available, headers)

    def record(self, endpoint: str, status: int | None) -> None:
        """An exchange with `endpoint` ended with `status` (None: no response), for outlier
        detection."""
        self._record(endpoint, status)

    async def _wait_for_grant(self, ticket: int) -> Grant:
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        try:
            return await future
        except asyncio.CancelledError:
            self._waiters.pop(ticket, None)
            self.pool.cancel(ticket)
            if future.done() and not future.cancelled():
                self._give_back(future.result())
            raise

    async def _run(
        self,
        grant: Grant,
        method: str,
        head: bytes,
        body: bytes,
        body_tail: AsyncIterator[bytes] | None,
    ) -> AttemptResult:
        connection = grant.connection
        endpoint = connection.endpoint
        attempt = Attempt(endpoint, connection, close_after=grant.close_after)
        pooled = self._streams.get(connection.id)
        if pooled is not None and pooled.stale:
            # The backend closed this idle keep-alive connection: reconnect in the same pool
            # slot rather than send into a dead socket and fail the request.
            pooled.close()
            del self._streams[connection.id]
        if isinstance(grant, OpenConnection) or connection.id not in self._streams:
            try:
                reader, writer = await asyncio.wait_for(
                    self.connect(endpoint), self.connect_timeout_s
                )
            except (OSError, LookupError, TimeoutError):
                self._record(endpoint, None)
                self._dispatch(self.pool.connection_failed(connection))
                return Failure.CONNECT_FAILURE
            except asyncio.CancelledError:
                self._dispatch(self.pool.connection_failed(connection))
                raise
            self._streams[connection.id] = UpstreamStream(reader, writer, ResponseParser())
        stream = self._streams[connection.id]
        attempt.stream = stream
        self.balancer.started(endpoint)
        try:
            stream.parser.expect(method)
            stream.writer.write(head + body)
            await stream.writer.drain()
            if body_tail is not None:
                async for piece in body_tail:
                    stream.writer.write(encode_chunk(piece))
                    await stream.writer.drain()
                stream.writer.write(LAST_CHUNK)
                await stream.writer.drain()
            attempt.response = await self._read_head(stream)
        except (ConnectionError, Http1Error):
            # A malformed response counts as no response: the client gets a 503, not garbage.
            self.finish(attempt, reusable=False)
            self._record(endpoint, None)
            return Failure.RESET
        except BaseException:
            # Cancelled (a timeout fired) or the client's own body failed: the connection is
            # in an unknown state, never reused.
            self.finish(attempt, reusable=False)
            raise
        self._record(endpoint, attempt.response.status)
        return attempt

    async def _read_head(self, stream: UpstreamStream) -> Response:
        while True:
            event = await stream.next_event()
            if isinstance(event, Response) and (not event.informational or event.status == 101):
                return event  # 101: the backend accepted an upgrade; the proxy splices
            if isinstance(event, Upgraded):
                raise ConnectionResetError("backend switched protocols without a 101")
            if isinstance(event, ConnectionClosed):
                raise ConnectionResetError("backend closed the connection before responding")
            # 1xx heads are dropped: the waypoint answered 100-continue to the client itself.

    async def body_events(self, attempt: Attempt) -> list[Event]:
        """The next piece of the response body (Data) or its end (EndOfMessage)."""
        assert attempt.stream is not None
        event = await attempt.stream.next_event()
        if not isinstance(event, (Data, EndOfMessage)):
            raise ConnectionResetError(f"unexpected {type(event).__name__} in a response body")
        return [event]

    async def splice(self, attempt: Attempt, reader: Reader, writer: Writer) -> tuple[int, int]:
        """After a 101, copy bytes both ways between the client and this attempt's connection
        until both sides have closed; returns (bytes to the backend, bytes to the client)."""
        stream = attempt.stream
        assert stream is not None
        early = b"".join(e.data for e in stream.pending if isinstance(e, Upgraded))
        stream.pending.clear()
        if early:
            writer.write(early)

        async def copy(source: Reader, sink: Writer) -> int:
            copied = 0
            try:
                while data := await source.read(READ_SIZE):
                    sink.write(data)
                    await sink.drain()
                    copied += len(data)
                if sink.can_write_eof():
                    sink.write_eof()
            except ConnectionError:
                sink.close()
            return copied

        try:
            up, down = await asyncio.gather(
                copy(reader, stream.writer), copy(stream.reader, writer)
            )
        finally:
            self.finish(attempt, reusable=False)
        return up, down + len(early)

    def finish(self, attempt: Attempt, reusable: bool) -> None:
        """The exchange on this attempt's connection is over; reuse or close it."""
        self.balancer.finished(attempt.endpoint)
        stream = self._streams.get(attempt.connection.id)
        keep = (
            reusable
            and not attempt.close_after
            and stream is not None
            and attempt.endpoint in self.endpoints  # removed by discovery meanwhile: close
        )
        if not keep:
            closing = self._streams.pop(attempt.connection.id, None)
            if closing is not None:
                closing.close()
        self._dispatch(self.pool.release(attempt.connection, reusable=keep))

    def _record(self, endpoint: str, status: int | None) -> None:
        if self.outliers is not None:
            self.outliers.record(endpoint, status)

    def _dispatch(self, grants: list[tuple[int, Grant]]) -> None:
        self._close_traded()
        for ticket, grant in grants:
            waiter = self._waiters.pop(ticket, None)
            if waiter is None or waiter.done():
                self._give_back(grant)
            else:
                waiter.set_result(grant)

    def _give_back(self, grant: Grant) -> None:
        if isinstance(grant, UseConnection):
            self._dispatch(self.pool.release(grant.connection, reusable=True))
        else:
            self._dispatch(self.pool.connection_failed(grant.connection))

    def _close_traded(self) -> None:
        while self.pool.closed_idle:
            stream = self._streams.pop(self.pool.closed_idle.pop().id, None)
            if stream is not None:
                stream.close()

    async def http2_connection(self, endpoint: str) -> H2Peer:
        """A shared HTTP/2 connection to `endpoint`: requests multiplex on it as streams; a new
        one is dialled when it closed or its streams are at the limit. Raises what `connect`
        raises (OSError, LookupError, TimeoutError) when the endpoint cannot be reached."""
        entry = self._http2.get(endpoint)
        if entry is not None and not entry[0].closed and len(entry[0].streams) < HTTP2_STREAMS:
            return entry[0]
        reader, writer = await asyncio.wait_for(self.connect(endpoint), self.connect_timeout_s)
        peer = H2Peer(reader, writer, client_side=True)
        peer.start()
        task = asyncio.get_running_loop().create_task(peer.run())
        self._http2[endpoint] = (peer, task)
        return peer

    def _close_http2(self, keep: Sequence[str] = ()) -> None:
        for endpoint in [e for e in self._http2 if e not in keep]:
            peer, task = self._http2.pop(endpoint)
            task.cancel()
            peer.writer.close()

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """New endpoints from discovery: idle connections to removed ones close now, busy ones
        after their request (finish() will not pool them)."""
        self.endpoints = list(endpoints)
        if self.outliers is not None:
            self.outliers.set_endpoints(self.endpoints)
        self._close_dropped(self.pool.drop_idle(frozenset(self.endpoints)))
        self._close_http2(keep=self.endpoints)

    def retire(self) -> None:
        """This backend's policy changed: close what is idle; requests in flight finish here."""
        self._close_dropped(self.pool.drop_idle())
        self._close_http2()

    def _close_dropped(self, connections: list[UpstreamConnection]) -> None:
        for connection in connections:
            stream = self._streams.pop(connection.id, None)
            if stream is not None:
                stream.close()

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        self._close_http2()
