"""gRPC unary requests per second: the same Python grpcio client and server on every path."""

from __future__ import annotations

import json
import sys

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client

REQ_S = Metric("req_s", "rate", "req/s", higher_is_better=True)
IN_FLIGHT = 8  # a window of outstanding calls, so the client is not idle waiting on each reply


def parse_grpc_report(text: str) -> float:
    """Requests per second from the last line of `python -m bench.grpc_echo client`."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise LoadError("the gRPC client printed nothing")
    try:
        report = json.loads(lines[-1])
        requests, elapsed = int(report["requests"]), float(report["elapsed_s"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"the gRPC client printed no report: {lines[-1][:200]!r}") from exc
    if requests == 0 or elapsed <= 0:
        raise LoadError("the gRPC client completed no request")
    return requests / elapsed


def run_grpc_unary(ctx: LoadContext) -> LoadOutcome:
    argv = [sys.executable, "-m", "bench.grpc_echo", "client", f"{ctx.host}:{ctx.port}"]
    argv += ["--seconds", str(ctx.seconds), "--max-requests", str(ctx.max_count)]
    argv += ["--in-flight", str(IN_FLIGHT)]
    return LoadOutcome(values={REQ_S.key: parse_grpc_report(run_client(ctx, argv, "gRPC client"))})


GRPC_UNARY = Load(
    "grpc", "gRPC unary, 1 KiB (grpcio)", "grpc", (REQ_S,), run_grpc_unary, max_count=1_000_000
)
