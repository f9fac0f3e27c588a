"""Bulk throughput: one iperf3 TCP stream for a bounded time."""

from __future__ import annotations

import json

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client

GBIT_S = Metric("gbit_s", "throughput", "Gbit/s", higher_is_better=True)


def parse_iperf3_json(text: str) -> float:
    """Received bits per second from `iperf3 -J` output (the receiver's count, not the sender's)."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"iperf3 printed no JSON report: {text[:200]!r}") from exc
    if not isinstance(report, dict):
        raise LoadError(f"iperf3 printed JSON that is not a report: {text[:200]!r}")
    if report.get("error"):
        raise LoadError(f"iperf3: {report['error']}")
    try:
        return float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        raise LoadError("iperf3 report has no end.sum_received.bits_per_second") from exc


def run_bulk(ctx: LoadContext) -> LoadOutcome:
    seconds = max(1, round(ctx.seconds))  # iperf3 -t takes whole seconds
    argv = ["iperf3", "-c", ctx.host, "-p", str(ctx.port), "-t", str(seconds), "-J"]
    argv += ["--connect-timeout", "3000"]
    bits = parse_iperf3_json(run_client(ctx, argv, "iperf3"))
    return LoadOutcome(values={GBIT_S.key: bits / 1e9})


BULK = Load("bulk", "bulk TCP (iperf3)", "iperf", (GBIT_S,), run_bulk, max_count=1)
