"""The client side of the fast path: requests recognised and relayed from socket callbacks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from waypoint import responses
from waypoint.channel import SocketChannel
from waypoint.fastpath.heads import recognize_request
from waypoint.fastpath.plan import FastService, choose
from waypoint.fastpath.pool import FastPool, pool_connect
from waypoint.fastpath.records import (
    NO_SOURCE,
    FastFacts,
    SourceLabels,
    fast_log_line,
    fast_record,
)
from waypoint.resilience import Failure
from waypoint.telemetry import labels_for, observe, parse_traceparent

if TYPE_CHECKING:
    from waypoint.downstream import Downstream
    from waypoint.fastpath.backend import FastUpstream
    from waypoint.proxy import WaypointProxy

ACCESS_LOG = logging.getLogger("weft.waypoint.access")

IDLE, CONNECTING, WAITING, SLOW, CLOSED = 0, 1, 2, 3, 4
MAX_BUFFERED = 256 * 1024  # pipelined bytes held while a response is on its way: then pause


class FastFront(SocketChannel):
    """A client connection served by callbacks while its requests are common ones; on the
    first that is not, it becomes the SocketChannel proxy.py's general path serves.

    On an HBONE tunnel (`downstream` given) the tunnel's destination picks the service and
    its peer's SVID fills the source labels, as on the general path."""

    def __init__(self, proxy: WaypointProxy, downstream: Downstream | None = None) -> None:
        super().__init__(proxy.accepted)
        self._proxy = proxy
        self.downstream = downstream  # who calls, for the general path if it takes over
        self._destination = downstream.destination if downstream is not None else None
        identity = downstream.identity if downstream is not None else None
        self._source: SourceLabels = (
            NO_SOURCE if identity is None else (identity.uri, identity.namespace, "mutual_tls")
        )
        self._state = IDLE
        self._buf = b""
        self._body_left = 0  # request body bytes still to relay to the backend
        self._pending = b""  # bytes for a backend connection being opened
        self._upstream: FastUpstream | None = None
        self._upstream_paused = False  # we paused the backend's reading (client slow)
        self._client_eof = False
        self.idle_since = time.monotonic()
        self._connecting: asyncio.Task[None] | None = None
        # The request in flight, kept as plain attributes (no object per request).
        self._service: FastService | None = None
        self._route_name = "-"
        self._pool: FastPool | None = None
        self._endpoint = "-"
        self._started = 0.0
        self._wall = 0.0
        self._method = ""
        self._target = ""
        self._host = ""
        self._agent = "-"
        self._request_id = ""
        self._trace_id = "-"
        self._status = 0
        self._bytes_in = 0
        self._bytes_out = 0

    # --- asyncio.Protocol, client side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._proxy.fast_fronts.add(self)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is SLOW:
            super().data_received(data)
            return
        if self._body_left:
            take = self._body_left
            if len(data) <= take:
                self._body_left -= len(data)
                self._bytes_in += len(data)
                self._to_upstream(data)
                return
            self._body_left = 0
            self._bytes_in += take
            self._to_upstream(data[:take])
            data = data[take:]
        buf = self._buf + data if self._buf else data
        self._buf = buf
        if state is IDLE:
            self._serve_buffered()
        elif len(buf) > MAX_BUFFERED:
            self.pause_client_reading()

    def eof_received(self) -> bool:
        if self._state is SLOW:
            return super().eof_received()
        self._client_eof = True
        if self._state is IDLE:
            if self._buf:
                self._to_slow()  # a request cut short: the codec says what is wrong with it
                self._eof = True
                self._wake_reader()
            else:
                self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state is SLOW:
            super().connection_lost(exc)
            return
        self._proxy.fast_fronts.discard(self)
        state, self._state = self._state, CLOSED
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()
        if state in (CONNECTING, WAITING):
            self._report("downstream_disconnect")
        if self._connecting is not None:
            self._connecting.cancel()

    def pause_writing(self) -> None:
        if self._state is SLOW:
            super().pause_writing()
            return
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()
            self._upstream_paused = True

    def resume_writing(self) -> None:
        if self._state is SLOW:
            super().resume_writing()
            return
        upstream = self._upstream
        if self._upstream_paused and upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()
        self._upstream_paused = False

    # --- requests ------------------------------------------------------------------------------

    def _serve_buffered(self) -> None:
        """Start the next buffered request, or leave the connection to the general path."""
        while self._state is IDLE and self._buf:
            if not self._start(self._buf):
                self._to_slow()
                return

    def _start(self, buf: bytes) -> bool:
        proxy = self._proxy
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > proxy.max_header_bytes:
            return False  # a head split across reads or too large: the general path times it
        plan = proxy.fast_plan()
        if plan is None:
            return False
        recognized = recognize_request(buf[: end + 4])
        if recognized is None:
            return False
        method, target, host, length, request_id, traceparent, agent, head = recognized
        if "%" in target or "/." in target:
            return False  # percent-escapes and dot segments: the general path normalizes
        path = target.partition("?")[0]
        decided = plan.decide(host, method, path, self._destination)
        if decided is None:
            return False
        service, route, pool = decided
        if pool is None:  # weighted backends: drawn per request
            ref = choose(route, proxy.random)
            pool = None if ref is None else plan.pool(ref)
            if pool is None:
                return False
        # The request is ours: ids, the head to forward, what follows it.
        fresh = proxy.random_bytes(40).hex()  # one draw: trace id, span id, request id
        trace_id, value = _trace(traceparent, fresh)
        if request_id is None:
            request_id = _uuid4(fresh[48:])
            extra = ("x-request-id: " + request_id + "\r\ntraceparent: " + value).encode()
        else:
            extra = ("traceparent: " + value).encode()
        extra += b"\r\n\r\n"
        start = end + 4
        body = buf[start : start + length] if length else b""
        self._buf = buf[start + len(body) :]
        self._body_left = length - len(body)
        self._service = service
        self._route_name = route.name
        self._pool = pool
        self._started = proxy.clock()
        self._wall = time.time()
        self._method = method
        self._target = target
        self._host = host
        self._agent = agent or "-"
        self._request_id = request_id
        self._trace_id = trace_id
        self._status = 0
        self._bytes_in = len(body)
        self._bytes_out = 0
        endpoint = self._endpoint = pool.pick()
        data = head + extra + body if body else head + extra
        upstream = pool.take(endpoint)
        if upstream is not None:
            self._attach(upstream, data)
        else:
            self._state = CONNECTING
            self._pending = data
            self._connecting = asyncio.get_running_loop().create_task(self._connect(pool, endpoint))
        return True

    def _attach(self, upstream: FastUpstream, data: bytes) -> None:
        self._state = WAITING
        self._upstream = upstream
        pool = self._pool
        if pool is not None and len(pool.endpoints) > 1:
            pool.balancer.started(upstream.endpoint)
        upstream.send(self, data, self._method == "HEAD")
        if self._body_left and not upstream.client_paused:
            self.resume_client_reading()  # the body held while connecting went: the rest may come

    async def _connect(self, pool: FastPool, endpoint: str) -> None:
        proxy = self._proxy
        try:
            upstream = await pool_connect(pool, endpoint, proxy.connect_timeout_s)
        except (OSError, TimeoutError):
            self._connecting = None
            if self._state is CONNECTING:
                self._local_reply(responses.upstream_failure(Failure.CONNECT_FAILURE))
            return
        self._connecting = None
        if self._state is not CONNECTING:
            pool.give_back(upstream)  # the client left meanwhile
            return
        data, self._pending = self._pending, b""
        self._attach(upstream, data)

    def _to_upstream(self, data: bytes) -> None:
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None:
            if not upstream.transport.is_closing():  # else its connection_lost answers
                upstream.transport.write(data)
        else:
            self._pending += data  # the backend connection is being opened
            if len(self._pending) > MAX_BUFFERED:
                self.pause_client_reading()  # resumed once it is open (_attach)

    # --- called by the backend connection -------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_client_reading(self) -> None:
        """The backend reads the request body slower than the client sends it."""
        if self._transport is not None and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    def resume_client_reading(self) -> None:
        if self._transport is not None and self._read_paused and self._state is not SLOW:
            self._read_paused = False
            self._transport.resume_reading()

    def response_started(self, status: int) -> None:
        self._status = status

    def response_done(self, body_bytes: int) -> None:
        """The response is complete: count it, then serve what the client sent meanwhile."""
        self._bytes_out = body_bytes
        self._finish_upstream()
        self._report("-")
        if self._state is CLOSED:
            return
        self._state = IDLE
        self.idle_since = time.monotonic()
        self.resume_client_reading()
        if self._body_left:
            self._close()  # the backend answered before the body ended: its framing is lost
        elif self._buf:
            self._serve_buffered()
        elif self._client_eof:
            self._close()

    def upstream_failed(self) -> None:
        """The backend closed or sent garbage before a response head: 503, as the general
        path answers a reset before headers."""
        self._finish_upstream()
        self._local_reply(responses.upstream_failure(Failure.RESET))

    def upstream_aborted(self) -> None:
        """The backend broke off after the head went out: closing is all that is left."""
        self._finish_upstream()
        self._report("upstream_reset_after_headers")
        self._close()

    def _finish_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        pool = self._pool
        if upstream is not None and pool is not None and len(pool.endpoints) > 1:
            pool.balancer.finished(upstream.endpoint)
        self._upstream_paused = False

    def _local_reply(self, reply: responses.LocalReply) -> None:
        keep_alive = not self._body_left and not self._client_eof
        self._status = reply.status
        self._bytes_out = 0 if self._method == "HEAD" else len(reply.body)
        self.write(reply.encode(keep_alive, head_only=self._method == "HEAD"))
        self._report(reply.reason)
        if not keep_alive:
            self._close()
            return
        self._state = IDLE
        self.idle_since = time.monotonic()
        if self._buf:
            self._serve_buffered()

    def _report(self, flags: str) -> None:
        service = self._service
        if service is None:
            return
        proxy = self._proxy
        duration_ms = (proxy.clock() - self._started) * 1000
        source = self._source
        key = (self._status, flags, source)
        series = service.series.get(key)
        if series is None:
            labels = labels_for(
                response_code=str(self._status),
                response_flags=flags,
                source_principal=source[0],
                source_workload_namespace=source[1],
                connection_security_policy=source[2],
                **service.label_values,
            )
            series = service.series[key] = proxy.metrics.series(labels)
        observe(series, duration_ms)
        pool = self._pool
        facts: FastFacts = (
            service, self._route_name, pool.authority if pool else "-",
            self._endpoint, self._wall, self._method, self._target, self._host, self._status,
            flags, duration_ms, self._bytes_in, self._bytes_out, self._request_id,
            self._trace_id, self._agent, source,
        )  # fmt: skip
        buffer = proxy.access_log_buffer
        if buffer is not None:
            buffer.write_later(fast_log_line, (facts,))
        elif proxy.access_log is not None:
            proxy.access_log(fast_record(facts))
        else:
            ACCESS_LOG.info(fast_log_line(facts))
        self._service = None

    # --- leaving the fast path ----------------------------------------------------------------

    def _to_slow(self) -> None:
        """Hand the connection, with the bytes not served yet, to the general path."""
        self._state = SLOW
        self._proxy.fast_fronts.discard(self)
        if self._buf:
            self.data_received(self._buf)
            self._buf = b""
        if self._client_eof:
            self._eof = True
        assert self._on_connect is not None
        self._on_connect(self)

    def body_pending(self) -> bool:
        """Part of the request body has not reached the backend yet."""
        return bool(self._body_left or self._pending)

    def idle(self) -> bool:
        """Between requests, with nothing of the next one received."""
        return self._state is IDLE and not self._buf

    def _close(self) -> None:
        self._state = CLOSED
        self._proxy.fast_fronts.discard(self)
        if self._transport is not None:
            self._transport.close()


def _trace(traceparent: str | None, fresh: str) -> tuple[str, str]:
    """(trace id, the traceparent to send): the caller's trace continued with this hop's span,
    or a new sampled one (as telemetry.propagate decides), from `fresh` random hex digits."""
    incoming = parse_traceparent(traceparent) if traceparent is not None else None
    span = fresh[32:48] if fresh[32:48].strip("0") else "1" + fresh[33:48]
    if incoming is not None:
        trace, flags = incoming.trace_id, incoming.flags
    else:
        trace, flags = (fresh[:32] if fresh[:32].strip("0") else "1" + fresh[1:32]), 1
    return trace, f"00-{trace}-{span}-{flags:02x}"


def _uuid4(text: str) -> str:
    """32 random hex digits as a version 4, RFC 4122 variant UUID (as uuid.uuid4() prints)."""
    variant = "89ab"[int(text[16], 16) & 3]
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:32]}"
