"""The HTTP/2 (gRPC) side of the waypoint: each request stream admitted like an HTTP/1.1 request,
then forwarded to an HTTP/2 backend endpoint with its body, response and trailers streamed.

The decisions are the proxy's (`WaypointProxy.admit`: service, L7 policy, route, rate limit,
faults); this module only maps them onto HTTP/2 streams. Local replies to gRPC clients are
trailers-only responses with a grpc-status, as Envoy sends them, so gRPC clients see
PERMISSION_DENIED or UNAVAILABLE instead of an unparseable HTTP error.

Upstream connections are shared per endpoint (requests multiplex as streams). Not yet: retries
and circuit breaking for HTTP/2; the route's timeouts (the shorter of request and backendRequest,
as there is one try) apply until the response head.
"""

from __future__ import annotations

import asyncio
import contextlib

from waypoint import responses
from waypoint.downstream import Downstream, Exchange, end_to_end
from waypoint.http1 import Request
from waypoint.http2 import H2Peer, H2Stream, H2StreamError
from waypoint.proxy import WaypointProxy
from waypoint.resilience import Failure
from waypoint.routing import Forward, apply_header_modifier
from waypoint.telemetry import propagate

Headers = tuple[tuple[str, str], ...]

# Envoy's HTTP -> gRPC status mapping for local replies (grpc/doc/http-grpc-status-mapping.md).
GRPC_STATUS_OF_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def is_grpc(request: Request) -> bool:
    return (request.header("content-type") or "").startswith("application/grpc")


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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
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
            await stream.send_headers(local_reply_headers(reply, grpc), end_stream=True)
            return
        await stream.send_headers(local_reply_headers(reply, grpc))
        await stream.send_data(reply.body, end_stream=True)
        exchange.bytes_sent = len(reply.body)

    async def _forward(self, stream: H2Stream, exchange: Exchange, decision: Forward) -> None:
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
        first = await sent.read()
        if not first and not sent.trailers:
            # Trailers-only (a gRPC error): keep it one HEADERS frame with END_STREAM.
            await stream.send_headers([(":status", status), *headers], end_stream=True)
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
