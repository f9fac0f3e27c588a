"""HTTP/1.1 keep-alive requests per second at 1 and 16 connections (wrk), with wrk's latencies."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client

REQ_S = Metric("req_s", "rate", "req/s", higher_is_better=True)
P50 = Metric("p50_us", "p50", "us", higher_is_better=False)

_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$")
_RATE = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkReport:
    """What `wrk --latency` printed: the request rate, latency percentiles (us) and errors."""

    requests_per_s: float
    latency_us: dict[float, float]  # percentile (50, 75, 90, 99) -> microseconds
    socket_errors: int
    non_2xx: int


def parse_wrk_output(text: str) -> WrkReport:
    rate: float | None = None
    latency: dict[float, float] = {}
    socket_errors = non_2xx = 0
    for line in text.splitlines():
        if match := _PERCENTILE.match(line):
            latency[float(match[1])] = float(match[2]) * _UNIT_US[match[3]]
        elif match := _RATE.match(line):
            rate = float(match[1])
        elif match := _SOCKET_ERRORS.search(line):
            socket_errors = sum(int(group) for group in match.groups())
        elif match := _NON_2XX.search(line):
            non_2xx = int(match[1])
    if rate is None:
        raise LoadError(f"wrk printed no 'Requests/sec:' line: {text.strip()[-200:]!r}")
    return WrkReport(rate, latency, socket_errors, non_2xx)


def _run_wrk(ctx: LoadContext, connections: int) -> LoadOutcome:
    seconds = max(1, round(ctx.seconds))  # wrk -d takes whole seconds
    threads = min(connections, 2)  # the machine has 2 cores; more threads only add contention
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if ctx.http_host is not None:
        argv += ["-H", f"Host: {ctx.http_host}"]
    argv += ["--timeout", "5s", f"http://{ctx.host}:{ctx.port}/"]
    report = parse_wrk_output(run_client(ctx, argv, "wrk"))
    if report.non_2xx:
        raise LoadError(f"wrk got {report.non_2xx} responses that were not 2xx/3xx")
    if report.socket_errors:
        raise LoadError(f"wrk counted {report.socket_errors} socket errors")
    if 50.0 not in report.latency_us:
        raise LoadError("wrk printed no 50% latency (was --latency dropped?)")
    values = {REQ_S.key: report.requests_per_s, P50.key: report.latency_us[50.0]}
    return LoadOutcome(values=values)


def run_http_1conn(ctx: LoadContext) -> LoadOutcome:
    return _run_wrk(ctx, 1)


def run_http_16conn(ctx: LoadContext) -> LoadOutcome:
    return _run_wrk(ctx, 16)


# wrk has no request-count bound; its -d time bound is the only one (and the exec timeout).
HTTP_1CONN = Load(
    "http1", "HTTP/1.1 keep-alive, 1 connection (wrk)", "http", (REQ_S, P50), run_http_1conn, 0
)
HTTP_16CONN = Load(
    "http16", "HTTP/1.1 keep-alive, 16 connections (wrk)", "http", (REQ_S, P50), run_http_16conn, 0
)
