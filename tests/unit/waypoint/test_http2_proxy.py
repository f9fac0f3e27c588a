"""HTTP/2 and gRPC through the waypoint: admitted like HTTP/1.1, streamed with trailers."""

from __future__ import annotations

import asyncio
import random
import socket

from waypoint_testing import HOST, TEST_TIMEOUT_S

from waypoint.config import (
    AuthorizationAction,
    AuthorizationPolicy,
    BackendRef,
    Operation,
    RequestHeaderModifier,
    RetryOn,
    RetryPolicy,
    Route,
    Rule,
    ServiceConfig,
    Timeouts,
    WaypointConfig,
)
from waypoint.http2 import PREFACE, H2Peer, H2Stream
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord

GREETER = BackendRef(name="greeter", port=50051)
DENY_ADMIN = AuthorizationPolicy(
    "deny-admin", "default", AuthorizationAction.DENY,
    (Rule(operations=(Operation(paths=("/admin.*",)),)),),
)  # fmt: skip
ROUTES = (
    Route(
        "grpc", backends=(GREETER,), filters=(RequestHeaderModifier(add=(("x-via", "waypoint"),)),)
    ),
)


async def greeter(stream: H2Stream) -> None:
    """A gRPC-shaped backend: echoes the message; /fail answers trailers-only NOT_FOUND."""
    body = b""
    while data := await stream.read():
        body += data
    seen = dict(stream.headers)
    if seen[":path"] == "/helloworld.Greeter/Flaky" and FLAKY:
        FLAKY.pop()
        await stream.send_headers([(":status", "503")], end_stream=True)
        return
    if seen[":path"] == "/helloworld.Greeter/Slow":
        await asyncio.sleep(2)
    if seen[":path"] == "/helloworld.Greeter/Fail":
        await stream.send_headers(
            [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5")],
            end_stream=True,
        )
        return
    echoed = [
        ("x-te-seen", seen.get("te", "-")),
        ("x-via-seen", seen.get("x-via", "-")),
        ("x-trace-seen", seen.get("traceparent", "-")),
    ]
    await stream.send_headers([(":status", "200"), ("content-type", "application/grpc"), *echoed])
    await stream.send_data(body)
    await stream.send_trailers([("grpc-status", "0"), ("grpc-message", "")])


UPSTREAM_CONNECTIONS: list[int] = []
FLAKY: list[int] = []  # one entry per 503 the Flaky method still has to answer


async def start_greeter() -> asyncio.Server:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        UPSTREAM_CONNECTIONS.append(1)
        preface = await reader.readexactly(len(PREFACE))
        peer = H2Peer(reader, writer, client_side=False, handler=greeter)
        peer.start(preface)
        await peer.run()

    return await asyncio.start_server(accept, "127.0.0.1", 0)


def grpc_call(path: str, content_type: str = "application/grpc") -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", HOST),
            ("content-type", content_type), ("te", "trailers")]  # fmt: skip


async def call(
    port: int, headers: list[tuple[str, str]], message: bytes
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = H2Peer(reader, writer, client_side=True)
    peer.start()
    running = asyncio.create_task(peer.run())
    try:
        stream = peer.open_stream(headers)
        await stream.send_data(message, end_stream=True)
        head = dict(await stream.response_headers())
        body = b""
        while data := await stream.read():
            body += data
        return head, body, dict(stream.trailers)
    finally:
        await peer.close()
        running.cancel()


def run(  # type: ignore[no-untyped-def]
    scenario,
    endpoint_override: str | None = None,
    routes: tuple[Route, ...] = ROUTES,
    buffer_limit: int = 64 * 1024,
) -> list[RequestRecord]:
    records: list[RequestRecord] = []

    async def main() -> None:
        backend = await start_greeter()
        endpoint = endpoint_override or f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        config = WaypointConfig(
            services=(ServiceConfig(HOST, 9080, routes, authorization_policies=(DENY_ADMIN,)),),
            request_body_buffer_limit=buffer_limit,
        )
        proxy = WaypointProxy(config, {GREETER.authority: [endpoint]}, access_log=records.append)
        _, port = await proxy.start()
        try:
            await scenario(port)
        finally:
            await proxy.close()
            backend.close()

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    return records


def test_grpc_call_is_forwarded_with_body_trailers_and_route_edits() -> None:
    async def scenario(port: int) -> None:
        head, body, trailers = await call(
            port, grpc_call("/helloworld.Greeter/SayHello"), b"\x00\x00\x00\x00\x05hello"
        )
        assert head[":status"] == "200"
        assert (head["x-te-seen"], head["x-via-seen"]) == ("trailers", "waypoint")
        assert head["x-trace-seen"].startswith("00-")
        assert body == b"\x00\x00\x00\x00\x05hello"
        assert trailers["grpc-status"] == "0"

    (record,) = run(scenario)
    assert (record.response_code, record.protocol, record.route_name) == (200, "HTTP/2", "grpc")
    assert record.bytes_received == record.bytes_sent == 10


def test_trailers_only_error_stays_trailers_only() -> None:
    async def scenario(port: int) -> None:
        head, body, trailers = await call(port, grpc_call("/helloworld.Greeter/Fail"), b"")
        assert (head["grpc-status"], body, trailers) == ("5", b"", {})

    run(scenario)


def test_denied_grpc_call_gets_permission_denied() -> None:
    async def scenario(port: int) -> None:
        head, _, _ = await call(port, grpc_call("/admin.Keys/List"), b"")
        assert (head[":status"], head["grpc-status"], head["x-weft-reason"]) == (
            "200",
            "7",
            "rbac_access_denied",
        )
        assert head["grpc-message"] == "RBAC: access denied"

    run(scenario)


def test_denied_plain_http2_request_gets_403_with_the_rbac_body() -> None:
    async def scenario(port: int) -> None:
        head, body, _ = await call(port, grpc_call("/admin.Keys/List", "text/plain"), b"")
        assert (head[":status"], body) == ("403", b"RBAC: access denied")

    run(scenario)


def test_unreachable_backend_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"

    async def scenario(port: int) -> None:
        head, _, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), b"")
        assert (head["grpc-status"], head["x-weft-reason"]) == ("14", "upstream_connect_error")

    run(scenario, endpoint_override=closed)


def test_calls_share_one_upstream_connection() -> None:
    async def scenario(port: int) -> None:
        UPSTREAM_CONNECTIONS.clear()
        for _ in range(3):
            head, _, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), b"x")
            assert head[":status"] == "200"
        assert len(UPSTREAM_CONNECTIONS) == 1

    run(scenario)


def test_garbage_after_the_preface_closes_that_connection_only() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + b"\x00\x00\x04\x09\xff\x00\x00\x00\x07garbage!" * 3)
        answer = await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)
        goaway = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"  # length 8, type 7, stream 0
        assert goaway in answer
        writer.close()
        head, _, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), b"x")
        assert head[":status"] == "200"

    run(scenario)


def test_random_frames_never_escape_as_unhandled_errors() -> None:
    source = random.Random(1123)
    unhandled: list[object] = []

    async def scenario(port: int) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unhandled.append(context)
        )
        for _ in range(60):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            frames = b"".join(
                source.randbytes(3) + bytes([source.randrange(10), source.randrange(256)])
                + source.randbytes(4) + source.randbytes(source.randrange(0, 40))
                for _ in range(source.randrange(1, 5))
            )  # fmt: skip
            writer.write(PREFACE + frames)
            writer.write_eof()
            await asyncio.wait_for(reader.read(), TEST_TIMEOUT_S)
            writer.close()
        head, _, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), b"x")
        assert head[":status"] == "200"
        await asyncio.sleep(0.05)

    run(scenario)
    assert unhandled == []


def test_backend_request_timeout_gives_deadline_exceeded_as_unavailable() -> None:
    slow = (Route("grpc", backends=(GREETER,), timeouts=Timeouts(backend_request_s=0.2)),)

    async def scenario(port: int) -> None:
        started = asyncio.get_running_loop().time()
        head, _, _ = await call(port, grpc_call("/helloworld.Greeter/Slow"), b"x")
        elapsed = asyncio.get_running_loop().time() - started
        assert (head["grpc-status"], head["x-weft-reason"]) == ("14", "upstream_request_timeout")
        assert 0.15 <= elapsed < 1.5

    run(scenario, routes=slow)


RETRYING = (
    Route(
        "grpc",
        backends=(GREETER,),
        retry=RetryPolicy(
            attempts=2,
            retry_on=frozenset({RetryOn.SERVER_ERROR, RetryOn.CONNECT_FAILURE}),
            backoff_base_s=0.001,
            backoff_max_s=0.001,
        ),
    ),
)


def test_a_503_is_retried_with_the_buffered_body() -> None:
    async def scenario(port: int) -> None:
        FLAKY[:] = [1]
        head, body, trailers = await call(port, grpc_call("/helloworld.Greeter/Flaky"), b"again")
        assert (head[":status"], body, trailers["grpc-status"]) == ("200", b"again", "0")

    (record,) = run(scenario, routes=RETRYING)
    assert (record.attempts, record.response_code) == (2, 200)


def test_body_above_the_buffer_limit_streams_once_intact() -> None:
    payload = bytes(range(256)) * 16  # 4 KiB against a 1 KiB buffer

    async def scenario(port: int) -> None:
        head, body, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), payload)
        assert (head[":status"], body) == ("200", payload)

    (record,) = run(scenario, routes=RETRYING, buffer_limit=1024)
    assert record.attempts == 1


def test_connect_failures_are_retried_then_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"

    async def scenario(port: int) -> None:
        head, _, _ = await call(port, grpc_call("/helloworld.Greeter/SayHello"), b"x")
        assert (head["grpc-status"], head["x-weft-reason"]) == ("14", "upstream_connect_error")

    (record,) = run(scenario, endpoint_override=closed, routes=RETRYING)
    assert record.attempts == 3
