"""The demo load client: HTTP to the frontend, raw TCP to echo, gRPC to ratings, then a report.

Every kind of traffic is bounded by its count and by --duration-limit, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from demo.addresses import Address, address_argument
from demo.httpclient import HttpClient, HttpRequestError, connection_error_reason
from demo.loadreport import KindStats, LoadReport
from demo.loadtable import render_table
from demo.serving import run_service

FRONTEND_VERSION_HEADER = "x-demo-reviews-version"
DEFAULT_PRODUCTS = (1, 2, 3, 4)


class LoadRun:
    """Drives every kind of traffic against one set of targets under one deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.deadline: float = self.loop.time() + args.duration_limit
        self.products: tuple[int, ...] = tuple(args.products)
        echo_count = max(1, args.requests // 10)
        grpc_count = max(1, args.requests // 10)
        self.report = LoadReport(
            targets={
                "frontend": str(args.frontend),
                "echo": str(args.echo),
                "ratings": str(args.ratings),
            },
            duration_limit_s=args.duration_limit,
            kinds={
                "http": KindStats("http", args.requests),
                "grpc-unary": KindStats("grpc-unary", grpc_count),
                "grpc-stream": KindStats("grpc-stream", 1),
                "tcp-echo": KindStats("tcp-echo", echo_count),
            },
        )

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    def op_timeout(self) -> float:
        timeout: float = self.args.timeout
        return min(timeout, max(self.remaining(), 0.001))

    def failed_or_cut_off(self, stats: KindStats, reason: str) -> None:
        """Record a failure, unless it was our own --duration-limit that ended the operation."""
        if self.remaining() <= 0:
            stats.cut_off += 1
        else:
            stats.failed(reason)

    async def run(self) -> LoadReport:
        started = time.perf_counter()
        await asyncio.gather(self.run_http(), self.run_echo(), self.run_grpc())
        self.report.elapsed_s = time.perf_counter() - started
        for stats in self.report.kinds.values():
            if stats.sent and not stats.ok and not stats.errors:
                # Everything was cut off: a mesh that hangs every connection must not pass.
                stats.failed(f"none of {stats.sent} sent completed before --duration-limit")
        self.report.stopped_by_duration_limit = any(
            s.sent < s.planned or s.cut_off for s in self.report.kinds.values()
        )
        return self.report

    async def _bounded_workers(
        self,
        stats: KindStats,
        concurrency: int,
        operation: Callable[[int], Coroutine[Any, Any, None]],
    ) -> None:
        indexes: Iterator[int] = iter(range(stats.planned))

        async def worker() -> None:
            # Workers share one iterator, so the count is exact however they interleave.
            for index in indexes:
                if self.remaining() <= 0:
                    return
                stats.sent += 1
                await operation(index)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, stats.planned)))))

    async def run_http(self) -> None:
        stats = self.report.kinds["http"]
        client = HttpClient(
            self.args.frontend, max_idle=self.args.concurrency, keep_alive=self.args.keepalive
        )

        async def get_product_page(index: int) -> None:
            product_id = self.products[index % len(self.products)]
            started = time.perf_counter()
            try:
                response = await client.request(
                    "GET", f"/product/{product_id}", timeout=self.op_timeout()
                )
            except HttpRequestError as error:
                self.failed_or_cut_off(stats, str(error))
                return
            latency_ms = (time.perf_counter() - started) * 1000
            stats.responses[str(response.status)] += 1
            if response.status != 200:
                stats.failed(f"HTTP {response.status}: {_describe_error_body(response.body)}")
                return
            stats.reviews_versions[response.header(FRONTEND_VERSION_HEADER) or "none"] += 1
            stats.succeeded(latency_ms)

        try:
            await self._bounded_workers(stats, self.args.concurrency, get_product_page)
        finally:
            await client.close()

    async def run_echo(self) -> None:
        stats = self.report.kinds["tcp-echo"]

        async def exchange(index: int) -> None:
            payload = random.Random(index).randbytes(self.args.echo_bytes)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.op_timeout()):
                    received = await _echo_exchange(self.args.echo, payload)
            except TimeoutError:
                self.failed_or_cut_off(stats, f"{self.args.echo}: no echo within the timeout")
                return
            except OSError as error:
                stats.failed(f"{self.args.echo}: {connection_error_reason(error)}")
                return
            stats.totals["bytes_sent"] += len(payload)
            stats.totals["bytes_received"] += len(received)
            if received != payload:
                stats.responses["mismatch"] += 1
                stats.failed(_describe_mismatch(payload, received))
                return
            stats.responses["echoed"] += 1
            stats.succeeded((time.perf_counter() - started) * 1000)

        await self._bounded_workers(stats, self.args.concurrency, exchange)

    async def run_grpc(self) -> None:
        import grpc  # imported here so `--help` and HTTP-only failures stay fast

        from demo import ratings_pb2, ratings_pb2_grpc

        unary = self.report.kinds["grpc-unary"]
        stream = self.report.kinds["grpc-stream"]
        channel = grpc.aio.insecure_channel(str(self.args.ratings))
        stub = ratings_pb2_grpc.RatingsStub(channel)

        async def get_rating(index: int) -> None:
            product_id = self.products[index % len(self.products)]
            started = time.perf_counter()
            try:
                rating = await stub.GetRating(
                    ratings_pb2.GetRatingRequest(product_id=product_id),
                    timeout=self.op_timeout(),
                )
            except grpc.aio.AioRpcError as error:
                unary.responses[error.code().name] += 1
                self.failed_or_cut_off(unary, _describe_rpc_error(self.args.ratings, error))
                return
            unary.responses["OK"] += 1
            if rating.product_id != product_id:
                unary.failed(f"GetRating({product_id}) answered product {rating.product_id}")
                return
            unary.succeeded((time.perf_counter() - started) * 1000)

        async def watch_ratings(index: int) -> None:
            product_id = self.products[index % len(self.products)]
            expected = self.args.stream_messages
            stream.totals["messages_expected"] += expected
            started = time.perf_counter()
            sequences: list[int] = []
            try:
                call = stub.WatchRatings(
                    ratings_pb2.WatchRatingsRequest(product_id=product_id, count=expected),
                    timeout=self.op_timeout(),
                )
                async for rating in call:
                    sequences.append(rating.sequence)
            except grpc.aio.AioRpcError as error:
                stream.totals["messages_received"] += len(sequences)
                stream.responses[error.code().name] += 1
                self.failed_or_cut_off(stream, _describe_rpc_error(self.args.ratings, error))
                return
            stream.totals["messages_received"] += len(sequences)
            stream.responses["OK"] += 1
            if sequences != list(range(1, expected + 1)):
                stream.failed(
                    f"WatchRatings asked for {expected} messages, got {len(sequences)} "
                    "(or out of order)"
                )
                return
            stream.succeeded((time.perf_counter() - started) * 1000)

        try:
            await asyncio.gather(
                self._bounded_workers(unary, self.args.concurrency, get_rating),
                self._bounded_workers(stream, 1, watch_ratings),
            )
        finally:
            await channel.close(None)


async def _echo_exchange(address: Address, payload: bytes) -> bytes:
    """Send payload, half-close, and read until the server closes: the echo must be exact."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await reader.read(-1)
    finally:
        writer.close()


def _describe_error_body(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body[:120].decode("utf-8", "replace") or "(empty body)"
    if isinstance(document, dict) and "error" in document:
        detail = document.get("detail")
        return f"{document['error']} ({detail})" if detail else str(document["error"])
    return body[:120].decode("utf-8", "replace")


def _describe_mismatch(sent: bytes, received: bytes) -> str:
    if len(received) != len(sent):
        return f"echo sent {len(sent)} bytes, got {len(received)} back"
    first = next(i for i, (a, b) in enumerate(zip(sent, received, strict=True)) if a != b)
    return f"echo returned different bytes (first difference at byte {first})"


def _describe_rpc_error(address: Address, error: Any) -> str:
    details = (error.details() or "").splitlines()[0][:160]
    return f"{address}: gRPC {error.code().name}: {details}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _product_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ids") from None
    return ids


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo.loadgen",
        description=(
            "Send bounded load through the demo shop: N HTTP requests to the frontend, "
            "max(1, N/10) echo exchanges, max(1, N/10) gRPC unary calls and one gRPC stream "
            "to ratings. "
            "Exits 0 only when nothing failed."
        ),
        epilog=(
            "example: python -m demo.loadgen --frontend 10.0.1.5:8080 --echo 10.0.2.7:7000 "
            "--ratings 10.0.2.9:9090 --requests 200 --duration-limit 30"
        ),
    )
    for flag, what in (
        ("--frontend", "the frontend (HTTP/1.1)"),
        ("--echo", "the echo service (raw TCP)"),
        ("--ratings", "the ratings service (gRPC)"),
    ):
        parser.add_argument(
            flag, type=address_argument, required=True, metavar="HOST:PORT", help=what
        )
    parser.add_argument(
        "--requests",
        type=_positive_int,
        required=True,
        metavar="N",
        help="HTTP requests to send; echo exchanges and gRPC unary calls are max(1, N/10) each",
    )
    parser.add_argument(
        "--duration-limit",
        type=_positive_float,
        required=True,
        metavar="SECONDS",
        help="stop after this many seconds even if not everything was sent",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=8, help="parallel requests (default: 8)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        help="seconds one request may take before it counts as an error (default: 5)",
    )
    parser.add_argument(
        "--products",
        type=_product_ids,
        metavar="ID,ID,...",
        default=list(DEFAULT_PRODUCTS),
        help="product ids to cycle through (default: 1,2,3,4)",
    )
    parser.add_argument(
        "--echo-bytes",
        type=_positive_int,
        default=4096,
        help="bytes per echo exchange (default: 4096)",
    )
    parser.add_argument(
        "--stream-messages",
        type=_positive_int,
        default=20,
        help="messages to ask for in the WatchRatings stream (default: 20)",
    )
    parser.add_argument(
        "--no-keepalive",
        dest="keepalive",
        action="store_false",
        help="open a new connection for every HTTP request (default: reuse connections)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def run() -> int:
        report = await LoadRun(args).run()
        if args.json:
            print(json.dumps(report.document(), indent=2))
        else:
            render_table(report)
        return 0 if report.ok else 1

    return run_service(run)


if __name__ == "__main__":
    sys.exit(main())
