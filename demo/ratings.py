"""The ratings service: gRPC GetRating (unary) and WatchRatings (server streaming) on grpc.aio.

A failure knob for the mesh's retries: a call carrying the metadata `x-demo-unavailable: F`
(0 < F <= 1) is one of the calls carrying it of which the fraction F fail with UNAVAILABLE,
spread evenly and deterministically (F = 0.5: every second one) so a test can count. GetRating
fails before answering (a trailers-only response a proxy can retry); WatchRatings fails after
its first message (the status in trailers, after the client got part of the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import grpc

from demo import ratings_pb2, ratings_pb2_grpc
from demo.serving import (
    add_listen_arguments,
    announce_and_wait_for_termination,
    bind_error_message,
    log,
    run_service,
)

MAX_STREAM_COUNT = 100_000
MAX_INTERVAL_MS = 10_000
# product_id -> (average stars, votes); deterministic so tests and the lab can check values.
RATINGS: dict[int, tuple[float, int]] = {1: (4.5, 120), 2: (4.0, 37), 3: (4.2, 58), 4: (3.8, 9)}


def rating_for(product_id: int, sequence: int = 0) -> ratings_pb2.Rating | None:
    known = RATINGS.get(product_id)
    if known is None:
        return None
    stars, votes = known
    # A stream shows votes arriving, so consecutive messages differ and ordering is checkable.
    return ratings_pb2.Rating(
        product_id=product_id, stars=stars, votes=votes + sequence, sequence=sequence
    )


UNAVAILABLE_KNOB = "x-demo-unavailable"


class FailureKnob:
    """Which of the calls carrying UNAVAILABLE_KNOB fail: of the calls at fraction F, the k-th
    (from 0) fails when floor((k + 1) F) > floor(k F), so exactly floor(n F) of n fail. Each
    fraction counts its own calls."""

    def __init__(self) -> None:
        self.calls: dict[Fraction, int] = {}

    def should_fail(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        value = dict(context.invocation_metadata() or ()).get(UNAVAILABLE_KNOB)
        if value is None:
            return False
        try:
            fraction = Fraction(str(value))
        except (ValueError, ZeroDivisionError):
            return False  # not a number: the knob is off, the call is served
        fraction = min(max(fraction, Fraction(0)), Fraction(1))
        k = self.calls.get(fraction, 0)
        self.calls[fraction] = k + 1
        return math.floor((k + 1) * fraction) > math.floor(k * fraction)


class RatingsService(ratings_pb2_grpc.RatingsServicer):
    def __init__(self) -> None:
        self.knob = FailureKnob()

    async def GetRating(  # noqa: N802 - the name is the gRPC method's
        self, request: ratings_pb2.GetRatingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ratings_pb2.Rating:
        started = time.perf_counter()
        if self.knob.should_fail(context):
            _log_call(context, "GetRating", request.product_id, "UNAVAILABLE (knob)", started)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "failed on purpose (x-demo-unavailable)"
            )
        rating = rating_for(request.product_id)
        if rating is None:
            _log_call(context, "GetRating", request.product_id, "NOT_FOUND", started)
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no rating for product {request.product_id}"
            )
        _log_call(context, "GetRating", request.product_id, "OK", started)
        return rating

    async def WatchRatings(  # noqa: N802 - the name is the gRPC method's
        self, request: ratings_pb2.WatchRatingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ratings_pb2.Rating]:
        started = time.perf_counter()
        if not 0 < request.count <= MAX_STREAM_COUNT or request.interval_ms > MAX_INTERVAL_MS:
            _log_call(context, "WatchRatings", request.product_id, "INVALID_ARGUMENT", started)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"count must be 1..{MAX_STREAM_COUNT} and interval_ms at most "
                f"{MAX_INTERVAL_MS}; got count={request.count} interval_ms={request.interval_ms}",
            )
        if rating_for(request.product_id) is None:
            _log_call(context, "WatchRatings", request.product_id, "NOT_FOUND", started)
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no rating for product {request.product_id}"
            )
        fail_after_first = self.knob.should_fail(context)
        for sequence in range(1, request.count + 1):
            if request.interval_ms and sequence > 1:
                await asyncio.sleep(request.interval_ms / 1000)
            rating = rating_for(request.product_id, sequence)
            assert rating is not None  # checked before the first message
            yield rating
            if fail_after_first:
                _log_call(
                    context, "WatchRatings", request.product_id, "UNAVAILABLE (knob)", started
                )
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "failed on purpose after a message"
                )
        _log_call(
            context, "WatchRatings", request.product_id, f"OK messages={request.count}", started
        )


def _log_call(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    product_id: int,
    outcome: str,
    started: float,
) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    log(
        "ratings",
        f'{context.peer()} "{method} product_id={product_id}" {outcome} {elapsed_ms:.2f}ms',
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.ratings",
        description="Demo shop ratings: gRPC GetRating (unary) and WatchRatings (streaming).",
        epilog="example: python -m demo.ratings --port 9090",
    )
    add_listen_arguments(parser, 9090)
    args = parser.parse_args(argv)

    async def run() -> int:
        # Without SO_REUSEPORT a second server on the same port fails loudly instead of
        # silently sharing the port with the first.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ratings_pb2_grpc.add_RatingsServicer_to_server(RatingsService(), server)
        try:
            port = server.add_insecure_port(f"{args.host}:{args.port}")
        except RuntimeError:
            reason = "address already in use or not an address of this host"
            print(bind_error_message("ratings", args.host, args.port, reason), file=sys.stderr)
            return 1
        await server.start()
        signal_name = await announce_and_wait_for_termination(args.host, port)
        log("ratings", f"received {signal_name}, draining calls")
        await server.stop(grace=5.0)
        return 0

    return run_service(run)


if __name__ == "__main__":
    sys.exit(main())
