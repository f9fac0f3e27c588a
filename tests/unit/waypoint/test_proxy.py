"""The asyncio proxy shell on loopback: real sockets, a real backend, the whole request path."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from waypoint_testing import HOST, TEST_TIMEOUT_S, Answer, Backend, Client

from waypoint.config import (
    AuthorizationAction,
    AuthorizationPolicy,
    BackendRef,
    ConnectionPool,
    FaultAbort,
    FaultInjection,
    HeaderMatch,
    LoadBalancer,
    LoadBalancerPolicy,
    Operation,
    OutlierDetection,
    PathMatch,
    PathMatchType,
    RateLimit,
    RequestRedirect,
    ResponseHeaderModifier,
    RetryOn,
    RetryPolicy,
    Route,
    RouteMatch,
    Rule,
    ServiceConfig,
    Source,
    Timeouts,
    TrafficPolicy,
    WaypointConfig,
)
from waypoint.downstream import Downstream
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord
from weft.identity import Identity

V1 = BackendRef(name="reviews-v1", port=9080)
V2 = BackendRef(name="reviews-v2", port=9080)


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Scenario = Callable[[WaypointProxy, int, list[Backend], list[RequestRecord]], Awaitable[None]]


# Every scenario runs twice: with the fast path (fastpath/ takes the requests it can) and
# without it (proxy.py's general path takes all), so both give the same answers.
PATHS = {"fast": True}


@pytest.fixture(autouse=True, params=["fast-path", "general-path"])
def waypoint_path(request: pytest.FixtureRequest) -> Iterator[None]:
    PATHS["fast"] = request.param == "fast-path"
    yield
    PATHS["fast"] = True


def run(
    scenario: Scenario,
    routes: tuple[Route, ...],
    backends: int = 1,
    endpoints: dict[str, list[str]] | None = None,
    proxy_options: dict[str, float] | None = None,
    **config: object,
) -> None:
    """Start backends and a proxy on loopback, run the scenario, tear everything down."""

    async def main() -> None:
        started = [await Backend(f"b{i}").start() for i in range(backends)]
        records: list[RequestRecord] = []
        waypoint = WaypointConfig(
            services=(ServiceConfig(hostname=HOST, port=9080, routes=routes),),
            **config,  # type: ignore[arg-type]
        )
        mapping = {V1.authority: [started[0].endpoint]}
        if endpoints is not None:  # "backend:<n>" stands for the n-th started backend
            mapping = {
                authority: [
                    started[int(e.split(":")[1])].endpoint if e.startswith("backend:") else e
                    for e in addresses
                ]
                for authority, addresses in endpoints.items()
            }
        if backends > 1 and endpoints is None:
            mapping = {V1.authority: [started[0].endpoint], V2.authority: [started[1].endpoint]}
        options: dict[str, Any] = {"fast_path": PATHS["fast"], **(proxy_options or {})}
        proxy = WaypointProxy(waypoint, mapping, access_log=records.append, **options)
        _, port = await proxy.start()
        try:
            await asyncio.wait_for(scenario(proxy, port, started, records), TEST_TIMEOUT_S)
        finally:
            await proxy.close()
            for backend in started:
                await backend.stop()

    asyncio.run(main())


def prefix(value: str, *headers: HeaderMatch) -> RouteMatch:
    return RouteMatch(path=PathMatch(PathMatchType.PATH_PREFIX, value), headers=headers)


DEFAULT = (Route("default", backends=(V1,)),)
NO_RETRY = (Route("r", backends=(V1,), retry=RetryPolicy(attempts=0)),)


@dataclass
class Served:
    """What a run of plain GETs saw: the answers in order, the backends, the access records."""

    answers: list[Answer]
    backends: list[Backend]
    records: list[RequestRecord]


def get_in_turn(routes: tuple[Route, ...], *targets: str, **options: Any) -> Served:
    """GET each target in turn on one client connection through a fresh proxy (`run`'s options)."""
    served = Served([], [], [])

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        served.answers.extend([await client.get(target) for target in targets])
        client.close()
        served.backends.extend(backends)
        served.records.extend(records)

    run(scenario, routes, **options)
    return served


# --- behaviour ---------------------------------------------------------------------------------


def test_request_is_forwarded_with_request_id_and_trace_context() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        answer = await client.get(
            "/items?id=1", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        client.close()
        assert answer.response.status == 200
        seen = dict(tuple(h) for h in answer.json()["headers"])  # type: ignore[union-attr]
        assert answer.json()["target"] == "/items?id=1"
        assert "x-request-id" in seen
        assert seen["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert seen["traceparent"] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        (record,) = records
        assert (record.response_code, record.route_name, record.upstream_host) == (
            200,
            "default",
            backends[0].endpoint,
        )
        assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert 'response_code="200"' in proxy.metrics.exposition().decode()

    run(scenario, DEFAULT)


def test_header_match_sends_a_canary_user_to_v2_and_edits_the_response() -> None:
    routes = (
        Route("canary", matches=(prefix("/", HeaderMatch("x-user", "jason")),), backends=(V2,),
              filters=(ResponseHeaderModifier(set=(("x-route", "canary"),)),)),
        Route("default", backends=(V1,)),
    )  # fmt: skip

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        canary = await client.get("/", "x-user: jason")
        plain = await client.get("/")
        client.close()
        assert (canary.json()["backend"], canary.response.header("x-route")) == ("b1", "canary")
        assert (plain.json()["backend"], plain.response.header("x-route")) == ("b0", None)

    run(scenario, routes, backends=2)


def test_upstream_connection_is_reused_across_requests() -> None:
    served = get_in_turn(DEFAULT, "/", "/", "/")
    assert [answer.response.status for answer in served.answers] == [200, 200, 200]
    assert served.backends[0].connections == 1


def test_denied_request_gets_rbac_403_and_the_connection_stays_usable() -> None:
    deny = AuthorizationPolicy("deny-admin", "default", AuthorizationAction.DENY,
                               (Rule(operations=(Operation(paths=("/admin*",)),)),))  # fmt: skip

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        denied = await client.send(
            f"POST /public/../admin HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\n"
            "hello".encode(),
            "POST",
        )
        allowed = await client.get("/public")
        client.close()
        assert (denied.response.status, denied.body, denied.reason) == (
            403,
            b"RBAC: access denied",
            "rbac_access_denied",
        )
        assert allowed.response.status == 200
        assert records[0].authz_policy == "default/deny-admin"
        assert len(backends[0].requests) == 1

    run(scenario, DEFAULT, authorization_policies=(deny,))


def test_unknown_host_and_unmatched_path_are_404() -> None:
    routes = (Route("api", matches=(prefix("/api"),), backends=(V1,)),)

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        assert (await client.get("/api", host="other.svc")).reason == "route_not_found"
        assert (await client.get("/web")).response.status == 404
        assert (await client.get("/api/x", host="reviews:9080")).response.status == 200
        client.close()

    run(scenario, routes)


def test_a_503_is_retried_and_the_client_sees_the_success() -> None:
    routes = (
        Route(
            "r",
            backends=(V1,),
            retry=RetryPolicy(
                attempts=2,
                retry_on=frozenset({RetryOn.SERVER_ERROR}),
                backoff_base_s=0.001,
                backoff_max_s=0.001,
            ),
        ),
    )
    served = get_in_turn(routes, "/flaky/1")
    assert served.answers[0].response.status == 200
    assert served.records[0].attempts == 2


def test_per_try_timeout_gives_504_at_the_deadline() -> None:
    routes = (Route("r", backends=(V1,), timeouts=Timeouts(backend_request_s=0.1)),)

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        started = time.monotonic()
        answer = await client.get("/slow/1000")
        elapsed = time.monotonic() - started
        client.close()
        assert (answer.response.status, answer.body, answer.reason) == (
            504,
            b"upstream request timeout",
            "upstream_request_timeout",
        )
        assert 0.09 <= elapsed < 0.6

    run(scenario, routes)


def test_refused_connection_is_503_upstream_connect_error() -> None:
    (answer,) = get_in_turn(
        NO_RETRY, "/", endpoints={V1.authority: [f"127.0.0.1:{closed_port()}"]}
    ).answers
    assert (answer.response.status, answer.reason) == (503, "upstream_connect_error")


def test_backend_reset_before_headers_is_503_upstream_reset() -> None:
    (answer,) = get_in_turn(NO_RETRY, "/reset").answers
    assert (answer.response.status, answer.reason) == (503, "upstream_reset")


def test_backend_without_endpoints_is_no_healthy_upstream() -> None:
    (answer,) = get_in_turn(DEFAULT, "/", endpoints={V1.authority: []}).answers
    assert (answer.response.status, answer.body) == (503, b"no healthy upstream")


def test_local_rate_limit_answers_429_once_tokens_run_out() -> None:
    routes = (Route("r", backends=(V1,), filters=(RateLimit(max_tokens=2, fill_interval_s=60),)),)
    served = get_in_turn(routes, "/", "/", "/")
    assert [answer.response.status for answer in served.answers] == [200, 200, 429]


def test_injected_abort_answers_with_its_code() -> None:
    routes = (Route("r", backends=(V1,), filters=(FaultInjection(abort=FaultAbort(418, 100)),)),)
    served = get_in_turn(routes, "/")
    assert (served.answers[0].response.status, served.answers[0].reason) == (418, "fault_injected")
    assert served.backends[0].requests == []


def test_redirect_is_answered_by_the_waypoint() -> None:
    routes = (Route("r", filters=(RequestRedirect(scheme="https", status_code=301),)),)
    (answer,) = get_in_turn(routes, "/a?b=1").answers
    assert (answer.response.status, answer.response.header("location")) == (
        301,
        f"https://{HOST}/a?b=1",
    )


def test_chunked_request_body_is_reframed_with_its_length() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        answer = await client.send(
            f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode(),
            "POST",
        )
        client.close()
        assert answer.json()["body"] == "hello world"
        assert backends[0].requests[0].header("content-length") == "11"

    run(scenario, DEFAULT)


def test_body_above_the_buffer_limit_is_streamed_intact() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, four times the buffer limit

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        head = f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(payload)}\r\n\r\n"
        answer = await client.send(head.encode() + payload, "POST")
        client.close()
        assert answer.json()["body"].encode("latin-1") == payload  # type: ignore[union-attr]
        if proxy.fast_path:  # relayed as it came
            assert backends[0].requests[0].header("content-length") == str(len(payload))
        else:  # read up to the retry buffer's limit, the rest streamed chunked
            assert backends[0].requests[0].header("transfer-encoding") == "chunked"
        assert records[0].bytes_received == len(payload)

    run(scenario, DEFAULT)


def test_expect_100_continue_is_answered_by_the_waypoint() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"PUT /echo HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\n"
            "Content-Length: 2\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TEST_TIMEOUT_S)
        writer.write(b"ok")
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TEST_TIMEOUT_S)
        writer.close()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert final.startswith(b"HTTP/1.1 200")
        assert backends[0].requests[0].header("expect") is None

    run(scenario, DEFAULT)


def test_circuit_opens_beyond_connection_and_pending_limits() -> None:
    policy = TrafficPolicy(
        connection_pool=ConnectionPool(max_connections=1, max_pending_requests=0)
    )

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        slow, fast = await Client.connect(port), await Client.connect(port)
        slow_answer = asyncio.create_task(slow.get("/slow/300"))
        await asyncio.sleep(0.1)
        rejected = await fast.get("/")
        assert (rejected.response.status, rejected.reason) == (503, "circuit_open")
        assert b"http.http1MaxPendingRequests" in rejected.body
        assert (await slow_answer).response.status == 200
        slow.close()
        fast.close()

    run(scenario, DEFAULT, traffic_policies=((V1.authority, policy),))


def test_outlier_detection_ejects_the_failing_endpoint() -> None:
    policy = TrafficPolicy(
        load_balancer=LoadBalancer(LoadBalancerPolicy.ROUND_ROBIN),
        outlier_detection=OutlierDetection(
            consecutive_5xx_errors=2, base_ejection_time_s=30, max_ejection_percent=50
        ),
    )
    # The broken endpoint refuses connections: two failures in a row eject it.
    endpoints = {V1.authority: [f"127.0.0.1:{closed_port()}", "backend:0"]}
    served = get_in_turn(
        NO_RETRY, *["/"] * 8, endpoints=endpoints, traffic_policies=((V1.authority, policy),)
    )
    statuses = [answer.response.status for answer in served.answers]
    assert statuses[:4].count(503) == 2
    assert statuses[4:] == [200, 200, 200, 200]


def test_malformed_request_gets_400_and_the_connection_closes() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        answer = await client.send(
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        assert (answer.response.status, answer.reason) == (400, "downstream_protocol_error")
        assert await client.closed_by_peer()
        client.close()

    run(scenario, DEFAULT)


def mutations(seed: int, count: int) -> list[bytes]:
    """Garbage and damaged requests: random bytes, truncations, flipped and inserted bytes."""
    source = random.Random(seed)
    valid = f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\n\r\nbody".encode()
    payloads = []
    for _ in range(count):
        choice = source.randrange(4)
        if choice == 0:
            payloads.append(source.randbytes(source.randrange(1, 300)))
        elif choice == 1:
            payloads.append(valid[: source.randrange(1, len(valid))])
        else:
            damaged = bytearray(valid)
            for _ in range(source.randrange(1, 4)):
                position = source.randrange(len(damaged))
                if choice == 2:
                    damaged[position] = source.randrange(256)
                else:
                    damaged[position:position] = source.choice(
                        [b"\r\n", b" ", b"\x00", b":", b"\n"]
                    )
            payloads.append(bytes(damaged))
    return payloads


def test_garbage_gets_an_error_or_a_close_and_the_proxy_keeps_serving() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        for payload in mutations(seed=20261123, count=150):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)
            writer.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 "), payload
            if answer:
                status = int(answer[9:12])
                assert status in (200, 404) or 400 <= status <= 505, (payload, answer[:60])
        client = await Client.connect(port)
        assert (await client.get("/")).response.status == 200
        client.close()

    run(scenario, DEFAULT)


def test_pooled_connection_closed_by_the_backend_is_replaced_not_failed() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        assert (await client.get("/close-after")).response.status == 200
        await asyncio.sleep(0.05)  # the backend's close reaches the idle pooled connection
        assert (await client.get("/")).response.status == 200
        client.close()
        assert backends[0].connections == 2

    run(scenario, NO_RETRY)


def test_request_timeout_while_the_body_streams_closes_the_client_connection() -> None:
    routes = (Route("r", backends=(V1,), timeouts=Timeouts(request_s=0.2)),)

    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /stall HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        started = time.monotonic()
        received = await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)
        elapsed = time.monotonic() - started
        writer.close()
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(b"\r\n\r\n12345")  # the half body, then the close
        assert 0.15 <= elapsed < 2
        assert records[0].response_flags == "upstream_request_timeout_after_headers"

    run(scenario, routes)


def test_idle_keep_alive_client_is_closed_after_the_idle_timeout() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        assert (await client.get("/")).response.status == 200
        started = time.monotonic()
        assert await client.closed_by_peer()
        assert time.monotonic() - started < 2
        client.close()

    run(scenario, DEFAULT, proxy_options={"idle_timeout_s": 0.2})


def test_client_breaking_a_streamed_body_gets_400_not_a_backend_error() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        big = b"x" * 70_000  # above the 64 KiB buffer: streamed, not buffered
        head = f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire = head.encode() + b"%x\r\n" % len(big) + big + b"\r\nzz\r\n"
        answer = await client.send(wire, "POST")
        assert (answer.response.status, answer.reason) == (400, "downstream_protocol_error")
        assert records[0].response_flags == "downstream_protocol_error"
        client.close()
        fresh = await Client.connect(port)
        assert (await fresh.get("/")).response.status == 200
        fresh.close()

    run(scenario, DEFAULT)


def test_tunnel_identity_and_destination_decide_policy_and_service() -> None:
    frontend = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")
    intruder = Identity.parse("spiffe://cluster.local/ns/other/sa/intruder")
    only_frontend = AuthorizationPolicy(
        "frontend-only", "default", AuthorizationAction.ALLOW,
        (Rule(sources=(Source(principals=("cluster.local/ns/shop/sa/frontend",)),)),),
    )  # fmt: skip
    reviews = ServiceConfig(
        HOST, 9080, (Route("reviews", backends=(V1,)),), vips=("10.96.0.10",),
        authorization_policies=(only_frontend,),
    )  # fmt: skip
    other = ServiceConfig("other.default.svc.cluster.local", 9080, (Route("other"),))

    async def main() -> list[RequestRecord]:
        backend = await Backend("b0").start()
        records: list[RequestRecord] = []
        proxy = WaypointProxy(
            WaypointConfig(services=(other, reviews)),
            {V1.authority: [backend.endpoint]},
            access_log=records.append,
        )

        async def tunnel(identity: Identity) -> Client:
            ours, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=theirs)
            downstream = Downstream("10.1.1.5", identity, "10.96.0.10:9080")
            task = asyncio.create_task(proxy.serve_connection(reader, writer, downstream))
            tasks.append(task)
            return Client(*await asyncio.open_connection(sock=ours))

        tasks: list[asyncio.Task[None]] = []
        try:
            trusted = await tunnel(frontend)
            # The Host names another service; the tunnel's destination wins.
            allowed = await trusted.get("/", host="other")
            assert (allowed.response.status, allowed.json()["backend"]) == (200, "b0")
            trusted.close()
            untrusted = await tunnel(intruder)
            denied = await untrusted.get("/")
            untrusted.close()
            assert (denied.response.status, denied.reason) == (403, "rbac_access_denied")
        finally:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
            await proxy.close()
            await backend.stop()
        return records

    records = asyncio.run(main())
    assert records[0].source_principal == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert records[0].source_workload_namespace == "shop"
    assert records[0].connection_security_policy == "mutual_tls"
    assert records[0].destination_service == HOST


async def upgrading_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts `Upgrade: echo`, then echoes bytes upper-cased until the client half-closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"upgrade: echo" not in head.lower():
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        writer.close()
        return
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    while data := await reader.read(1024):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def proxy_to_upgrading_backend() -> AsyncIterator[tuple[int, list[RequestRecord]]]:
    """A proxy (DEFAULT routes) in front of `upgrading_backend`: its port and access records."""
    backend = await asyncio.start_server(upgrading_backend, "127.0.0.1", 0)
    endpoint = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
    records: list[RequestRecord] = []
    proxy = WaypointProxy(
        WaypointConfig(services=(ServiceConfig(HOST, 9080, DEFAULT),)),
        {V1.authority: [endpoint]},
        access_log=records.append,
    )
    _, port = await proxy.start()
    try:
        yield port, records
    finally:
        await proxy.close()
        backend.close()


def test_upgrade_accepted_by_the_backend_becomes_a_two_way_byte_stream() -> None:
    async def main() -> tuple[bytes, list[RequestRecord]]:
        async with proxy_to_upgrading_backend() as (port, records):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /chat HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\n"
                "Upgrade: echo\r\n\r\nearly ".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TEST_TIMEOUT_S)
            writer.write(b"and late")
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)
            writer.close()
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"upgrade: echo" in head.lower()
            return echoed, records

    echoed, records = asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    assert echoed == b"EARLY AND LATE"
    assert (records[0].response_code, records[0].response_flags) == (101, "upgraded")


def test_upgrade_refused_by_the_backend_keeps_http_going() -> None:
    async def main() -> tuple[int, int]:
        async with proxy_to_upgrading_backend() as (port, _):
            client = await Client.connect(port)
            refused = await client.get("/chat", "Connection: Upgrade", "Upgrade: other")
            again = await client.get("/chat", "Connection: Upgrade", "Upgrade: other")
            client.close()
            return refused.response.status, again.response.status

    assert asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S)) == (400, 400)


def test_update_moves_new_requests_to_new_endpoints_and_routes() -> None:
    async def scenario(
        proxy: WaypointProxy, port: int, backends: list[Backend], records: list[RequestRecord]
    ) -> None:
        client = await Client.connect(port)
        assert (await client.get("/")).json()["backend"] == "b0"
        proxy.update(proxy.config, {V1.authority: [backends[1].endpoint]})
        assert (await client.get("/")).json()["backend"] == "b1"
        to_v2 = WaypointConfig(
            services=(ServiceConfig(HOST, 9080, (Route("v2", backends=(V2,)),)),)
        )
        proxy.update(to_v2, {V2.authority: [backends[0].endpoint]})
        answer = await client.get("/")
        client.close()
        assert answer.json()["backend"] == "b0"
        assert records[-1].route_name == "v2"

    run(scenario, DEFAULT, backends=2, endpoints={V1.authority: ["backend:0"]})
