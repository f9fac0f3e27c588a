"""HBONE into the waypoint: real mutual TLS on loopback, HTTP/1.1 inside each CONNECT stream."""

from __future__ import annotations

import asyncio

import pytest
from waypoint_testing import (
    FRONTEND,
    INTRUDER,
    REVIEWS_V1,
    WAYPOINT_ID,
    TestCa,
    destination_agent,
    hello_backend,
)

from waypoint.config import (
    AuthorizationAction,
    AuthorizationPolicy,
    Route,
    Rule,
    ServiceConfig,
    Source,
    WaypointConfig,
)
from waypoint.http1 import (
    BodyFraming,
    Data,
    EndOfMessage,
    RequestParser,
    Response,
    ResponseParser,
)
from waypoint.inbound import HboneInbound, forwarded_for
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord, Series, WaypointMetrics
from weft.hbone import HbonePool, HboneStream, StreamResetError, TunnelRefusedError
from weft.tls import client_context, server_context


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa()


async def exchange(stream: HboneStream, request: bytes) -> tuple[Response, bytes]:
    """Send one HTTP/1.1 request through the tunnel and read the response."""
    await stream.write(request)
    parser = ResponseParser()
    parser.expect("GET")
    response, body = None, b""
    while True:
        data = await asyncio.wait_for(stream.read(), 5)
        for event in parser.feed(data) if data else parser.feed_eof():
            if isinstance(event, Response):
                response = event
            elif isinstance(event, Data):
                body += event.data
            elif isinstance(event, EndOfMessage):
                assert response is not None
                return response, body


# Every tunnel scenario runs on both paths: the fast path (FastFront over a StreamTransport,
# handing what it cannot serve to the general path) and the general path alone (TunnelChannel).
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "general"])


async def serve_reviews(
    ca: TestCa,
    records: list[RequestRecord],
    policies: tuple[AuthorizationPolicy, ...] = (),
    *,
    fast_path: bool = True,
    metrics: WaypointMetrics | None = None,
) -> tuple[asyncio.Server, WaypointProxy, HboneInbound]:
    """A backend, and the waypoint serving it as reviews (VIP 10.96.0.10:9080) on HBONE."""
    backend = await asyncio.start_server(hello_backend, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    config = WaypointConfig(
        services=(
            ServiceConfig(
                "reviews.shop.svc.cluster.local", 9080, (Route("r", backends=(REVIEWS_V1,)),),
                vips=("10.96.0.10",), authorization_policies=policies,
            ),
        )
    )  # fmt: skip
    proxy = WaypointProxy(
        config,
        {REVIEWS_V1.authority: [f"127.0.0.1:{backend_port}"]},
        access_log=records.append,
        fast_path=fast_path,
        metrics=metrics,
    )
    inbound = HboneInbound(proxy, server_context(ca.issue(WAYPOINT_ID), ca.bundle))
    await inbound.start("127.0.0.1", 0)
    return backend, proxy, inbound


def test_forwarded_for_takes_the_first_address() -> None:
    assert forwarded_for((("forwarded", "for=10.1.1.5;proto=http"),)) == "10.1.1.5"
    assert (
        forwarded_for((("Forwarded", 'for="[2001:db8::1]:4711", for=10.0.0.1'),)) == "2001:db8::1"
    )
    assert forwarded_for((("x-other", "for=1.2.3.4"),)) is None


@BOTH_PATHS
def test_tunnel_carries_http_and_the_peer_svid_decides_policy(ca: TestCa, fast_path: bool) -> None:
    policy = AuthorizationPolicy(
        "frontend-only", "shop", AuthorizationAction.ALLOW,
        (Rule(sources=(Source(principals=("cluster.local/ns/shop/sa/frontend",)),)),),
    )  # fmt: skip
    records: list[RequestRecord] = []

    async def main() -> None:
        backend, proxy, inbound = await serve_reviews(ca, records, (policy,), fast_path=fast_path)
        svids = {who: ca.issue(who) for who in (FRONTEND, INTRUDER)}
        pools = {
            who: HbonePool(lambda source, svid=svid: client_context(svid, ca.bundle))
            for who, svid in svids.items()
        }
        peer = ("127.0.0.1", inbound.port)
        request = b"GET /reviews/1 HTTP/1.1\r\nHost: reviews\r\n\r\n"
        try:
            stream = await pools[FRONTEND].open_stream(
                FRONTEND, WAYPOINT_ID, peer, "10.96.0.10:9080", [("forwarded", "for=10.1.1.5")]
            )
            assert await exchange(stream, request) == (
                Response(
                    200,
                    "OK",
                    (("content-length", "5"),),
                    framing=BodyFraming.CONTENT_LENGTH,
                    content_length=5,
                ),
                b"hello",
            )
            stream.close_write()
            denied = await pools[INTRUDER].open_stream(
                INTRUDER, WAYPOINT_ID, peer, "10.96.0.10:9080"
            )
            response, body = await exchange(denied, request)
            assert (response.status, body) == (403, b"RBAC: access denied")
            denied.close_write()
            with pytest.raises(TunnelRefusedError, match="answered 503"):
                await pools[FRONTEND].open_stream(FRONTEND, WAYPOINT_ID, peer, "10.96.0.99:80")
        finally:
            # Server first: HboneServer.close() aborts transports that a client close may
            # already have closed, which trips asyncio's SSL transport (reported to weft.hbone).
            await inbound.close()
            for pool in pools.values():
                await pool.close()
            await proxy.close()
            backend.close()

        # authorization is the general path's: the fast path handed both tunnels to it
        assert proxy.general_connections == (2 if fast_path else 0)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert records[0].source_principal == FRONTEND.uri
    assert records[0].connection_security_policy == "mutual_tls"
    assert records[1].response_flags == "rbac_access_denied"


@BOTH_PATHS
def test_half_close_reset_and_shutdown_reach_the_tunnel_as_tcp_would(
    ca: TestCa, fast_path: bool
) -> None:
    records: list[RequestRecord] = []

    async def main() -> None:
        backend, proxy, inbound = await serve_reviews(ca, records, fast_path=fast_path)
        svid = ca.issue(FRONTEND)
        pool = HbonePool(lambda source: client_context(svid, ca.bundle))
        peer = ("127.0.0.1", inbound.port)

        async def open_tunnel() -> HboneStream:
            return await pool.open_stream(FRONTEND, WAYPOINT_ID, peer, "10.96.0.10:9080")

        try:
            # A client that half-closes after its request still gets the answer, then the end.
            stream = await open_tunnel()
            await stream.write(b"GET /1 HTTP/1.1\r\nHost: reviews\r\n\r\n")
            stream.close_write()
            received = b""
            while data := await asyncio.wait_for(stream.read(), 5):
                received += data
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.endswith(b"hello")
            # A client that resets mid-body: the request is logged as the client's disconnect.
            stream = await open_tunnel()
            await stream.write(b"POST /2 HTTP/1.1\r\nHost: reviews\r\ncontent-length: 100\r\n\r\n")
            await stream.write(b"partial")
            stream.abort()
            while len(records) < 2:
                await asyncio.sleep(0.01)
            # A tunnel open when the waypoint stops is reset, not left hanging.
            stream = await open_tunnel()
            await inbound.close()
            with pytest.raises(StreamResetError):
                await asyncio.wait_for(stream.read(), 5)
            assert proxy.general_connections == 0  # the fast path served all three tunnels
        finally:
            await inbound.close()
            await pool.close()
            await proxy.close()
            backend.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert [(r.path, r.response_code, r.response_flags) for r in records] == [
        ("/1", 200, "-"),
        ("/2", 0, "downstream_disconnect"),
    ]


def test_tunnel_requests_are_counted_and_logged_alike_on_both_paths(ca: TestCa) -> None:
    """The tunnel's destination picks the service whatever Host says, and the peer's SVID is
    in the series and the access-log lines, the same on the fast path as on the general one."""
    requests = (
        b"GET /a HTTP/1.1\r\nHost: reviews\r\nuser-agent: t\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: elsewhere.example\r\ncontent-length: 3\r\n\r\nabc",
        b"HEAD /c HTTP/1.1\r\nHost: reviews\r\n\r\n",
    )

    async def scenario(
        fast_path: bool,
    ) -> tuple[list[object], list[RequestRecord], list[tuple[tuple[str, ...], Series]]]:
        records: list[RequestRecord] = []
        metrics = WaypointMetrics()
        backend, proxy, inbound = await serve_reviews(
            ca, records, fast_path=fast_path, metrics=metrics
        )
        pool = HbonePool(lambda source: client_context(ca.issue(FRONTEND), ca.bundle))
        try:
            stream = await pool.open_stream(
                FRONTEND, WAYPOINT_ID, ("127.0.0.1", inbound.port), "10.96.0.10:9080"
            )
            answers: list[object] = []
            for request in requests:
                await stream.write(request)
                parser = ResponseParser()
                parser.expect(request.split(b" ")[0].decode())
                done = False
                while not done:
                    data = await asyncio.wait_for(stream.read(), 5)
                    for event in parser.feed(data):
                        if isinstance(event, Response):
                            answers.append(event.status)
                        elif isinstance(event, Data):
                            answers.append(event.data)
                        elif isinstance(event, EndOfMessage):
                            done = True
            stream.close_write()
            while len(records) < len(requests):
                await asyncio.sleep(0.01)
            assert proxy.general_connections == 0
        finally:
            await inbound.close()
            await pool.close()
            await proxy.close()
            backend.close()
        return answers, records, sorted(metrics.snapshot().items())

    def comparable(record: RequestRecord) -> dict[str, object]:
        fields = dict(vars(record))
        for varying in ("start_time", "duration_ms", "request_id", "trace_id", "upstream_host"):
            del fields[varying]
        return fields

    async def main() -> None:
        fast = await scenario(fast_path=True)
        general = await scenario(fast_path=False)
        assert fast[0] == general[0] == [200, b"hello", 200, b"hello", 200]
        assert [comparable(r) for r in fast[1]] == [comparable(r) for r in general[1]]
        assert fast[1][1].destination_service == "reviews.shop.svc.cluster.local"
        assert fast[1][1].source_principal == FRONTEND.uri
        # the same series (label values and counts), durations aside
        fast_series = [(labels, s[0]) for labels, s in fast[2]]
        general_series = [(labels, s[0]) for labels, s in general[2]]
        assert fast_series == general_series
        assert any(FRONTEND.uri in labels and "mutual_tls" in labels for labels, _ in fast_series)

    asyncio.run(asyncio.wait_for(main(), 30))


class BigBackend(asyncio.Protocol):
    """Answers each request, once its body is in (any framing), with ANSWER bytes and the
    number of body bytes it received (`x-received`)."""

    ANSWER = 6 * 1024 * 1024  # beyond an HBONE stream's window (4 MiB): back-pressure

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.parser = RequestParser()
        self.received = 0

    def data_received(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if isinstance(event, Data):
                self.received += len(event.data)
            elif isinstance(event, EndOfMessage):
                head = (
                    f"HTTP/1.1 200 OK\r\ncontent-length: {self.ANSWER}\r\n"
                    f"x-received: {self.received}\r\n\r\n"
                )
                self.transport.write(head.encode() + b"r" * self.ANSWER)
                self.received = 0


@BOTH_PATHS
def test_large_bodies_cross_both_tunnels_with_back_pressure(ca: TestCa, fast_path: bool) -> None:
    """A 6 MiB request body in and a 6 MiB answer out (both beyond a stream's window), tunnel in
    and tunnel out (a destination agent in front of the backend), twice on one tunnel: every
    byte arrives."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        backend = await loop.create_server(BigBackend, "127.0.0.1", 0)
        endpoint = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        config = WaypointConfig(
            services=(
                ServiceConfig(
                    "reviews.shop.svc.cluster.local", 9080,
                    (Route("r", backends=(REVIEWS_V1,)),), vips=("10.96.0.10",),
                ),
            )
        )  # fmt: skip
        waypoint_svid = ca.issue(WAYPOINT_ID)
        client_svid = ca.issue(FRONTEND)
        pool = HbonePool(lambda source: client_context(client_svid, ca.bundle))
        body = bytes(range(256)) * (6 * 4096)  # 6 MiB
        async with destination_agent(ca) as outbound:
            proxy = WaypointProxy(
                config,
                {REVIEWS_V1.authority: [endpoint]},
                connect=outbound.connect,
                fast_dial=outbound.dial,
                fast_path=fast_path,
                access_log=lambda record: None,
            )
            inbound = HboneInbound(proxy, server_context(waypoint_svid, ca.bundle))
            await inbound.start("127.0.0.1", 0)
            try:
                stream = await pool.open_stream(
                    FRONTEND, WAYPOINT_ID, ("127.0.0.1", inbound.port), "10.96.0.10:9080"
                )
                for _ in range(2):
                    head = (
                        f"POST /up HTTP/1.1\r\nHost: reviews\r\ncontent-length: {len(body)}\r\n\r\n"
                    )
                    await stream.write(head.encode() + body)
                    parser = ResponseParser()
                    parser.expect("POST")
                    response, received, done = None, 0, False
                    while not done:
                        data = await asyncio.wait_for(stream.read(), 5)
                        for event in parser.feed(data):
                            if isinstance(event, Response):
                                response = event
                            elif isinstance(event, Data):
                                assert set(event.data) == {ord("r")}
                                received += len(event.data)
                            elif isinstance(event, EndOfMessage):
                                done = True
                    assert response is not None
                    assert response.status == 200
                    assert response.header("x-received") == str(len(body))
                    assert received == BigBackend.ANSWER
                # the general path streams a body beyond its buffer limit chunked: the same bytes
                assert proxy.general_connections == 0
            finally:
                await inbound.close()  # servers before the pool: see the note above
                await pool.close()
                await proxy.close()
        backend.close()

    asyncio.run(asyncio.wait_for(main(), 30))
