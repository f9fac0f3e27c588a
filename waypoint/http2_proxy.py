"""The HTTP/2 (gRPC) side of the waypoint: each request stream admitted like an HTTP/1.1 request,
then forwarded to an HTTP/2 backend endpoint with its body, response and trailers streamed.

The decisions are the proxy's (`WaypointProxy.admit`: service, L7 policy, route, rate limit,
faults); this module only maps them onto HTTP/2 streams. Local replies to gRPC clients are
trailers-only responses with a grpc-status, as Envoy sends them, so gRPC clients see
PERMISSION_DENIED or UNAVAILABLE instead of an unparseable HTTP error.

Upstream connections are shared per endpoint (requests multiplex as streams). With a retry
policy, a body within the buffer limit is read first and replayed per try (the retry machine of
resilience.py decides, as for HTTP/1.1); otherwise the body streams to a single try, whose
timeout is the shorter of the route's request and backendRequest timeouts, until the response
head. Retries look at the HTTP status and, for gRPC retry conditions (`unavailable`, ...), at
the grpc-status of a response nothing of which was relayed yet: a trailers-only response, or a
head and trailers with no message between them (each try waits, within its deadline, for the
first message or the end). A grpc-status in trailers after a message was relayed is final: the
client has part of the answer, and a retry would repeat it. Not yet: circuit breaking
(connection pool limits) for HTTP/2, and HTTP/2 to HTTP/1.1 translation (the upstream speaks
what the client spoke).
"""

from __future__ import annotations

import asyncio
import contextlib

from waypoint import responses
from waypoint.channel import Reader, Writer
from waypoint.downstream import Downstream, Exchange, end_to_end
from waypoint.http1 import Request
from waypoint.http2 import H2Peer, H2Stream, H2StreamError
from waypoint.proxy import WaypointProxy
from waypoint.resilience import (
    Deliver,
    Failure,
    GiveUp,
    RequestRetries,
    ResponseReceived,
    StartAttempt,
    WaitBackoff,
)
from waypoint.routing import Forward, apply_header_modifier
from waypoint.telemetry import propagate
from waypoint.upstream import UpstreamBackend

Headers = tuple[tuple[str, str], ...]

# Envoy's HTTP -> gRPC status mapping for local replies (grpc/doc/http-grpc-status-mapping.md).
GRPC_STATUS_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def is_grpc(request: Request) -> bool:
    return (request.header("content-type") or "").startswith("application/grpc")


def grpc_status(*header_lists: Headers) -> int | None:
    """The grpc-status in the first of `header_lists` that carries one (None: none does)."""
    for headers in header_lists:
        for name, value in headers:
            if name == "grpc-status":
                return int(value) if value.isdigit() else GRPC_UNKNOWN
    return None


def grpc_status_label(head: Headers, trailers: Headers, http_status: int) -> str:
    """Istio's grpc_response_status of a relayed gRPC response: its grpc-status (trailers, or
    the head of a trailers-only response), else what Envoy derives from the HTTP status."""
    found = grpc_status(trailers, head)
    if found is None:
        found = GRPC_STATUS_OF_HTTP.get(http_status, GRPC_UNKNOWN)
    return str(found)


def request_from_stream(stream: H2Stream) -> Request:
    """The request head in the HTTP/1.1 shape the rest of the waypoint reads."""
    pseudo = {name: value for name, value in stream.headers if name.startswith(":")}
    regular = [(name, value) for name, value in stream.headers if not name.startswith(":")]
    authority = pseudo.get(":authority")
    if authority is not None and not any(name == "host" for name, _ in regular):
        regular.insert(0, ("host", authority))
    return Request(
        method=pseudo.get(":method", "GET"),
        target=pseudo.get(":path", "/"),
        headers=tuple(regular),
        http_version="2",
    )


def local_reply_headers(reply: responses.LocalReply, grpc: bool) -> list[tuple[str, str]]:
    if grpc:
        return [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(GRPC_STATUS_OF_HTTP.get(reply.status, GRPC_UNKNOWN))),
            ("grpc-message", reply.body.decode("latin-1") or reply.reason),
            (responses.REASON_HEADER, reply.reason),
        ]
    return [(":status", str(reply.status)), *reply.header_list()]


class Http2Front:
    """Serves HTTP/2 client connections for a WaypointProxy."""

    def __init__(self, proxy: WaypointProxy) -> None:
        self.proxy = proxy

    async def serve(
        self,
        reader: Reader,
        writer: Writer,
        downstream: Downstream,
        preface: bytes,
    ) -> None:
        """Serve one connection whose first bytes (`preface`, already read) are HTTP/2's."""

        async def handle(stream: H2Stream) -> None:
            await self._handle(stream, downstream)

        peer = H2Peer(reader, writer, client_side=False, handler=handle)
        peer.start(preface)
        try:
            await peer.run()
        finally:
            await peer.close()

    async def _handle(self, stream: H2Stream, downstream: Downstream) -> None:
        request = request_from_stream(stream)
        exchange = self.proxy.new_exchange(request)
        try:
            admitted = await self.proxy.admit(exchange, downstream)
            if isinstance(admitted, responses.LocalReply):
                await self._reply(stream, exchange, admitted)
            else:
                await self._forward(stream, exchange, admitted)
        except H2StreamError:
            exchange.flags = "downstream_disconnect"
        finally:
            self.proxy.report(exchange)

    async def _reply(
        self, stream: H2Stream, exchange: Exchange, reply: responses.LocalReply
    ) -> None:
        exchange.status, exchange.flags = reply.status, reply.reason
        grpc = is_grpc(exchange.request)
        if grpc or not reply.body:
            headers = local_reply_headers(reply, grpc)
            if grpc:
                exchange.grpc_status = next(v for n, v in headers if n == "grpc-status")
            await stream.send_headers(headers, end_stream=True)
            return
        await stream.send_headers(local_reply_headers(reply, grpc))
        await stream.send_data(reply.body, end_stream=True)
        exchange.bytes_sent = len(reply.body)

    async def _forward(self, stream: H2Stream, exchange: Exchange, decision: Forward) -> None:
        retry = decision.matched.route.retry
        if retry is not None and retry.attempts > 0:
            body = await self._buffer_request(stream, exchange)
            if body is not None:
                await self._forward_with_retries(stream, exchange, decision, body)
                return
            # Too large to replay: it was not all read, so it streams once like any other.
        await self._forward_once(stream, exchange, decision)

    async def _buffer_request(self, stream: H2Stream, exchange: Exchange) -> bytes | None:
        """The whole request body if it fits the buffer limit (it can then be replayed on a
        retry); None, with what was read given back to the stream, if it does not."""
        limit = self.proxy.config.request_body_buffer_limit
        parts: list[bytes] = []
        size = 0
        while data := await stream.read():
            parts.append(data)
            size += len(data)
            if size > limit:
                stream.unread(b"".join(parts))
                return None
        exchange.bytes_received = size
        return b"".join(parts)

    async def _forward_with_retries(
        self, stream: H2Stream, exchange: Exchange, decision: Forward, body: bytes
    ) -> None:
        """Tries driven by the same retry machine as HTTP/1.1: per-try and request timeouts,
        back-off, retry on connect failure, reset, 5xx or listed status codes."""
        route = decision.matched.route
        backend = self.proxy.backend(decision.backend)
        exchange.upstream_cluster = backend.authority
        retries = RequestRetries(
            route.timeouts, route.retry, self.proxy.clock, self.proxy.random,
            body_buffer_limit=self.proxy.config.request_body_buffer_limit,
        )  # fmt: skip
        headers = self._upstream_headers(exchange, decision)
        # Only gRPC retry conditions need the grpc-status before the response is relayed.
        peek = bool(route.retry and route.retry.grpc_statuses) and is_grpc(exchange.request)
        step = retries.begin()
        while True:
            if isinstance(step, StartAttempt):
                exchange.attempts = step.attempt
                endpoint = backend.pick_endpoint(decision.headers)
                if endpoint is None:
                    await self._reply(stream, exchange, responses.no_healthy_upstream())
                    return
                exchange.upstream_host = endpoint
                outcome = await self._try(
                    backend, endpoint, headers, body,
                    stream=stream, deadline=step.deadline, peek=peek,
                )  # fmt: skip
                if isinstance(outcome, tuple):
                    sent, head, settled = outcome
                    status = next((v for n, v in head if n == ":status"), "502")
                    step = retries.on_outcome(ResponseReceived(int(status), settled))
                    if isinstance(step, Deliver):
                        await self._relay_response(stream, sent, head, exchange, decision)
                        return
                    sent.reset()
                else:
                    after = retries.on_timer() if outcome is None else retries.on_outcome(outcome)
                    step = after or retries.on_outcome(Failure.PER_TRY_TIMEOUT)
            elif isinstance(step, WaitBackoff):
                wake = retries.deadline() or step.until
                await asyncio.sleep(max(0.0, wake - self.proxy.clock()))
                step = retries.on_timer() or step
            elif isinstance(step, GiveUp):
                reply = (
                    responses.upstream_timeout()
                    if step.failure is None
                    else responses.upstream_failure(step.failure)
                )
                await self._reply(stream, exchange, reply)
                return
            else:  # Deliver without a response cannot happen: the machine only delivers one
                raise AssertionError(f"unexpected retry step {step!r}")

    async def _try(
        self,
        backend: UpstreamBackend,
        endpoint: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        stream: H2Stream,
        deadline: float | None,
        peek: bool = False,
    ) -> tuple[H2Stream, Headers, int | None] | Failure | None:
        """One try: the response head, a Failure, or None when the try's deadline passed.

        With `peek`, the try also waits for the first message (given back to the stream) or the
        end of the response: a response that ended without one is settled, and its grpc-status
        (from the head or the trailers) is returned with the head; otherwise None is."""
        try:
            upstream = await backend.http2_connection(endpoint)
            sent = upstream.open_stream(headers)
        except (OSError, LookupError, TimeoutError, H2StreamError):
            backend.record(endpoint, None)
            return Failure.CONNECT_FAILURE
        remaining = None if deadline is None else max(0.0, deadline - self.proxy.clock())
        try:
            async with asyncio.timeout(remaining):
                await sent.send_data(body, end_stream=not stream.trailers)
                if stream.trailers:
                    await sent.send_trailers(stream.trailers)
                head = await sent.response_headers()
                first = await sent.read() if peek else b"x"
        except TimeoutError:
            sent.reset()
            return None
        except H2StreamError:
            backend.record(endpoint, None)
            return Failure.RESET
        backend.record(endpoint, int(next((v for n, v in head if n == ":status"), "502")))
        if first:
            if peek:
                sent.unread(first)
            return sent, head, None
        return sent, head, grpc_status(head, sent.trailers)

    async def _forward_once(self, stream: H2Stream, exchange: Exchange, decision: Forward) -> None:
        backend = self.proxy.backend(decision.backend)
        exchange.upstream_cluster = backend.authority
        exchange.attempts = 1
        endpoint = backend.pick_endpoint(decision.headers)
        if endpoint is None:
            await self._reply(stream, exchange, responses.no_healthy_upstream())
            return
        exchange.upstream_host = endpoint
        try:
            upstream = await backend.http2_connection(endpoint)
            sent = upstream.open_stream(self._upstream_headers(exchange, decision))
        except (OSError, LookupError, TimeoutError, H2StreamError):
            backend.record(endpoint, None)
            await self._reply(stream, exchange, responses.upstream_failure(Failure.CONNECT_FAILURE))
            return
        pump = asyncio.get_running_loop().create_task(self._pump_request(stream, sent, exchange))
        try:
            timeouts = decision.matched.route.timeouts
            present = [t for t in (timeouts.request_s, timeouts.backend_request_s) if t]
            timeout = min(present) if present else None  # one try only: the shorter one binds
            try:
                async with asyncio.timeout(timeout):
                    head = await sent.response_headers()
            except TimeoutError:
                sent.reset()
                await self._reply(stream, exchange, responses.upstream_timeout())
                return
            except H2StreamError:
                backend.record(endpoint, None)
                await self._reply(stream, exchange, responses.upstream_failure(Failure.RESET))
                return
            await self._relay_response(stream, sent, head, exchange, decision)
            backend.record(endpoint, exchange.status)
        except H2StreamError:
            sent.reset()  # the client went away mid-response: free the upstream stream too
            raise
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, H2StreamError):
                await pump

    def _upstream_headers(self, exchange: Exchange, decision: Forward) -> list[tuple[str, str]]:
        request = exchange.request
        replaced = ("host", "x-request-id", "traceparent")
        regular = [(n, v) for n, v in end_to_end(decision.headers) if n not in replaced]
        trace = propagate(request.header("traceparent"), self.proxy.random_bytes)
        exchange.trace_id = trace.trace_id
        regular += [("x-request-id", exchange.request_id), ("traceparent", trace.header_value())]
        authority = next((v for n, v in decision.headers if n == "host"), decision.backend.name)
        headers = [
            (":method", decision.method),
            (":scheme", "http"),
            (":path", decision.target),
            (":authority", authority),
            *regular,
        ]
        if (request.header("te") or "").lower() == "trailers":
            headers.append(("te", "trailers"))  # the one TE value HTTP/2 allows; gRPC needs it
        return headers

    @staticmethod
    async def _pump_request(source: H2Stream, sink: H2Stream, exchange: Exchange) -> None:
        while data := await source.read():
            exchange.bytes_received += len(data)
            await sink.send_data(data)
        if source.trailers:
            await sink.send_trailers(source.trailers)
        else:
            await sink.send_data(b"", end_stream=True)

    @staticmethod
    async def _relay_response(
        stream: H2Stream, sent: H2Stream, head: Headers, exchange: Exchange, decision: Forward
    ) -> None:
        status = next((v for n, v in head if n == ":status"), "502")
        exchange.status = int(status) if status.isdigit() else 502
        headers: Headers = tuple(
            end_to_end(tuple((n, v) for n, v in head if not n.startswith(":")))
        )
        for modifier in decision.response_modifiers:
            headers = apply_header_modifier(headers, modifier)
        grpc = is_grpc(exchange.request)
        first = await sent.read()
        if not first and not sent.trailers:
            # Trailers-only (a gRPC error): keep it one HEADERS frame with END_STREAM.
            await stream.send_headers([(":status", status), *headers], end_stream=True)
            if grpc:
                exchange.grpc_status = grpc_status_label(head, (), exchange.status)
            return
        await stream.send_headers([(":status", status), *headers])
        data = first
        while data:
            exchange.bytes_sent += len(data)
            await stream.send_data(data)
            data = await sent.read()
        if sent.trailers:
            await stream.send_trailers(sent.trailers)
        else:
            await stream.send_data(b"", end_stream=True)
        if grpc:
            exchange.grpc_status = grpc_status_label(head, sent.trailers, exchange.status)
