"""The vocabulary of results: a metric, one load run's outcome, and the error of a failed run."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.native import NativeTools
from bench.priority import prioritized
from bench.testbed import Testbed


class LoadError(Exception):
    """One load run failed (the tool errored, timed out or printed nothing usable)."""


@dataclass(frozen=True)
class Metric:
    """One figure a load reports, e.g. ("p50_us", "RR p50", "us", higher_is_better=False)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass
class LoadOutcome:
    """The figures of one run of one load on one path, and raw latencies for the plots."""

    values: dict[str, float]
    samples_us: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LoadContext:
    """Everything a load needs to run once: where the client runs, what it connects to, how long."""

    testbed: Testbed
    client: str  # the workload the client runs in
    host: str
    port: int
    seconds: float
    max_count: int  # the bound on rounds/connections/requests, whatever comes first with seconds
    tools: NativeTools
    http_host: str | None = None  # the Host header HTTP clients send (a proxy routes by it)
    pids: tuple[int, ...] = ()  # the processes the path added (the proxy a load may watch)


def run_client(ctx: LoadContext, argv: Sequence[str], what: str) -> str:
    """Run a load client in the client workload, bounded by the load's time plus a grace period."""
    timeout = ctx.seconds + 20
    try:
        proc = ctx.testbed.exec(ctx.client, prioritized(argv), timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{what} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LoadError(f"{what} exited {proc.returncode}: {detail[-1] if detail else ''}")
    return proc.stdout
