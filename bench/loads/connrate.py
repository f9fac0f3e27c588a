"""New connections per second, each with one 1 KiB exchange: one at a time and 8 at a time;
and connect()'s own latency, at a paced rate the same on every path.

One at a time the rate is latency-bound (a proxy adds its round trips to every connection);
with PARALLEL loops in flight it is bound by what each connection costs the proxy's CPU, which is
what pooled HBONE tunnels save over a TLS handshake per connection. conn_client does both.

connect() p50 comes from a third, paced run (a connection every PACED_INTERVAL_US): back to back,
a path whose connections take longer leaves the client's CPU idle longer before each connect(),
and on this machine a connect() on a CPU just out of idle takes 10-25 us longer (bench/README.md
"The connect() figure"), which would count against the slower path whatever connect() itself
costs on it. Paced, every path's client waits the same before each connect().
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client
from bench.stats import percentile

MESSAGE_BYTES = 1024
PARALLEL = 8  # connect/exchange/close loops in flight in the concurrent run
RUNS = 3  # one at a time, PARALLEL at a time, paced: each gets a third of the load's seconds
# Longer than a connection through any same-node path (weft-same-node's is about 1 ms), so both
# sides of the capture figure are paced, not back to back.
PACED_INTERVAL_US = 2000
CONN_S = Metric("conn_s", "rate", "conn/s", higher_is_better=True)
CONNECT_P50 = Metric("connect_p50_us", "connect() p50, paced", "us", higher_is_better=False)
CONN_S_PARALLEL = Metric(
    f"conn_s_{PARALLEL}", f"rate, {PARALLEL} at a time", "conn/s", higher_is_better=True
)


@dataclass(frozen=True)
class ConnectionRun:
    """conn_client's report: completed connections, failures, and per-connection timings (ns)."""

    connections: int
    failures: int
    elapsed_ns: int
    connect_ns: list[int]
    total_ns: list[int]

    @property
    def rate(self) -> float:
        return self.connections / (self.elapsed_ns / 1e9)


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


def conn_argv(ctx: LoadContext, parallel: int, interval_us: int = 0) -> list[str]:
    """conn_client's command line for a third of the load's time (the RUNS share it, so the mesh
    CPU the runner accounts over the load's seconds stays a figure of cores)."""
    argv = [str(ctx.tools.conn_client), ctx.host, str(ctx.port), str(MESSAGE_BYTES)]
    argv += [f"{ctx.seconds / RUNS:g}", str(ctx.max_count), str(parallel)]
    return [*argv, str(interval_us)] if interval_us else argv


def _checked(run: ConnectionRun, what: str) -> ConnectionRun:
    if run.connections == 0 or run.elapsed_ns <= 0:
        raise LoadError(f"{what} completed no connection ({run.failures} failed)")
    if run.failures > run.connections // 100:
        raise LoadError(f"{what}: {run.failures} of {run.connections + run.failures} failed")
    return run


def run_connrate(ctx: LoadContext) -> LoadOutcome:
    serial = _checked(
        parse_conn_output(run_client(ctx, conn_argv(ctx, 1), "conn_client")), "conn_client"
    )
    what = f"conn_client x{PARALLEL}"
    parallel = _checked(parse_conn_output(run_client(ctx, conn_argv(ctx, PARALLEL), what)), what)
    what = f"conn_client paced every {PACED_INTERVAL_US} us"
    argv = conn_argv(ctx, 1, PACED_INTERVAL_US)
    paced = _checked(parse_conn_output(run_client(ctx, argv, what)), what)
    values = {
        CONN_S.key: serial.rate,
        CONNECT_P50.key: percentile([ns / 1000 for ns in paced.connect_ns], 0.5),
        CONN_S_PARALLEL.key: parallel.rate,
    }
    # The latency plot shows one connection at a time: concurrency would add queueing to it.
    return LoadOutcome(values=values, samples_us=[ns / 1000 for ns in serial.total_ns])


CONNRATE = Load(
    "connrate",
    f"new connections, 1 KiB exchange each (1, then {PARALLEL} at a time, then paced)",
    "echo",
    (CONN_S, CONNECT_P50, CONN_S_PARALLEL),
    run_connrate,
    max_count=500_000,
)
