"""gRPC through the waypoint with real grpcio on both sides (the demo's ratings service with its
failure knob, a grpc.aio client): retryOn `unavailable` turns UNAVAILABLE into success within
the attempts and the request buffer; a status after a relayed message is final; every request
carries Istio's grpc_response_status label."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from waypoint_testing import HOST, TEST_TIMEOUT_S, Backend, Client

from demo import ratings_pb2, ratings_pb2_grpc
from demo.ratings import UNAVAILABLE_KNOB, RatingsService
from tests.metrics_text import metric_total
from waypoint.config import (
    BackendRef,
    RetryOn,
    RetryPolicy,
    Route,
    ServiceConfig,
    WaypointConfig,
)
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestRecord

RATINGS = BackendRef(name="ratings", port=9090, namespace="ratings")
GRPC_HOST = "ratings.ratings.svc.cluster.local"
HTTP = BackendRef(name="reviews", port=9080)


def retrying(*conditions: RetryOn, attempts: int = 2) -> RetryPolicy:
    return RetryPolicy(
        attempts=attempts, retry_on=frozenset(conditions), backoff_base_s=0.001,
        backoff_max_s=0.001,
    )  # fmt: skip


@dataclass
class Run:
    """What a scenario left behind: the waypoint's records and metrics, the server's calls."""

    records: list[RequestRecord] = field(default_factory=list)
    metrics: str = ""
    server_calls: int = 0


Scenario = Callable[[ratings_pb2_grpc.RatingsStub, int], Awaitable[None]]


def run(
    scenario: Scenario,
    retry: RetryPolicy | None,
    buffer_limit: int = 64 * 1024,
    no_endpoints: bool = False,
) -> Run:
    out = Run()

    async def main() -> None:
        service = RatingsService()
        server = grpc.aio.server()
        ratings_pb2_grpc.add_RatingsServicer_to_server(service, server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        http_backend = await Backend("reviews").start()
        config = WaypointConfig(
            services=(
                ServiceConfig(GRPC_HOST, 9090, (Route("grpc", backends=(RATINGS,), retry=retry),)),
                ServiceConfig(HOST, 9080, (Route("http", backends=(HTTP,)),)),
            ),
            request_body_buffer_limit=buffer_limit,
        )
        endpoints = {
            RATINGS.authority: [] if no_endpoints else [f"127.0.0.1:{grpc_port}"],
            HTTP.authority: [http_backend.endpoint],
        }  # fmt: skip
        proxy = WaypointProxy(config, endpoints, access_log=out.records.append)
        _, port = await proxy.start()
        options = [("grpc.default_authority", GRPC_HOST), ("grpc.enable_retries", 0)]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                await scenario(ratings_pb2_grpc.RatingsStub(channel), port)
        finally:
            out.metrics = proxy.metrics.exposition().decode()
            out.server_calls = sum(service.knob.calls.values())
            await proxy.close()
            await http_backend.stop()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S * 3))
    return out


async def unary_codes(stub: ratings_pb2_grpc.RatingsStub, count: int, fraction: str) -> list[str]:
    codes = []
    for _ in range(count):
        call = stub.GetRating(
            ratings_pb2.GetRatingRequest(product_id=1), timeout=5,
            metadata=((UNAVAILABLE_KNOB, fraction),),
        )  # fmt: skip
        try:
            reply = await call
            assert reply.stars == 4.5
        except grpc.aio.AioRpcError:
            pass
        codes.append((await call.code()).name)
    return codes


def samples(metrics: str, **labels: str) -> float:
    """The waypoint's istio_requests_total summed over the series with `labels`."""
    return metric_total(metrics, "istio_requests_total", **labels)


def test_retry_on_unavailable_turns_half_failing_calls_into_success() -> None:
    codes: list[str] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        codes.extend(await unary_codes(stub, 20, "0.5"))

    run_ = run(scenario, retrying(RetryOn.UNAVAILABLE))
    assert codes == ["OK"] * 20
    # the knob fails every second call: the first call passes, each later one fails once
    assert run_.server_calls == 1 + 19 * 2
    assert [r.attempts for r in run_.records] == [1] + [2] * 19
    assert {r.grpc_response_status for r in run_.records} == {"0"}
    assert samples(run_.metrics, grpc_response_status="0", response_code="200") == 20
    assert samples(run_.metrics, request_protocol="grpc") == 20
    assert samples(run_.metrics, request_protocol="http") == 0


def test_without_a_grpc_condition_half_the_calls_fail_and_are_counted_as_unavailable() -> None:
    codes: list[str] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        codes.extend(await unary_codes(stub, 20, "0.5"))

    # HTTP conditions see HTTP 200: gRPC errors pass through them
    run_ = run(scenario, retrying(RetryOn.SERVER_ERROR, RetryOn.CONNECT_FAILURE))
    assert codes.count("UNAVAILABLE") == 10
    assert codes.count("OK") == 10
    assert run_.server_calls == 20
    assert samples(run_.metrics, grpc_response_status="14", response_code="200") == 10
    assert samples(run_.metrics, grpc_response_status="0", response_code="200") == 10


def test_attempts_run_out_and_the_client_gets_the_last_unavailable() -> None:
    codes: list[str] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        codes.extend(await unary_codes(stub, 1, "1"))

    run_ = run(scenario, retrying(RetryOn.UNAVAILABLE, attempts=2))
    assert codes == ["UNAVAILABLE"]
    assert run_.server_calls == 3
    [record] = run_.records
    assert (record.attempts, record.grpc_response_status) == (3, "14")


def test_a_status_in_trailers_after_a_relayed_message_is_not_retried() -> None:
    got: list[object] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        stream = stub.WatchRatings(
            ratings_pb2.WatchRatingsRequest(product_id=2, count=3), timeout=5,
            metadata=((UNAVAILABLE_KNOB, "1"),),
        )  # fmt: skip
        try:
            async for message in stream:
                got.append(message.sequence)
        except grpc.aio.AioRpcError as error:
            got.append(error.code().name)

    run_ = run(scenario, retrying(RetryOn.UNAVAILABLE, attempts=3))
    # the client had message 1 when UNAVAILABLE came: a retry would have sent it twice
    assert got == [1, "UNAVAILABLE"]
    assert run_.server_calls == 1
    [record] = run_.records
    assert (record.attempts, record.grpc_response_status) == (1, "14")


def test_a_request_above_the_buffer_limit_is_not_replayed() -> None:
    codes: list[str] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        codes.extend(await unary_codes(stub, 2, "0.5"))

    # GetRatingRequest(product_id=1) is a 7-byte gRPC message: above a 4-byte buffer it streams
    # to a single try
    run_ = run(scenario, retrying(RetryOn.UNAVAILABLE), buffer_limit=4)
    assert codes == ["OK", "UNAVAILABLE"]
    assert [r.attempts for r in run_.records] == [1, 1]


def test_grpc_response_status_is_empty_for_a_plain_http_request() -> None:
    async def scenario(_: ratings_pb2_grpc.RatingsStub, port: int) -> None:
        client = await Client.connect(port)
        try:
            answer = await client.get("/hello")
            assert answer.response.status == 200
        finally:
            client.close()

    run_ = run(scenario, None)
    [record] = run_.records
    assert record.grpc_response_status == ""
    lines = [line for line in run_.metrics.splitlines() if line.startswith("istio_requests_total{")]
    assert len(lines) == 1
    assert 'grpc_response_status=""' in lines[0]
    assert 'request_protocol="http"' in lines[0]
    assert 'response_code="200"' in lines[0]


def test_a_local_reply_to_a_grpc_call_counts_its_grpc_status() -> None:
    codes: list[str] = []

    async def scenario(stub: ratings_pb2_grpc.RatingsStub, _: int) -> None:
        codes.extend(await unary_codes(stub, 1, "0"))

    # no endpoint: the waypoint answers itself, 503 no_healthy_upstream as grpc-status 14
    run_ = run(scenario, retrying(RetryOn.UNAVAILABLE), no_endpoints=True)
    assert codes == ["UNAVAILABLE"]
    assert run_.server_calls == 0
    [record] = run_.records
    assert (record.response_code, record.grpc_response_status) == (503, "14")
    assert samples(run_.metrics, grpc_response_status="14", response_code="503") == 1
