"""The HTTP/1.1 fast path: common requests relayed from protocol callbacks, no task per request.

Most requests a waypoint sees are keep-alive HTTP/1.1 with no body or a Content-Length one, to
a route that changes nothing (no filter, retry, timeout, fault or authorization). For those, the
client connection's `data_received` recognises the head with one regular expression over its
bytes, picks the route from tables computed once per configuration, writes the head to a pooled
backend connection with the request id and `traceparent` appended (the other bytes as they
came), and the backend connection's `data_received` passes the response head and body back,
hop-by-hop fields removed. Telemetry is three additions to a series and an access-log line
formatted later. Nothing here decides what is valid HTTP: a head the expression does not accept
whole (smuggling shapes, oversized or split heads, obs-fold, other methods, HTTP/1.0, HTTP/2, an
Upgrade or Expect, a Transfer-Encoding), a service or route with anything to apply, or an
injected way of connecting (HBONE) hands the connection to proxy.py's general path, whose
strict codec (http1.py) answers it, and the connection stays there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from waypoint import responses
from waypoint.channel import SocketChannel
from waypoint.config import (
    BackendRef,
    ConnectionPool,
    LoadBalancerPolicy,
    PathMatchType,
    Route,
    RouteMatch,
    ServiceConfig,
    WaypointConfig,
)
from waypoint.http1 import LAST_CHUNK, encode_chunk
from waypoint.resilience import Balancer, Failure, RandomSource, make_balancer
from waypoint.routing import choose_backend, precedence
from waypoint.telemetry import (
    RequestRecord,
    Series,
    labels_for,
    line_formatter,
    observe,
    parse_traceparent,
    utc_timestamp,
)

if TYPE_CHECKING:
    from waypoint.proxy import WaypointProxy

ACCESS_LOG = logging.getLogger("weft.waypoint.access")

# --- recognising a request head -------------------------------------------------------------

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A request line with a common method, an origin-form target and HTTP/1.1, then header lines
# `token ":" value` whose values hold no control character but HTAB, then the empty line.
_REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
# The request fields the fast path reads or acts on (the framing and hop-by-hop ones send the
# request to the general path, but Connection: keep-alive); a match spans "\r\nname:value".
_REQUEST_FIELD = re.compile(
    rb"\r\n(host|content-length|x-request-id|traceparent|user-agent|connection|keep-alive"
    rb"|transfer-encoding|upgrade|expect|te|trailer|proxy-connection|http2-settings):([^\r]*)"
)
# Response fields that are hop-by-hop (RFC 9110 §7.6.1): dropped before the client sees them.
_RESPONSE_HOP_FIELD = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|te|trailer|upgrade|http2-settings|expect):"
)
# The response fields that decide its framing or are removed (lowercase copy; name and value).
_RESPONSE_FIELD = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade|http2-settings|expect):([^\r]*)"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[\x09\x20-\x7e\x80-\xff]*)?\r\n")
_MAX_CHUNK_LINE = 4096

# (method, target, host, content length, x-request-id or None, traceparent or None,
#  user-agent or None, the head to forward up to its last CRLF, traceparent removed)
FastRequest = tuple[str, str, str, int, str | None, str | None, str | None, bytes]


def _value(head: bytes, lowered: bytes, key: bytes) -> bytes | None:
    """The value of the header line `key` (b"\\r\\nname:") starts, or None if there is none."""
    start = lowered.find(key)
    if start < 0:
        return None
    start += len(key)
    return head[start : head.index(b"\r\n", start)].strip(b" \t")


def _without_line(head: bytes, lowered: bytes, key: bytes) -> tuple[bytes, bytes]:
    """`head` (and its lowercase copy) without the header line starting with `key`."""
    start = lowered.find(key)
    end = lowered.index(b"\r\n", start + 2)
    return head[:start] + head[end:], lowered[:start] + lowered[end:]


def recognize_request(head: bytes) -> FastRequest | None:
    """What the fast path needs of a request head (the bytes up to and with its empty line),
    or None when the head is anything but the common, plainly valid shape.

    One expression validates the head whole; one scan of its lowercase copy finds the fields
    that matter (most requests carry one or two of them), each with its value's position in
    the original bytes."""
    if _REQUEST_HEAD.fullmatch(head) is None:
        return None
    host = length = request_id = traceparent = agent = None
    drop: list[tuple[int, int]] = []  # lines not forwarded: traceparent, keep-alive hop fields
    for found in _REQUEST_FIELD.finditer(head.lower()):
        name = found.group(1)
        value = head[found.start(2) : found.end(2)].strip(b" \t")
        if name == b"host":
            if host is not None:
                return None
            host = value
        elif name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name == b"x-request-id":
            if request_id is not None:
                return None
            request_id = value
            if not value:  # empty: replaced by a generated one, as the general path does
                drop.append(found.span())
        elif name == b"traceparent":
            if traceparent is not None:
                return None
            traceparent = value
            drop.append(found.span())
        elif name == b"user-agent":
            agent = agent or value
        elif name == b"connection":
            # `Connection: keep-alive` (what HTTP/1.1 means anyway) is dropped as hop-by-hop;
            # any other token, like any other hop-by-hop field, needs the general path.
            if value.lower() != b"keep-alive":
                return None
            drop.append(found.span())
        elif name == b"keep-alive":
            drop.append(found.span())
        else:  # Transfer-Encoding, Upgrade, Expect, TE, Trailer, ...
            return None
    if host is None:
        return None
    if drop:
        kept, start = [], 0
        for begin, end in drop:
            kept.append(head[start:begin])
            start = end
        kept.append(head[start:])
        head = b"".join(kept)
    method, _, rest = head.partition(b" ")
    return (
        method.decode(),
        rest[: rest.index(b" ")].decode("latin-1"),
        host.decode("latin-1"),
        length or 0,
        request_id.decode("latin-1") if request_id else None,
        traceparent.decode("latin-1") if traceparent is not None else None,
        agent.decode("latin-1") if agent is not None else None,
        head[:-2],
    )


# How a response body ends.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

# (status, framing, content length, backend connection reusable, head for the client)
FastResponse = tuple[int, int, int, bool, bytes]


def recognize_response(head: bytes, head_only: bool) -> FastResponse | None:
    """The framing of a backend's response head and the head to send on (hop-by-hop fields
    removed); None if it is malformed or framed ambiguously (the client then gets a 503)."""
    matched = _RESPONSE_HEAD.fullmatch(head)
    if matched is None:
        return None
    status = int(matched.group(2))
    lowered = head.lower()
    found = _RESPONSE_FIELD.findall(lowered)
    if len(found) == 1 and found[0][0] == b"content-length" and matched.group(1) == b"1":
        # The common answer: HTTP/1.1, one Content-Length, nothing hop-by-hop to remove.
        text = found[0][1].strip(b" \t")
        if not text.isdigit() or len(text) > 18:
            return None
        if head_only or status in (204, 304) or status < 200:
            return status, NO_BODY, int(text), True, head
        return status, LENGTH, int(text), True, head
    lengths = lowered.count(b"\r\ncontent-length:")
    encoding = _value(head, lowered, b"\r\ntransfer-encoding:")
    connection = (_value(head, lowered, b"\r\nconnection:") or b"").lower()
    tokens = {token.strip() for token in connection.split(b",")}
    reusable = b"close" not in tokens and (matched.group(1) == b"1" or b"keep-alive" in tokens)
    length = 0
    if lengths:
        text = _value(head, lowered, b"\r\ncontent-length:")
        if lengths > 1 or text is None or not text.isdigit() or len(text) > 18:
            return None
        length = int(text)
    if encoding is not None and (
        lengths or encoding.lower() != b"chunked" or lowered.count(b"\r\ntransfer-encoding:") > 1
    ):
        return None  # CL with TE, or a coding other than a lone chunked: refused, as http1 does
    if head_only or status in (204, 304) or status < 200:
        framing = NO_BODY
    elif encoding is not None:
        framing = CHUNKED
    elif lengths:
        framing = LENGTH
    else:
        framing = UNTIL_CLOSE
        reusable = False
    out = head
    if _RESPONSE_HOP_FIELD.search(lowered) is not None or connection:
        named = [b"\r\n" + t + b":" for t in tokens if t and t not in (b"close", b"keep-alive")]
        for key in (*named, b"\r\nconnection:", b"\r\nkeep-alive:", b"\r\nproxy-connection:",
                    b"\r\nte:", b"\r\ntrailer:", b"\r\nupgrade:", b"\r\nhttp2-settings:",
                    b"\r\nexpect:"):  # fmt: skip
            while lowered.find(key) >= 0:
                if key in (b"\r\ncontent-length:", b"\r\ntransfer-encoding:"):
                    break  # the framing the fast path relays as it is
                out, lowered = _without_line(out, lowered, key)
    if framing is UNTIL_CLOSE:  # re-framed for a keep-alive client, as the general path does
        out = out[:-2] + b"transfer-encoding: chunked\r\n\r\n"
    return status, framing, length, reusable, out


# --- what a configuration allows -----------------------------------------------------------


def _fast_route(route: Route) -> bool:
    return (
        not route.filters
        and route.retry is None
        and route.timeouts.request_s is None
        and route.timeouts.backend_request_s is None
    )


class FastService:
    """One service's routes as the fast path matches them, and its telemetry series."""

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service
        entries = [
            (precedence(match), match, route) for route in service.routes for match in route.matches
        ]
        entries.sort(key=lambda entry: entry[0], reverse=True)  # stable: earlier wins ties
        self.entries: tuple[tuple[RouteMatch, Route, bool], ...] = tuple(
            (match, route, _fast_route(route)) for _, match, route in entries
        )
        name, _, rest = service.hostname.partition(".")
        self.hostname = service.hostname
        self.name = name if rest else "unknown"
        self.namespace = rest.split(".")[0] if rest else "unknown"
        self.label_values = {
            "destination_service": service.hostname,
            "destination_service_name": name if rest else "unknown",
            "destination_service_namespace": rest.split(".")[0] if rest else "unknown",
        }
        self.series: dict[tuple[int, str], Series] = {}

    def match(self, method: str, path: str) -> Route | None:
        """The route Gateway API precedence picks for a path-and-method-only match table, or
        None when it is one the fast path cannot serve (or none matches: a 404 to answer)."""
        for match, route, fast in self.entries:
            condition = match.path
            kind = condition.type
            if kind is PathMatchType.PATH_PREFIX:
                prefix = condition.value.rstrip("/")
                if prefix and path != prefix and not path.startswith(prefix + "/"):
                    continue
            elif kind is PathMatchType.EXACT:
                if path != condition.value:
                    continue
            elif condition.pattern is None or condition.pattern.fullmatch(path) is None:
                continue
            if match.method is not None and match.method != method:
                continue
            return route if fast else None
        return None


def fast_service(service: ServiceConfig, config: WaypointConfig) -> FastService | None:
    """The fast path's view of a service, or None if its requests need the general path."""
    if config.authorization_policies or service.authorization_policies:
        return None
    for route in service.routes:
        if any(match.headers or match.query_params for match in route.matches):
            return None  # precedence would need conditions the fast path does not evaluate
    return FastService(service)


class FastPool:
    """Idle keep-alive connections to one backend's endpoints, and which endpoint is next."""

    def __init__(self, authority: str, endpoints: Sequence[str], balancer: Balancer) -> None:
        self.authority = authority
        self.endpoints = tuple(endpoints)
        self.balancer = balancer
        self.idle: dict[str, list[FastUpstream]] = {endpoint: [] for endpoint in endpoints}
        self.retired = False

    def pick(self) -> str:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        return self.balancer.pick(endpoints, ()) or endpoints[0]

    def take(self, endpoint: str) -> FastUpstream | None:
        idle = self.idle[endpoint]
        while idle:
            upstream = idle.pop()
            transport = upstream.transport
            if upstream.alive and transport is not None and not transport.is_closing():
                return upstream
        return None

    def give_back(self, upstream: FastUpstream) -> None:
        if self.retired or not upstream.alive:
            upstream.close()
        else:
            self.idle[upstream.endpoint].append(upstream)

    def retire(self) -> None:
        """Configuration changed: idle connections close now, busy ones when done."""
        self.retired = True
        for idle in self.idle.values():
            for upstream in idle:
                upstream.close()
            idle.clear()


# (service, route, the pool of its one backend or None when it has weighted backends)
Decision = tuple[FastService, Route, "FastPool | None"]


class FastPlan:
    """The fast path's tables for one configuration: services by Host, pools by backend."""

    def __init__(
        self,
        config: WaypointConfig,
        endpoints: Mapping[str, Sequence[str]],
        find_service: Callable[[str], ServiceConfig | None],
        random: RandomSource,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self._find_service = find_service
        self._random = random
        self._services: dict[str, FastService | None] = {}
        self._by_hostname: dict[str, FastService | None] = {}
        self._decided: dict[tuple[str, str, str], Decision | None] = {}
        self.pools: dict[str, FastPool | None] = {}

    def service(self, host: str) -> FastService | None:
        found = self._services.get(host, self)
        if found is not self:
            return found  # type: ignore[return-value]
        service = self._find_service(host)
        fast = None
        if service is not None:
            if service.hostname not in self._by_hostname:
                self._by_hostname[service.hostname] = fast_service(service, self.config)
            fast = self._by_hostname[service.hostname]
        if len(self._services) < 1024:  # bounded against clients sending endless Hosts
            self._services[host] = fast
        return fast

    def decide(self, host: str, method: str, path: str) -> Decision | None:
        """The service, route and (for a route with one backend) pool of a request, or None if
        the general path must serve it; remembered per (Host, method, path) while the
        configuration lasts (bounded: cleared when full)."""
        key = (host, method, path)
        decided = self._decided.get(key, self)
        if decided is not self:
            return decided  # type: ignore[return-value]
        result: Decision | None = None
        service = self.service(host)
        route = None if service is None else service.match(method, path)
        if service is not None and route is not None:
            backends = route.backends
            if len(backends) == 1:
                pool = self.pool(backends[0]) if backends[0].weight else None
                result = None if pool is None else (service, route, pool)
            else:
                result = (service, route, None)
        if len(self._decided) >= 4096:
            self._decided.clear()
        self._decided[key] = result
        return result

    def pool(self, ref: BackendRef) -> FastPool | None:
        """The backend's pool, or None when its DestinationRule asks for what the general path
        does (connection limits, outlier detection, consistent hashing) or it has no endpoint."""
        authority = ref.authority
        if authority in self.pools:
            return self.pools[authority]
        policy = self.config.traffic_policy_for(authority)
        endpoints = self.endpoints.get(authority, ())
        pool = None
        if (
            endpoints
            and policy.connection_pool == ConnectionPool()
            and policy.outlier_detection is None
            and policy.load_balancer.policy is not LoadBalancerPolicy.CONSISTENT_HASH
        ):
            pool = FastPool(authority, endpoints, make_balancer(policy.load_balancer, self._random))
        self.pools[authority] = pool
        return pool

    def retire(self) -> None:
        for pool in self.pools.values():
            if pool is not None:
                pool.retire()


def choose(route: Route, random: RandomSource) -> BackendRef | None:
    backends = route.backends
    if len(backends) == 1:
        return backends[0] if backends[0].weight else None
    return choose_backend(backends, random)


# --- the two connections ----------------------------------------------------------------------

IDLE, CONNECTING, WAITING, SLOW, CLOSED = 0, 1, 2, 3, 4
MAX_BUFFERED = 256 * 1024  # pipelined bytes held while a response is on its way: then pause


class FastFront(SocketChannel):
    """A client connection served by callbacks while its requests are common ones; on the
    first that is not, it becomes the SocketChannel proxy.py's general path serves."""

    def __init__(self, proxy: WaypointProxy) -> None:
        super().__init__(proxy.accepted)
        self._proxy = proxy
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
        decided = plan.decide(host, method, path)
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
            self._pending += data

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
        key = (self._status, flags)
        series = service.series.get(key)
        if series is None:
            labels = labels_for(
                response_code=str(self._status), response_flags=flags, **service.label_values
            )
            series = service.series[key] = proxy.metrics.series(labels)
        observe(series, duration_ms)
        pool = self._pool
        facts: FastFacts = (
            service, self._route_name, pool.authority if pool else "-",
            self._endpoint, self._wall, self._method, self._target, self._host, self._status,
            flags, duration_ms, self._bytes_in, self._bytes_out, self._request_id,
            self._trace_id, self._agent,
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


# What the access log needs of a request the fast path served: (service, route,
# backend authority, endpoint, wall-clock start, method, target, Host, status, flags, duration
# in ms, body bytes in, body bytes out, request id, trace id, user agent).
FastFacts = tuple[
    FastService, str, str, str, float, str, str, str, int, str, float, int, int, str, str, str
]


def _uuid4(text: str) -> str:
    """32 random hex digits as a version 4, RFC 4122 variant UUID (as uuid.uuid4() prints)."""
    variant = "89ab"[int(text[16], 16) & 3]
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:32]}"


def fast_record(facts: FastFacts) -> RequestRecord:
    """The telemetry record of a request the fast path served (formatted at the log flush)."""
    (
        service, route, cluster, endpoint, wall, method, target, host, status, flags,
        duration_ms, bytes_in, bytes_out, request_id, trace_id, agent,
    ) = facts  # fmt: skip
    return RequestRecord(
        start_time=utc_timestamp(wall),
        method=method,
        path=target,
        authority=host or "-",
        protocol="HTTP/1.1",
        response_code=status,
        response_flags=flags,
        duration_ms=duration_ms,
        bytes_received=bytes_in,
        bytes_sent=bytes_out,
        request_id=request_id,
        trace_id=trace_id,
        route_name=route,
        upstream_cluster=cluster,
        upstream_host=endpoint,
        attempts=1 if endpoint != "-" else 0,
        user_agent=agent,
        destination_service=service.hostname,
        destination_service_name=service.name,
        destination_service_namespace=service.namespace,
    )


# The same line as access_log_line(fast_record(facts)) (a test holds them equal), written from
# the tuple: no record is built, at the flush or before.
fast_log_line: Callable[[FastFacts], str] = line_formatter(
    {
        "destination_service": "r[0].hostname",
        "destination_service_name": "r[0].name",
        "destination_service_namespace": "r[0].namespace",
        "route_name": "r[1]",
        "upstream_cluster": "r[2]",
        "upstream_host": "r[3]",
        "attempts": '1 if r[3] != "-" else 0',
        "start_time": "utc(r[4])",
        "method": "r[5]",
        "path": "r[6]",
        "authority": 'r[7] or "-"',
        "protocol": '"HTTP/1.1"',
        "response_code": "r[8]",
        "response_flags": "r[9]",
        "duration_ms": "r[10]",
        "bytes_received": "r[11]",
        "bytes_sent": "r[12]",
        "request_id": "r[13]",
        "trace_id": "r[14]",
        "user_agent": "r[15]",
    },
    {"utc": utc_timestamp},
)


# --- the backend connection -----------------------------------------------------------------

HEAD, BODY, CHUNK_LINE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, UNTIL_EOF, FREE = range(8)
MAX_RESPONSE_HEAD = 64 * 1024


async def pool_connect(pool: FastPool, endpoint: str, timeout_s: float) -> FastUpstream:
    """A new connection to `endpoint` (OSError or TimeoutError if it cannot be reached)."""
    host, _, port = endpoint.rpartition(":")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, upstream = await loop.create_connection(
            lambda: FastUpstream(pool, endpoint), host.strip("[]"), int(port)
        )
    return upstream


class FastUpstream(asyncio.Protocol):
    """A keep-alive connection to an endpoint: sends a request head, passes the response on."""

    def __init__(self, pool: FastPool, endpoint: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self._front: FastFront | None = None
        self._state = FREE
        self._buf = b""
        self._left = 0
        self._sent = 0  # body bytes passed to the client
        self._head_only = False
        self._reusable = True
        self._client_paused = False  # we paused the client's reading (backend slow to read)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, front: FastFront, data: bytes, head_only: bool) -> None:
        self._front = front
        self._state = HEAD
        self._buf = b""
        self._sent = 0
        self._head_only = head_only
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """The client went away mid-exchange: this connection's state is unknown; close it."""
        self._front = None
        self.close()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        front = self._front
        if front is None:
            self.close()  # bytes nobody asked for
            return
        state = self._state
        if state is BODY:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                self._sent += len(data)
                front.write(data)
                return
            if len(data) > left:
                self._reusable = False  # more than the response: the connection is confused
                data = data[:left]
            self._sent += left
            front.write(data)
            self._done()
        elif state is HEAD:
            self._head(self._buf + data if self._buf else data, front)
        elif state is UNTIL_EOF:
            self._sent += len(data)
            front.write(encode_chunk(data))
        else:
            self._chunked(data, front)

    def _head(self, buf: bytes, front: FastFront) -> None:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail_before_head()
                else:
                    self._buf = buf
                return
            head, rest = buf[: end + 4], buf[end + 4 :]
            parsed = recognize_response(head, self._head_only)
            if parsed is None:
                self._fail_before_head()
                return
            status, framing, length, reusable, out = parsed
            if status >= 200:
                break
            if status == 101:  # never asked for: the fast path sends no Upgrade
                self._fail_before_head()
                return
            buf = rest  # 1xx: dropped (the waypoint answers 100-continue itself)
        self._buf = b""
        self._reusable = reusable
        front.response_started(status)
        if framing is LENGTH:
            body = rest[:length]
            if len(rest) > length:
                self._reusable = False
            self._sent = len(body)
            front.write(out + body)
            self._left = length - len(body)
            if self._left:
                self._state = BODY
            else:
                self._done()
        elif framing is NO_BODY:
            if rest:
                self._reusable = False
            front.write(out)
            self._done()
        elif framing is CHUNKED:
            front.write(out)
            self._state = CHUNK_LINE
            if rest:
                self._chunked(rest, front)
        else:
            front.write(out + encode_chunk(rest))
            self._sent = len(rest)
            self._state = UNTIL_EOF

    def _chunked(self, data: bytes, front: FastFront) -> None:
        """Pass a chunked body through as it is, following its framing to find its end."""
        position, size = 0, len(data)
        while position < size:
            state = self._state
            if state is CHUNK_DATA:
                take = min(self._left, size - position)
                position += take
                self._left -= take
                if not self._left:
                    self._state = CHUNK_CRLF
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._buf += data[position:]
                position = size
                if len(self._buf) > _MAX_CHUNK_LINE:
                    self._fail_after_head()
                    return
                break
            line = self._buf + data[position : newline + 1]
            self._buf = b""
            position = newline + 1
            if state is CHUNK_LINE:
                matched = _CHUNK_SIZE.fullmatch(line)
                if matched is None:
                    self._fail_after_head()
                    return
                self._left = int(matched.group(1), 16)
                self._state = CHUNK_DATA if self._left else TRAILERS
            elif state is CHUNK_CRLF:
                if line != b"\r\n":
                    self._fail_after_head()
                    return
                self._state = CHUNK_LINE
            elif line == b"\r\n":  # TRAILERS: the empty line ends the message
                if position < size:
                    self._reusable = False
                self._sent += position
                front.write(data[:position])
                self._done()
                return
            elif not line.endswith(b"\r\n") or len(line) > _MAX_CHUNK_LINE:
                self._fail_after_head()
                return
        self._sent += size
        front.write(data)

    def _done(self) -> None:
        front, self._front = self._front, None
        self._state = FREE
        if front is not None and front.body_pending():
            self._reusable = False  # answered before the request body ended: framing lost
        if self._client_paused and front is not None:
            front.resume_client_reading()
        self._client_paused = False
        if self._reusable:
            self.pool.give_back(self)
        else:
            self.close()
        if front is not None:
            front.response_done(self._sent)

    def _fail_before_head(self) -> None:
        front, self._front = self._front, None
        self.close()
        if front is not None:
            front.upstream_failed()

    def _fail_after_head(self) -> None:
        front, self._front = self._front, None
        self.close()
        if front is not None:
            front.upstream_aborted()

    def eof_received(self) -> bool:
        self.alive = False  # never taken from the pool again
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        front = self._front
        if front is None:
            return
        state = self._state
        if state is HEAD:
            self._fail_before_head()
        elif state is UNTIL_EOF:
            front.write(LAST_CHUNK)
            self._reusable = False
            self._done()
        else:
            self._fail_after_head()

    def pause_writing(self) -> None:
        front = self._front
        if front is not None:
            front.pause_client_reading()
            self._client_paused = True

    def resume_writing(self) -> None:
        front = self._front
        if self._client_paused and front is not None:
            front.resume_client_reading()
        self._client_paused = False
