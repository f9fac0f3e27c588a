"""1 KiB request/response on one connection: round-trip latency percentiles (rr_client)."""

from __future__ import annotations

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client
from bench.stats import percentile

MESSAGE_BYTES = 1024
P50 = Metric("p50_us", "p50", "us", higher_is_better=False)
P99 = Metric("p99_us", "p99", "us", higher_is_better=False)
P999 = Metric("p999_us", "p999", "us", higher_is_better=False)


def parse_rr_output(text: str) -> list[int]:
    """Round-trip times in ns from rr_client's output ("rounds N elapsed_ns E", then one a line)."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 4 or head[0] != "rounds":
        raise LoadError(f"rr_client printed no header: {lines[0][:100]!r}")
    try:
        rounds = int(head[1])
        samples = [int(line) for line in lines[1:] if line.strip()]
    except ValueError as exc:
        raise LoadError(f"rr_client printed a line that is not a number: {exc}") from exc
    if len(samples) != rounds:
        raise LoadError(f"rr_client announced {rounds} rounds but printed {len(samples)}")
    if not samples:
        raise LoadError("rr_client completed no round trip")
    return samples


def run_request_response(ctx: LoadContext) -> LoadOutcome:
    argv = [str(ctx.tools.rr_client), ctx.host, str(ctx.port), str(MESSAGE_BYTES)]
    argv += [str(ctx.seconds), str(ctx.max_count)]
    samples_us = [ns / 1000 for ns in parse_rr_output(run_client(ctx, argv, "rr_client"))]
    values = {
        P50.key: percentile(samples_us, 0.50),
        P99.key: percentile(samples_us, 0.99),
        P999.key: percentile(samples_us, 0.999),
    }
    return LoadOutcome(values=values, samples_us=samples_us)


REQUEST_RESPONSE = Load(
    "rr",
    "1 KiB request/response, one connection",
    "echo",
    (P50, P99, P999),
    run_request_response,
    max_count=2_000_000,
)
