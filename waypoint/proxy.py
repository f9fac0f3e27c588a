"""The waypoint's asyncio shell: an HTTP/1.1 proxy applying authorization, routing, filters,
retries and timeouts between a client connection and the backends' endpoints.

Every decision is made by the sans-I/O modules (http1, authz, routing, resilience, responses,
telemetry); this module reads and writes bytes, sleeps when a decision says so and arms the
timers the retry machine asks for. Clients arrive on a plain-TCP listener or, through
inbound.py, as HBONE tunnels; endpoints are reached over plain TCP or, through outbound.py,
over HBONE.
"""

from __future__ import annotations

import asyncio
import logging
import random as random_module
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from waypoint import responses
from waypoint.authz import AuthzRequest, evaluate
from waypoint.channel import Reader, SocketChannel, Writer
from waypoint.config import (
    BackendRef,
    FaultInjection,
    RateLimit,
    Route,
    ServiceConfig,
    WaypointConfig,
)
from waypoint.downstream import (
    ClientConnection,
    Downstream,
    DownstreamBodyError,
    Exchange,
    RequestBody,
    end_to_end,
    note_downstream_failure,
    split_authority,
)
from waypoint.fastpath import FastFront, FastPlan
from waypoint.fastpath.pool import Dial
from waypoint.http1 import (
    CONTINUE,
    LAST_CHUNK,
    BodyFraming,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Http1Error,
    Request,
    RequestParser,
    Upgraded,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)
from waypoint.resilience import (
    Clock,
    Deliver,
    Failure,
    GiveUp,
    RandomSource,
    RequestRetries,
    ResponseReceived,
    RouteGuards,
    StartAttempt,
    WaitBackoff,
    decide_fault,
)
from waypoint.routing import (
    Forward,
    NoBackend,
    NoRoute,
    Redirect,
    RouteRequest,
    apply_header_modifier,
    route_request,
)
from waypoint.telemetry import (
    RandomBytes,
    RandomPool,
    RequestRecord,
    WaypointMetrics,
    access_log_line,
    propagate,
    utc_timestamp,
    uuid4_text,
)
from waypoint.upstream import (
    Attempt,
    CircuitOpen,
    ConnectEndpoint,
    NoHealthyEndpoint,
    UpstreamBackend,
)
from weft.access_log import BufferedLog

Headers = tuple[tuple[str, str], ...]


class _HeadTimeoutError(Exception):
    """A request's head did not arrive within request_headers_timeout_s."""


READ_SIZE = 64 * 1024
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ACCESS_LOG = logging.getLogger("weft.waypoint.access")
_NO_BODY = RequestBody(b"", complete=True)


class WaypointProxy:
    """Serves HTTP/1.1 on a listener and forwards to the backends of `config`.

    `endpoints` maps a backend's authority (`name.namespace:port`) to its endpoint addresses
    (`ip:port`). Time and randomness are injected like everywhere else in the waypoint.
    """

    def __init__(
        self,
        config: WaypointConfig,
        endpoints: Mapping[str, Sequence[str]],
        *,
        clock: Clock = time.monotonic,
        random: RandomSource = random_module.random,
        random_bytes: RandomBytes | None = None,
        metrics: WaypointMetrics | None = None,
        access_log: Callable[[RequestRecord], None] | None = None,
        connect_timeout_s: float = 1.0,
        connect: ConnectEndpoint | None = None,
        idle_timeout_s: float = 300.0,
        max_header_bytes: int = 64 * 1024,
        request_headers_timeout_s: float = 10.0,
        access_log_buffer: BufferedLog | None = None,
        fast_path: bool = True,
        reuse_port: bool = False,
        fast_dial: Dial | None = None,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.clock = clock
        self.random = random
        self.random_bytes = random_bytes or RandomPool()
        self.metrics = metrics or WaypointMetrics()
        self.access_log = access_log
        self.connect_timeout_s = connect_timeout_s
        self.connect = connect  # how to reach an endpoint: plain TCP unless told otherwise
        self.idle_timeout_s = idle_timeout_s  # a keep-alive client silent this long is closed
        self.max_header_bytes = max_header_bytes
        # Once a request's first bytes are in, its whole head must follow within this (Envoy's
        # request_headers_timeout): a slowloris client gets 408 and the connection closes.
        self.request_headers_timeout_s = request_headers_timeout_s
        self.guards = RouteGuards()
        self._backends: dict[str, UpstreamBackend] = {}
        self._service_memo: dict[tuple[str | None, str | None], ServiceConfig | None] = {}
        self._memo_config: WaypointConfig | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()  # the running loop keeps weak refs only
        # Access-log lines of the fast path are formatted at this buffer's flush, not per request.
        self.access_log_buffer = access_log_buffer
        self.fast_path = fast_path  # common HTTP/1.1 requests, on the listener and tunnels
        # How the fast path reaches an endpoint when `connect` is injected (HBONE in the mesh);
        # without one, such a proxy serves every request on the general path.
        self.fast_dial = fast_dial
        self.reuse_port = reuse_port  # SO_REUSEPORT: worker processes share the listen port
        self.fast_fronts: set[FastFront] = set()
        self.general_connections = 0  # connections (listener or tunnel) it took from the fast path
        self._fast_plan: FastPlan | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], SocketChannel] = (
            (lambda: FastFront(self)) if self.fast_path else (lambda: SocketChannel(self.accepted))
        )
        self._server = await loop.create_server(
            factory, host, port, reuse_port=self.reuse_port or None
        )
        address = self._server.sockets[0].getsockname()
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep_idle)
        return address[0], address[1]

    def accepted(self, channel: SocketChannel) -> None:
        """Serve a connection on the general path (from the start, or from the fast path)."""
        self.general_connections += 1
        task = asyncio.get_running_loop().create_task(self._serve_plain_tcp(channel))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    def fast_plan(self) -> FastPlan | None:
        """The fast path's tables for the configuration in force; None when endpoints are
        reached through an injected `connect` with no `fast_dial` to match it."""
        if self.connect is not None and self.fast_dial is None:
            return None
        plan = self._fast_plan
        if plan is None or plan.config is not self.config or plan.endpoints is not self.endpoints:
            if plan is not None:
                plan.retire()
            plan = self._fast_plan = FastPlan(
                self.config,
                self.endpoints,
                self._service_for,
                self.random,
                self.fast_dial,
            )
        return plan

    def _sweep_interval(self) -> float:
        return max(0.05, min(1.0, self.idle_timeout_s / 4))

    def _sweep_idle(self) -> None:
        """Close fast-path clients idle between requests for longer than idle_timeout_s (one
        timer for all of them: no timer is armed and cancelled per request)."""
        limit = time.monotonic() - self.idle_timeout_s
        for front in [f for f in self.fast_fronts if f.idle_since < limit and f.idle()]:
            front.close()
        self._sweeper = asyncio.get_running_loop().call_later(
            self._sweep_interval(), self._sweep_idle
        )

    def update(self, config: WaypointConfig, endpoints: Mapping[str, Sequence[str]]) -> None:
        """Apply new configuration (from discovery) without dropping connections: requests in
        flight finish under the config they started with; new ones see the new one."""
        self.config = config
        self.endpoints = endpoints
        if self._fast_plan is not None:  # its idle connections close now, busy ones when done
            self._fast_plan.retire()
            self._fast_plan = None
        for authority, backend in list(self._backends.items()):
            if backend.policy != config.traffic_policy_for(authority):
                del self._backends[authority]  # rebuilt on next use with the new policy
                backend.retire()
            else:
                backend.set_endpoints(endpoints.get(authority, ()))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._fast_plan is not None:
            self._fast_plan.retire()
        for backend in self._backends.values():
            backend.close()

    # --- the client connection ---------------------------------------------------------------

    async def _serve_plain_tcp(self, channel: SocketChannel) -> None:
        if isinstance(channel, FastFront) and channel.downstream is not None:
            await self.serve_connection(channel, channel, channel.downstream)  # an HBONE tunnel
            return
        peer = channel.get_extra_info("peername")
        await self.serve_connection(channel, channel, Downstream(str(peer[0]) if peer else None))

    async def serve_connection(
        self,
        reader: Reader,
        writer: Writer,
        downstream: Downstream | None = None,
    ) -> None:
        """Serve one client connection until it closes: HTTP/1.1, or HTTP/2 when it opens with
        the HTTP/2 connection preface (prior knowledge, as gRPC clients and tunnels do)."""
        downstream = downstream or Downstream()
        parser = RequestParser(self.max_header_bytes)
        client = ClientConnection(reader, writer, parser, downstream)
        try:
            first = await self._first_bytes(reader)
            if first.startswith(HTTP2_PREFACE):
                from waypoint.http2_proxy import Http2Front  # it builds on this module

                await Http2Front(self).serve(reader, writer, downstream, first)
                return
            client.feed(first)
            head_started: float | None = self.clock()  # the first bytes are in
            while True:
                event = await self._next_event(client, head_started)
                head_started = None
                if isinstance(event, ConnectionClosed):
                    break
                if not isinstance(event, Request):
                    continue  # leftovers of a request a local reply did not read: skip
                if not await self._handle(client, event):
                    break
        except Http1Error as error:
            # Nothing of a response has been written when the request parser fails.
            reply = responses.protocol_error(error)
            writer.write(reply.encode(keep_alive=False))
        except _HeadTimeoutError:
            writer.write(responses.request_headers_timeout().encode(keep_alive=False))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client left, or stayed idle past idle_timeout_s: just close
        finally:
            writer.close()

    async def _next_event(self, client: ClientConnection, head_started: float | None) -> Event:
        """The next request event: a keep-alive client may idle up to idle_timeout_s before a
        request begins; from its first bytes (`head_started`, else the first read here) the
        head must be complete within request_headers_timeout_s."""
        if client.pending or client.failure is not None:
            return await client.next_event(self.idle_timeout_s)
        if head_started is None:
            event = await client.next_event_or_none(self.idle_timeout_s)
            if event is not None:
                return event
            head_started = self.clock()
        remaining = self.request_headers_timeout_s - (self.clock() - head_started)
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await client.next_event()
        except TimeoutError:
            raise _HeadTimeoutError from None

    async def _first_bytes(self, reader: Reader) -> bytes:
        """Enough of the first bytes to tell HTTP/2's preface from an HTTP/1.1 request."""
        data = b""
        while len(data) < len(HTTP2_PREFACE) and HTTP2_PREFACE.startswith(data):
            async with asyncio.timeout(self.idle_timeout_s):
                chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            data += chunk
        return data

    async def _handle(self, client: ClientConnection, request: Request) -> bool:
        """Serve one request; False if the client connection must close afterwards."""
        exchange = self.new_exchange(request)
        try:
            return await self._serve(client, exchange)
        except DownstreamBodyError as failure:
            note_downstream_failure(exchange, failure.cause)
            raise failure.cause from None
        except (Http1Error, ConnectionError, TimeoutError) as error:
            note_downstream_failure(exchange, error)
            raise
        finally:
            self.report(exchange)

    async def _serve(self, client: ClientConnection, exchange: Exchange) -> bool:
        if exchange.request.upgrade == "CONNECT":
            reply = responses.LocalReply(501, "connect_not_supported", b"CONNECT is not proxied")
            return await self._reply(client, exchange, reply, keep_alive=False)
        admitted = await self.admit(exchange, client.downstream)
        if isinstance(admitted, responses.LocalReply):
            return await self._reply(client, exchange, admitted)
        return await self._forward(client, exchange, admitted)

    def new_exchange(self, request: Request) -> Exchange:
        """Start the record of one request (HTTP/1.1 or HTTP/2)."""
        return Exchange(
            request=request,
            started=self.clock(),
            start_time=utc_timestamp(time.time()),
            request_id=request.header("x-request-id") or uuid4_text(self.random_bytes),
        )

    async def admit(
        self, exchange: Exchange, downstream: Downstream
    ) -> responses.LocalReply | Forward:
        """Everything decided before a backend is asked, the same for HTTP/1.1 and HTTP/2:
        which service, L7 authorization, the route and its redirect, rate limit and faults."""
        request = exchange.request
        service = self._service_for(downstream.destination, request.header("host"))
        if service is None:
            return responses.route_not_found()
        routing_view = RouteRequest.from_target(request.method, request.target, request.headers)
        exchange.destination_service = service.hostname
        identity = exchange.identity = downstream.identity
        policies = (*self.config.authorization_policies, *service.authorization_policies)
        if policies:  # none: everything is allowed and nothing audited (evaluate's answer)
            decision_authz = evaluate(
                policies,
                AuthzRequest(
                    request.method,
                    routing_view.path,
                    service.port,
                    request.headers,
                    source_principal=identity.uri if identity else None,
                    source_namespace=identity.namespace if identity else None,
                    source_ip=downstream.source_ip,
                    host=request.header("host"),
                ),
            )
            exchange.audit_policies = decision_authz.audited
            exchange.authz_policy = decision_authz.policy or "-"
            if not decision_authz.allowed:
                return responses.rbac_denied()
        decision = route_request(service.routes, routing_view, self.random)
        if isinstance(decision, NoRoute):
            return responses.route_not_found()
        exchange.route_name = decision.matched.route.name
        if isinstance(decision, NoBackend):
            return responses.no_backend()
        if isinstance(decision, Redirect):
            return responses.redirect(decision.status, decision.location)
        if not decision.matched.route.filters:
            return decision  # no rate limit or fault to apply (most routes): no await
        local = await self._apply_guards(decision.matched.route)
        return decision if local is None else local

    def serves(self, destination: str) -> bool:
        """Whether a tunnel to `destination` (VIP:port or hostname:port) reaches a service here."""
        return self._service_for(destination, None) is not None

    def _service_for(self, destination: str | None, host: str | None) -> ServiceConfig | None:
        """The logical service: the tunnel's destination (VIP:port or hostname:port) when there
        is one, else the one the Host header names (full hostname, `name.namespace`, `name`)."""
        # A pure function of the config and the two names, asked on every request with the
        # same few names: remembered until the config changes (bounded against odd Hosts).
        memo = self._service_memo
        if self._memo_config is not self.config or len(memo) > 1024:
            memo.clear()
            self._memo_config = self.config
        key = (destination, host)
        if key in memo:
            return memo[key]
        found = memo[key] = self._find_service(destination, host)
        return found

    def _find_service(self, destination: str | None, host: str | None) -> ServiceConfig | None:
        authority = destination or host
        if authority is None:
            return None
        name, port = split_authority(authority)
        for service in self.config.services:
            short = service.hostname.split(".")
            names = {service.hostname, short[0], ".".join(short[:2]), *service.vips}
            if destination is not None:
                names = {service.hostname, *service.vips}  # tunnels name services exactly
            if name in names and (not port or port == str(service.port)):
                return service
        return None

    async def _apply_guards(self, route: Route) -> responses.LocalReply | None:
        """Local rate limit, then fault injection, in the route's filter order."""
        for route_filter in route.filters:
            if isinstance(route_filter, RateLimit):
                bucket = self.guards.bucket(route.name, route_filter, self.clock)
                if not bucket.try_take():
                    return responses.rate_limited()
            elif isinstance(route_filter, FaultInjection):
                fault = decide_fault(route_filter, self.random)
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.abort_status is not None:
                    return responses.fault_abort(fault.abort_status)
        return None

    # --- forwarding ------------------------------------------------------------------------------

    def backend(self, ref: BackendRef) -> UpstreamBackend:
        """The runtime of a concrete backend, created on first use."""
        backend = self._backends.get(ref.authority)
        if backend is None:
            backend = UpstreamBackend(
                ref.authority,
                self.endpoints.get(ref.authority, ()),
                self.config.traffic_policy_for(ref),
                clock=self.clock,
                random=self.random,
                connect_timeout_s=self.connect_timeout_s,
                connect=self.connect,
            )
            self._backends[ref.authority] = backend
        return backend

    async def _read_body(self, client: ClientConnection, exchange: Exchange) -> RequestBody:
        """Read the body up to the buffer limit: within it, it can be replayed on a retry."""
        request = exchange.request
        if request.framing is BodyFraming.NONE:
            # The EndOfMessage the parser emitted with the head.
            if client.pending:
                client.pending.popleft()
            else:
                await client.next_event()
            exchange.body_read = True
            return _NO_BODY
        if request.expects_continue:
            await client.send(CONTINUE)  # as Envoy does by default: answer it here, not proxy it
        parts: list[bytes] = []
        size = 0
        while size <= self.config.request_body_buffer_limit:
            event = await client.next_event()
            if isinstance(event, EndOfMessage):
                exchange.body_read = True
                return RequestBody(b"".join(parts), complete=True)
            if isinstance(event, Data):
                parts.append(event.data)
                size += len(event.data)
        return RequestBody(b"".join(parts), complete=False)

    async def _body_tail(
        self, client: ClientConnection, exchange: Exchange
    ) -> AsyncIterator[bytes]:
        """The rest of a streamed request body. A client error surfaces as DownstreamBodyError, so
        the upstream side does not mistake it for a backend reset."""
        while True:
            try:
                event = await client.next_event()
            except (Http1Error, ConnectionError) as error:
                raise DownstreamBodyError(error) from error
            if isinstance(event, EndOfMessage):
                exchange.body_read = True
                return
            if isinstance(event, Data):
                exchange.bytes_received += len(event.data)
                yield event.data

    def _upstream_head(self, decision: Forward, exchange: Exchange, body: RequestBody) -> bytes:
        headers = end_to_end(decision.headers)
        headers = [(n, v) for n, v in headers if n not in ("x-request-id", "traceparent")]
        trace = propagate(exchange.request.header("traceparent"), self.random_bytes)
        exchange.trace_id = trace.trace_id
        headers.append(("x-request-id", exchange.request_id))
        headers.append(("traceparent", trace.header_value()))
        upgrade = exchange.request.upgrade
        if upgrade is not None and upgrade != "CONNECT":
            # Connection/Upgrade are hop-by-hop, but an upgrade is end to end: ask the backend.
            headers += [("connection", "upgrade"), ("upgrade", upgrade)]
        if body.complete:
            if body.data or exchange.request.framing is not BodyFraming.NONE:
                headers.append(("content-length", str(len(body.data))))
        else:
            headers.append(("transfer-encoding", "chunked"))
        return serialize_request_head(decision.method, decision.target, headers)

    async def _forward(
        self, client: ClientConnection, exchange: Exchange, decision: Forward
    ) -> bool:
        route = decision.matched.route
        backend = self.backend(decision.backend)
        exchange.upstream_cluster = backend.authority
        body = await self._read_body(client, exchange)
        exchange.bytes_received = len(body.data)
        head = self._upstream_head(decision, exchange, body)
        wire_body = body.data if body.complete else encode_chunk(body.data)
        tail = None if body.complete else self._body_tail(client, exchange)
        timeouts = route.timeouts
        if (
            route.retry is None
            and timeouts.request_s is None
            and timeouts.backend_request_s is None
        ):
            # One try and no timer (most routes): what the retry machine would decide, without
            # building it per request.
            return await self._forward_once(
                client, exchange, decision, backend, head=head, body=wire_body, tail=tail
            )
        retries = RequestRetries(
            route.timeouts,
            route.retry,
            self.clock,
            self.random,
            body_buffer_limit=self.config.request_body_buffer_limit,
        )
        if not body.complete:
            retries.note_body_bytes(self.config.request_body_buffer_limit + 1)
        step = retries.begin()
        attempt: Attempt | None = None
        while True:
            if isinstance(step, StartAttempt):
                exchange.attempts = step.attempt
                result: Attempt | Failure | NoHealthyEndpoint | CircuitOpen | None
                if step.deadline is None:
                    result = await backend.attempt(
                        decision.method, head, wire_body, decision.headers, tail
                    )
                else:
                    result = await self._timed_attempt(
                        backend, decision, head, wire_body, tail=tail, deadline=step.deadline
                    )
                tail = None  # a streamed body is gone after the first try
                if isinstance(result, NoHealthyEndpoint):
                    return await self._reply(client, exchange, responses.no_healthy_upstream())
                if isinstance(result, CircuitOpen):
                    return await self._reply(client, exchange, responses.circuit_open(result.limit))
                if result is None:  # the try's deadline passed
                    step = retries.on_timer() or retries.on_outcome(Failure.PER_TRY_TIMEOUT)
                    continue
                if isinstance(result, Failure):
                    step = retries.on_outcome(result)
                    continue
                attempt = result
                assert attempt.response is not None
                exchange.upstream_host = attempt.endpoint
                step = retries.on_outcome(ResponseReceived(attempt.response.status))
                if not isinstance(step, Deliver):
                    backend.finish(attempt, reusable=False)
                    attempt = None
            elif isinstance(step, WaitBackoff):
                wake = retries.deadline() or step.until  # the request timeout may come first
                await asyncio.sleep(max(0.0, wake - self.clock()))
                step = retries.on_timer() or step
            elif isinstance(step, GiveUp):
                reply = (
                    responses.upstream_timeout()
                    if step.failure is None
                    else responses.upstream_failure(step.failure)
                )
                return await self._reply(client, exchange, reply)
            else:  # Deliver
                assert attempt is not None
                return await self._deliver(
                    client, exchange, decision, backend, attempt, deadline=retries.request_deadline
                )

    async def _forward_once(
        self,
        client: ClientConnection,
        exchange: Exchange,
        decision: Forward,
        backend: UpstreamBackend,
        *,
        head: bytes,
        body: bytes,
        tail: AsyncIterator[bytes] | None,
    ) -> bool:
        """A route without retries or timeouts: one try; a failure is the client's answer."""
        exchange.attempts = 1
        result = await backend.attempt(decision.method, head, body, decision.headers, tail)
        if isinstance(result, NoHealthyEndpoint):
            return await self._reply(client, exchange, responses.no_healthy_upstream())
        if isinstance(result, CircuitOpen):
            return await self._reply(client, exchange, responses.circuit_open(result.limit))
        if isinstance(result, Failure):
            return await self._reply(client, exchange, responses.upstream_failure(result))
        exchange.upstream_host = result.endpoint
        return await self._deliver(client, exchange, decision, backend, result, deadline=None)

    async def _timed_attempt(
        self,
        backend: UpstreamBackend,
        decision: Forward,
        head: bytes,
        body: bytes,
        *,
        tail: AsyncIterator[bytes] | None,
        deadline: float | None,
    ) -> Attempt | Failure | NoHealthyEndpoint | CircuitOpen | None:
        """One try, cut off at its deadline (None is returned when the deadline passed)."""
        coroutine = backend.attempt(decision.method, head, body, decision.headers, tail)
        if deadline is None:
            return await coroutine
        try:
            return await asyncio.wait_for(coroutine, max(0.0, deadline - self.clock()))
        except TimeoutError:
            return None

    async def _deliver(
        self,
        client: ClientConnection,
        exchange: Exchange,
        decision: Forward,
        backend: UpstreamBackend,
        attempt: Attempt,
        *,
        deadline: float | None,
    ) -> bool:
        """Stream the chosen response to the client, then return the connection to the pool.

        The route's request timeout still runs while the body streams; if it fires after the
        head went out, closing the connection is the only way left to tell the client."""
        response = attempt.response
        assert response is not None
        request = exchange.request
        headers: Headers = tuple(end_to_end(response.headers))
        for modifier in decision.response_modifiers:
            headers = apply_header_modifier(headers, modifier)
        bodyless = request.method == "HEAD" or response.status in (204, 304)
        keep_alive = request.keep_alive
        chunked = False
        out = list(headers)
        if request.method == "HEAD" and response.content_length is not None:
            out.append(("content-length", str(response.content_length)))
        elif not bodyless:
            if response.framing is BodyFraming.CONTENT_LENGTH:
                out.append(("content-length", str(response.content_length)))
            elif response.framing is BodyFraming.NONE:
                out.append(("content-length", "0"))
            elif request.http_version == "1.1":
                out.append(("transfer-encoding", "chunked"))
                chunked = True
            else:
                keep_alive = False  # an HTTP/1.0 client learns the end of the body by the close
        if not keep_alive:
            out.append(("connection", "close"))
        exchange.status = response.status
        if response.status == 101:
            return await self._switch_protocols(client, exchange, backend, attempt, headers)
        head = serialize_response_head(response.status, response.reason, out)
        reusable = response.keep_alive
        remaining = None if deadline is None else max(0.0, deadline - self.clock())
        try:
            if remaining is None:
                await self._stream_body(client, exchange, backend, attempt, head, chunked=chunked)
            else:
                async with asyncio.timeout(remaining):
                    await self._stream_body(
                        client, exchange, backend, attempt, head, chunked=chunked
                    )
        except (ConnectionError, Http1Error, TimeoutError) as error:
            backend.finish(attempt, reusable=False)
            exchange.flags = (
                "upstream_request_timeout_after_headers"
                if isinstance(error, TimeoutError)
                else "upstream_reset_after_headers"
            )
            return False
        backend.finish(attempt, reusable=reusable)
        if request.upgrade is not None:
            client.pending.extend(client.parser.resume())
        return keep_alive

    async def _switch_protocols(
        self,
        client: ClientConnection,
        exchange: Exchange,
        backend: UpstreamBackend,
        attempt: Attempt,
        headers: Headers,
    ) -> bool:
        """The backend accepted the upgrade (WebSocket, h2c...): from now on bytes are opaque."""
        request = exchange.request
        upgrade = attempt.response.header("upgrade") if attempt.response else None
        if request.upgrade is None or upgrade is None:
            backend.finish(attempt, reusable=False)  # a 101 nobody asked for: refuse it
            raise ConnectionResetError("backend answered 101 to a request without Upgrade")
        out = [*headers, ("connection", "upgrade"), ("upgrade", upgrade)]
        await client.send(serialize_response_head(101, "Switching Protocols", out))
        early = b"".join(e.data for e in client.parser.switch_protocol() if isinstance(e, Upgraded))
        early += b"".join(e.data for e in client.pending if isinstance(e, Upgraded))
        client.pending.clear()
        if early and attempt.stream is not None:
            attempt.stream.writer.write(early)
        sent, received = await backend.splice(attempt, client.reader, client.writer)
        exchange.bytes_received += sent + len(early)
        exchange.bytes_sent += received
        exchange.flags = "upgraded"
        return False

    async def _stream_body(
        self,
        client: ClientConnection,
        exchange: Exchange,
        backend: UpstreamBackend,
        attempt: Attempt,
        head: bytes,
        *,
        chunked: bool,
    ) -> None:
        """Send the response head and stream the body after it. The head goes out with the
        first piece of the body when that piece is already here (one write, one wakeup of the
        client, for the small responses most requests get), else on its own first."""
        assert attempt.response is not None
        stream = attempt.stream
        if attempt.response.framing is BodyFraming.NONE:
            await client.send(head)
            await backend.body_events(attempt)  # the EndOfMessage of a bodiless response
            return
        if stream is None or not stream.pending:
            await client.send(head)
            head = b""
        while True:
            (event,) = await backend.body_events(attempt)
            if isinstance(event, EndOfMessage):
                tail = head + LAST_CHUNK if chunked else head
                if tail:
                    await client.send(tail)
                return
            assert isinstance(event, Data)
            exchange.bytes_sent += len(event.data)
            piece = encode_chunk(event.data) if chunked else event.data
            await client.send(head + piece if head else piece)
            head = b""

    # --- local replies and telemetry -----------------------------------------------------------

    async def _reply(
        self,
        client: ClientConnection,
        exchange: Exchange,
        reply: responses.LocalReply,
        keep_alive: bool = True,
    ) -> bool:
        """Send a local reply. A request body not read yet is drained if small, else we close."""
        request = exchange.request
        keep_alive = keep_alive and request.keep_alive
        if keep_alive and not await self._drain(client, exchange):
            keep_alive = False
        exchange.status = reply.status
        exchange.flags = reply.reason
        exchange.bytes_sent = 0 if request.method == "HEAD" else len(reply.body)
        await client.send(reply.encode(keep_alive, head_only=request.method == "HEAD"))
        if keep_alive and request.upgrade is not None:
            client.pending.extend(client.parser.resume())
        return keep_alive

    async def _drain(self, client: ClientConnection, exchange: Exchange) -> bool:
        """Skip the rest of the request body; False if it is too large to bother (or was being
        streamed to a backend when things failed): the connection then closes instead."""
        if exchange.body_read:
            return True
        if exchange.bytes_received:
            return False  # part of it went upstream already; its framing state is unknown
        skipped = 0
        while skipped <= self.config.request_body_buffer_limit:
            event = await client.next_event()
            if isinstance(event, EndOfMessage):
                exchange.body_read = True
                return True
            if isinstance(event, Data):
                skipped += len(event.data)
        return False

    def report(self, exchange: Exchange) -> None:
        """Count the finished request and write its access-log line."""
        record = exchange.record((self.clock() - exchange.started) * 1000)
        self.metrics.record(record)
        if self.access_log is not None:
            self.access_log(record)
        else:
            ACCESS_LOG.info(access_log_line(record))
