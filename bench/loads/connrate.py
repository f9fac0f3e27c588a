"""New connections per second, each with one 1 KiB exchange, and what connect() itself costs."""

from __future__ import annotations

from dataclasses import dataclass

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client
from bench.stats import percentile

MESSAGE_BYTES = 1024
CONN_S = Metric("conn_s", "rate", "conn/s", higher_is_better=True)
CONNECT_P50 = Metric("connect_p50_us", "connect() p50", "us", higher_is_better=False)


@dataclass(frozen=True)
class ConnectionRun:
    """conn_client's report: completed connections, failures, and per-connection timings (ns)."""

    connections: int
    failures: int
    elapsed_ns: int
    connect_ns: list[int]
    total_ns: list[int]


def parse_conn_output(text: str) -> ConnectionRun:
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 6 or head[0] != "connections":
        raise LoadError(f"conn_client printed no header: {lines[0][:100]!r}")
    try:
        connections, failures, elapsed = int(head[1]), int(head[3]), int(head[5])
        pairs = [[int(value) for value in line.split()] for line in lines[1:] if line.strip()]
    except ValueError as exc:
        raise LoadError(f"conn_client printed a line that is not numbers: {exc}") from exc
    if len(pairs) != connections or any(len(pair) != 2 for pair in pairs):
        raise LoadError(f"conn_client announced {connections} connections, printed {len(pairs)}")
    return ConnectionRun(
        connections=connections,
        failures=failures,
        elapsed_ns=elapsed,
        connect_ns=[pair[0] for pair in pairs],
        total_ns=[pair[1] for pair in pairs],
    )


def run_connrate(ctx: LoadContext) -> LoadOutcome:
    argv = [str(ctx.tools.conn_client), ctx.host, str(ctx.port), str(MESSAGE_BYTES)]
    argv += [str(ctx.seconds), str(ctx.max_count)]
    run = parse_conn_output(run_client(ctx, argv, "conn_client"))
    if run.connections == 0 or run.elapsed_ns <= 0:
        raise LoadError(f"conn_client completed no connection ({run.failures} failed)")
    if run.failures > run.connections // 100:
        raise LoadError(f"{run.failures} of {run.connections + run.failures} connections failed")
    values = {
        CONN_S.key: run.connections / (run.elapsed_ns / 1e9),
        CONNECT_P50.key: percentile([ns / 1000 for ns in run.connect_ns], 0.5),
    }
    return LoadOutcome(values=values, samples_us=[ns / 1000 for ns in run.total_ns])


CONNRATE = Load(
    "connrate",
    "new connections, 1 KiB exchange each",
    "echo",
    (CONN_S, CONNECT_P50),
    run_connrate,
    max_count=500_000,
)
