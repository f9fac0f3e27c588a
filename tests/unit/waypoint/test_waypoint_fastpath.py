"""The HTTP/1.1 fast path: what it takes, what it leaves to the strict codec, how it relays."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable

import pytest
from waypoint_testing import HOST, TEST_TIMEOUT_S

from waypoint.config import (
    AuthorizationPolicy,
    BackendRef,
    Route,
    ServiceConfig,
    WaypointConfig,
)
from waypoint.fastpath.backend import FastUpstream
from waypoint.fastpath.front import MAX_BUFFERED
from waypoint.fastpath.heads import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    recognize_request,
    recognize_response,
)
from waypoint.fastpath.plan import FastService
from waypoint.fastpath.pool import dial_tcp
from waypoint.fastpath.records import NO_SOURCE, FastFacts, fast_log_line, fast_record
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord, access_log_line

V1 = BackendRef(name="reviews-v1", port=9080, namespace="default")
ROUTES = (Route(name="default/reviews/0", backends=(V1,)),)

# --- recognising heads ------------------------------------------------------------------------


def test_a_common_request_head_is_taken_with_its_facts() -> None:
    head = (
        b"GET /reviews/1?x=2 HTTP/1.1\r\nHost: reviews\r\nUser-Agent: t/1\r\n"
        b"X-Request-Id: abc\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        b"\r\nContent-Length: 5\r\n\r\n"
    )
    method, target, host, length, request_id, traceparent, agent, forward = (
        recognize_request(head) or ()
    )
    assert (method, target, host, length, request_id, agent) == (
        "GET", "/reviews/1?x=2", "reviews", 5, "abc", "t/1"
    )  # fmt: skip
    assert traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # The head goes on as it came, less its traceparent (a child one is appended) and its end.
    assert forward == (
        b"GET /reviews/1?x=2 HTTP/1.1\r\nHost: reviews\r\nUser-Agent: t/1\r\n"
        b"X-Request-Id: abc\r\nContent-Length: 5\r\n"
    )


def test_connection_keep_alive_is_dropped_as_hop_by_hop() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\nKeep-Alive: t=5\r\nX: 1\r\n\r\n"
    recognized = recognize_request(head)
    assert recognized is not None
    assert recognized[-1] == b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n"
    alone = recognize_request(b"GET / HTTP/1.1\r\nKeep-Alive: t=1\r\nHost: a\r\n\r\n")
    assert alone is not None
    assert alone[-1] == b"GET / HTTP/1.1\r\nHost: a\r\n"
    empty_id = recognize_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\n\r\n")
    assert empty_id is not None
    assert empty_id[4] is None  # a new one is generated, the empty line not forwarded
    assert empty_id[-1] == b"GET / HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n",  # a control character
        b"GET / HTTP/1.1\r\nHost: a\r\nX Bad: a\r\n\r\n",  # a name that is not a token
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",  # a bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n\r\n",  # no Host
        b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n",  # a valid token, but for the general path
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_anything_but_the_common_shape_is_left_to_the_codec(head: bytes) -> None:
    assert recognize_request(head) is None


def test_response_framing_and_hop_by_hop_fields() -> None:
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: s\r\n\r\n"
    assert recognize_response(plain, False) == (200, LENGTH, 3, True, plain)
    status, framing, _, reusable, out = recognize_response(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: t=5\r\n"
        b"Transfer-Encoding: chunked\r\nX-End: 2\r\n\r\n",
        False,
    ) or (0, 0, 0, True, b"")
    assert (status, framing, reusable) == (200, CHUNKED, False)
    assert out == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-End: 2\r\n\r\n"
    until_close = recognize_response(b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\n", False)
    assert until_close == (
        200, UNTIL_CLOSE, 0, False, b"HTTP/1.0 200 OK\r\nX: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    )  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    assert recognize_response(head, True) == (200, NO_BODY, 9, True, head)  # to a HEAD
    assert recognize_response(b"HTTP/1.1 204 No Content\r\n\r\n", False) is not None
    for bad in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
    ):
        assert recognize_response(bad, False) is None, bad


# --- through the proxy --------------------------------------------------------------------------


class RawBackend:
    """Answers each request with the scripted bytes for its path; keeps what it received."""

    def __init__(self, script: dict[str, bytes]) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                path = head.split(b" ")[1].decode()
                early = path.startswith("/early")  # answer without reading the body
                body = await reader.readexactly(length) if length and not early else b""
                self.received.append(head + body)
                answer = self.script.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                writer.write(answer)
                await writer.drain()
                if path.startswith("/close"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


Scenario = Callable[[WaypointProxy, int, RawBackend, list[RequestRecord]], Awaitable[None]]


def run(scenario: Scenario, script: dict[str, bytes] | None = None, **config: object) -> None:
    async def main() -> None:
        backend = RawBackend(script or {})
        backend_port = await backend.start()
        records: list[RequestRecord] = []
        waypoint = WaypointConfig(
            services=(ServiceConfig(hostname=HOST, port=9080, routes=ROUTES),),
            **config,  # type: ignore[arg-type]
        )
        endpoints = {V1.authority: [f"127.0.0.1:{backend_port}"]}
        proxy = WaypointProxy(waypoint, endpoints, access_log=records.append)
        _, port = await proxy.start()
        try:
            await asyncio.wait_for(scenario(proxy, port, backend, records), TEST_TIMEOUT_S)
        finally:
            await proxy.close()
            await backend.stop()

    asyncio.run(main())


async def exchange(port: int, data: bytes, until: bytes | None = None) -> bytes:
    """Send `data` on a new connection; read until `until` is in the answer (or it closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    while until is None or until not in received:
        chunk = await asyncio.wait_for(reader.read(65536), TEST_TIMEOUT_S)
        if not chunk:
            break
        received += chunk
    writer.close()
    return received


def request(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def test_common_requests_stay_on_the_fast_path_on_one_backend_connection() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        pipelined = request("/a") + request("/b", "traceparent: 00-" + "1" * 32 + "-" + "2" * 16
                                             + "-00\r\nX-Request-Id: mine\r\n")  # fmt: skip
        answer = await exchange(port, pipelined, until=b"okHTTP/1.1 200 OK\r\nContent-Length: 2")
        assert answer.count(b"HTTP/1.1 200 OK") == 2
        await exchange(port, request("/c"), until=b"ok")
        assert proxy.general_connections == 0
        assert backend.connections == 1  # kept alive and reused across client connections
        first, second, _ = backend.received
        generated = first.split(b"\r\nx-request-id: ")[1].split(b"\r\n")[0].decode()
        assert uuid.UUID(generated).version == 4
        assert str(uuid.UUID(generated)) == generated
        trace = first.split(b"\r\ntraceparent: ")[1].split(b"\r\n")[0].decode()
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", trace)
        assert records[0].trace_id == trace[3:35]
        assert records[0].request_id == generated
        # The caller's request id is kept, its trace continued (same trace, flags kept).
        assert second.count(b"X-Request-Id: mine") == 1
        assert b"x-request-id" not in second
        assert b"traceparent: 00-" + b"1" * 32 + b"-" in second
        assert second.endswith(b"-00\r\n\r\n")
        assert b"2" * 16 not in second
        assert [r.path for r in records] == ["/a", "/b", "/c"]
        assert records[1].request_id == "mine"
        assert records[1].trace_id == "1" * 32
        assert {r.response_code for r in records} == {200}
        assert 'response_code="200"' in proxy.metrics.exposition().decode()

    run(scenario)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         b"400"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
         b"400"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", b"400"),
    ],
)  # fmt: skip
def test_smuggling_shapes_get_the_codec_answer_after_fast_requests(
    raw: bytes, status: bytes
) -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        answer = await exchange(port, request("/first") + raw)
        assert answer.startswith(b"HTTP/1.1 200 OK")  # the fast path served the first
        assert answer.split(b"ok", 1)[1].startswith(b"HTTP/1.1 " + status)
        assert b"connection: close" in answer.lower()
        assert len(backend.received) == 1  # the bad request never reached the backend
        assert proxy.general_connections == 1

    run(scenario)


def test_chunked_and_until_close_responses_are_relayed_and_framed() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    )
    script = {
        "/chunked": chunked,
        "/close-until": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        "/nobody": b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n",
        "/info": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    }  # fmt: skip

    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        answer = await exchange(port, request("/chunked") + request("/x"), until=b"\r\n\r\nok")
        assert answer.startswith(chunked)  # passed through as it came, trailers included
        assert answer.endswith(b"Content-Length: 2\r\n\r\nok")
        answer = await exchange(port, request("/close-until") + request("/x"), until=b"ok")
        assert b"transfer-encoding: chunked\r\n\r\n" in answer
        assert b"d\r\nuntil the end\r\n0\r\n\r\nHTTP/1.1 200 OK" in answer  # the client stays
        head = f"HEAD /head HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        answer = await exchange(port, head + request("/x"), until=b"ok")
        assert answer == script["/head"] + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        answer = await exchange(port, request("/nobody") + request("/info"), until=b"hi")
        assert answer == script["/nobody"] + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        assert proxy.general_connections == 0

    run(scenario, script)


def test_request_bodies_are_relayed_across_reads() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * 300_000
        head = f"POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body[:1000])
        await asyncio.sleep(0.05)
        writer.write(body[1000:] + request("/after"))
        received = b""
        while received.count(b"ok") < 2:
            received += await asyncio.wait_for(reader.read(65536), TEST_TIMEOUT_S)
        writer.close()
        assert backend.received[0].endswith(b"\r\n\r\n" + body)
        assert backend.received[1].startswith(b"GET /after ")
        assert records[0].bytes_received == len(body)
        assert proxy.general_connections == 0

    run(scenario)


def test_a_body_sent_while_the_backend_connection_opens_is_held_bounded() -> None:
    """The client's body beyond MAX_BUFFERED waits in the client's socket, not in the waypoint,
    until the backend connection is open; then all of it goes."""

    async def main() -> None:
        backend = RawBackend({})
        backend_port = await backend.start()
        opened = asyncio.Event()

        async def slow_dial(endpoint: str, factory: Callable[[], FastUpstream]) -> FastUpstream:
            await opened.wait()
            return await dial_tcp(endpoint, factory)

        proxy = WaypointProxy(
            WaypointConfig(services=(ServiceConfig(hostname=HOST, port=9080, routes=ROUTES),)),
            {V1.authority: [f"127.0.0.1:{backend_port}"]},
            access_log=lambda record: None,
            fast_dial=slow_dial,
        )
        _, port = await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = bytes(range(256)) * 32768  # 8 MiB
            head = f"POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await asyncio.sleep(0.3)  # the client sends what the sockets take
            (front,) = proxy.fast_fronts
            assert len(front._pending) <= MAX_BUFFERED + 256 * 1024
            opened.set()
            answer = await asyncio.wait_for(reader.readuntil(b"ok"), TEST_TIMEOUT_S)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert backend.received[0].endswith(b"\r\n\r\n" + body)
            assert proxy.general_connections == 0
        finally:
            await proxy.close()
            await backend.stop()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_backend_failures_are_answered_as_the_general_path_does() -> None:
    script = {
        "/close-now": b"",  # the backend closes without answering
        "/garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    }

    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        answer = await exchange(port, request("/close-now") + request("/x"), until=b"ok")
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert answer.endswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # reconnected
        answer = await exchange(port, request("/garbage"), until=b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert [r.response_code for r in records] == [503, 200, 503]
        assert records[0].response_flags == "upstream_reset"

    run(scenario, script)


def test_routes_with_something_to_apply_take_the_general_path() -> None:
    deny = AuthorizationPolicy(name="allow-nothing", namespace="default")

    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        answer = await exchange(port, request("/x"), until=b"denied")
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert proxy.general_connections == 1

    run(scenario, authorization_policies=(deny,))


def test_backend_is_unreachable_gives_503_connect_failure() -> None:
    async def main() -> None:
        waypoint = WaypointConfig(
            services=(ServiceConfig(hostname=HOST, port=9080, routes=ROUTES),)
        )
        records: list[RequestRecord] = []
        proxy = WaypointProxy(waypoint, {V1.authority: ["127.0.0.1:1"]}, access_log=records.append)
        _, port = await proxy.start()
        try:
            answer = await exchange(port, request("/x"), until=b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert records[0].response_flags == "upstream_connect_error"
            assert proxy.general_connections == 0
        finally:
            await proxy.close()

    asyncio.run(main())


def test_fast_log_line_is_the_line_of_its_record() -> None:
    service = FastService(ServiceConfig(hostname=HOST, port=9080, routes=ROUTES))
    tunnel = ("spiffe://cluster.local/ns/shop/sa/frontend", "shop", "mutual_tls")
    for endpoint, agent, host, source in (
        ("127.0.0.1:9", 'a "b" \\ é\t', "", NO_SOURCE),
        ("-", "-", "h:1", tunnel),
    ):
        facts: FastFacts = (
            service, "default/reviews/0", V1.authority, endpoint, 1_700_000_000.1234, "GET",
            '/p?q="1"', host, 200, "-", 0.12345, 3, 4, "id", "-", agent, source,
        )  # fmt: skip
        line = fast_log_line(facts)
        assert line == access_log_line(fast_record(facts))
        fields = json.loads(line)
        assert fields["user_agent"] == agent
        assert (
            fields["source_principal"],
            fields["source_workload_namespace"],
            fields["connection_security_policy"],
        ) == source


def test_new_endpoints_from_discovery_take_the_next_requests() -> None:
    async def main() -> None:
        first, second = RawBackend({}), RawBackend({})
        ports = [await first.start(), await second.start()]
        service = ServiceConfig(hostname=HOST, port=9080, routes=ROUTES)
        config = WaypointConfig(services=(service,))
        proxy = WaypointProxy(config, {V1.authority: [f"127.0.0.1:{ports[0]}"]})
        _, port = await proxy.start()
        try:
            await exchange(port, request("/one"), until=b"ok")
            proxy.update(config, {V1.authority: [f"127.0.0.1:{ports[1]}"]})
            await exchange(port, request("/two"), until=b"ok")
            assert [r.split(b" ")[1] for r in first.received] == [b"/one"]
            assert [r.split(b" ")[1] for r in second.received] == [b"/two"]
            assert proxy.general_connections == 0
        finally:
            await proxy.close()
            await first.stop()
            await second.stop()

    asyncio.run(main())


def test_an_answer_before_the_request_body_ended_closes_both_connections() -> None:
    script = {"/early": b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"}

    async def scenario(
        proxy: WaypointProxy, port: int, backend: RawBackend, records: list[RequestRecord]
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST /early HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n"
        writer.write(head.encode() + b"x" * 10)
        answer = b""
        while chunk := await asyncio.wait_for(reader.read(65536), TEST_TIMEOUT_S):
            answer += chunk  # until the waypoint closes: the body's framing is lost
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 ")
        await exchange(port, request("/next"), until=b"ok")
        assert backend.connections == 2  # the first backend connection was not reused

    run(scenario, script)
