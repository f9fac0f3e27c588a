"""The performance targets other issues set, in one table, and how a run measures up to them."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from bench.result import BenchResult
from bench.stats import median, median_interval

# Below this many rounds the median's 95% interval is just the rounds' range: not shown.
MIN_ROUNDS_FOR_INTERVAL = 6


class Measure(Enum):
    """How a target compares a path with its reference."""

    RATIO = "ratio"  # path / reference
    ADDED = "added"  # path - reference (e.g. microseconds a hop adds)
    ADDED_RATIO = "added ratio"  # (path - direct) / (reference - direct): overhead vs overhead
    WORST = "worst"  # the path's own figure in its worst round (reference: the path itself)


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Target:
    issue: str
    description: str
    path: str
    reference: str
    load: str
    metric: str
    measure: Measure
    op: str
    bound: float
    direct: str = "direct"  # for ADDED_RATIO: the unmeshed path both overheads are measured from


TARGETS: tuple[Target, ...] = (
    Target("eBPF capture", "same-node bulk >= 0.9x direct same-node", "weft-same-node",
           "direct-same-node", "bulk", "gbit_s", Measure.RATIO, ">=", 0.9),
    Target("eBPF capture", "1 KiB RR p50 <= 1.2x direct same-node", "weft-same-node",
           "direct-same-node", "rr", "p50_us", Measure.RATIO, "<=", 1.2),
    Target("eBPF capture", "capture adds < 10 us to connect() p50", "weft-same-node",
           "direct-same-node", "connrate", "connect_p50_us", Measure.ADDED, "<", 10.0),
    Target("node agent", "cross-node bulk >= 1.0x stunnel", "weft-cross-node", "stunnel",
           "bulk", "gbit_s", Measure.RATIO, ">=", 1.0),
    Target("node agent", "cross-node 1 KiB RR p50 <= 1.1x stunnel", "weft-cross-node",
           "stunnel", "rr", "p50_us", Measure.RATIO, "<=", 1.1),
    # Pooled tunnels save CPU per connection, so the rate is compared with 8 connections in
    # flight; one at a time it is bound by round trips (connrate's conn_s shows that one).
    Target("node agent", "cross-node new conn/s (8 at a time) >= 5x stunnel", "weft-cross-node",
           "stunnel", "connrate", "conn_s_8", Measure.RATIO, ">=", 5.0),
    Target("waypoint", "HTTP/1.1 keep-alive 16 conns req/s >= 0.5x haproxy", "weft-waypoint",
           "haproxy", "http16", "req_s", Measure.RATIO, ">=", 0.5),
    Target("waypoint", "added p50 latency at 1 conn <= 2x haproxy's added latency",
           "weft-waypoint", "haproxy", "http1", "p50_us", Measure.ADDED_RATIO, "<=", 2.0),
    Target("waypoint", "a 1 MiB response streams with memory growth < 4 MiB", "weft-waypoint",
           "weft-waypoint", "stream1m", "rss_growth_kib", Measure.WORST, "<", 4096.0),
)  # fmt: skip


@dataclass(frozen=True)
class CheckResult:
    target: Target
    measured: float | None  # None when not measurable
    passed: bool | None  # None when not measurable
    note: str  # "n/a (path not available)" and the like, or the figures it came from

    def to_json(self) -> dict[str, object]:
        return {
            "issue": self.target.issue,
            "target": self.target.description,
            "measured": self.measured,
            "verdict": self.verdict,
            "note": self.note,
        }

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "n/a"
        return "PASS" if self.passed else "FAIL"


def _unavailable(result: BenchResult, names: tuple[str, ...]) -> str | None:
    for name in names:
        info = result.path(name)
        if info is None:
            return f"n/a ({name} was not run)"
        if not info.available:
            return f"n/a (path not available: {name})"  # the paths table says why
    return None


def check_target(result: BenchResult, target: Target) -> CheckResult:
    needed: tuple[str, ...] = (target.path, target.reference)
    if target.measure is Measure.ADDED_RATIO:
        needed += (target.direct,)
    missing = _unavailable(result, needed)
    if missing:
        return CheckResult(target, None, None, missing)
    if target.measure is Measure.ADDED_RATIO:
        triples = result.paired((target.path, target.reference, target.direct), target.load,
                                target.metric)  # fmt: skip
        if not triples:
            return CheckResult(target, None, None, "n/a (no round where all three ran)")
        added_mine = median([mine - base for mine, _, base in triples])
        added_theirs = median([theirs - base for _, theirs, base in triples])
        if added_theirs <= 0:
            return CheckResult(
                target,
                None,
                None,
                f"n/a ({target.reference} added no latency over {target.direct})",
            )
        measured = added_mine / added_theirs
        note = f"+{added_mine:,.1f} / +{added_theirs:,.1f} {target.metric} over {target.direct}"
        return CheckResult(target, measured, _OPS[target.op](measured, target.bound), note)
    if target.measure is Measure.WORST:
        figure = result.figure(target.path, target.load, target.metric)
        if figure is None or not figure.rounds:
            return CheckResult(target, None, None, "n/a (no round succeeded)")
        worst = max(figure.rounds) if not figure.higher_is_better else min(figure.rounds)
        note = f"worst of {len(figure.rounds)} rounds ({target.metric})"
        return CheckResult(target, worst, _OPS[target.op](worst, target.bound), note)
    pairs = result.paired((target.path, target.reference), target.load, target.metric)
    if not pairs:
        return CheckResult(target, None, None, "n/a (no round where both ran)")
    if target.measure is Measure.RATIO:
        ratios = [mine / theirs for mine, theirs in pairs if theirs != 0]
        if not ratios:
            return CheckResult(target, None, None, "n/a (reference measured zero)")
        measured = median(ratios)
        note = f"median of {len(ratios)} per-round ratios"
    else:
        differences = [mine - theirs for mine, theirs in pairs]
        measured = median(differences)
        note = f"median of {len(pairs)} per-round differences ({target.metric})"
        if len(differences) >= MIN_ROUNDS_FOR_INTERVAL:
            # How sure the verdict is: the rounds' differences are noisy (bench/README.md).
            low, high = median_interval(differences)
            note += f", 95% CI {low:+,.1f} .. {high:+,.1f}"
    return CheckResult(target, measured, _OPS[target.op](measured, target.bound), note)


def check_targets(result: BenchResult) -> list[CheckResult]:
    return [check_target(result, target) for target in TARGETS]


def paths_for_targets() -> set[str]:
    """Every path some target needs, so `weft bench --check` runs just those."""
    names: set[str] = set()
    for target in TARGETS:
        names |= {target.path, target.reference}
        if target.measure is Measure.ADDED_RATIO:
            names.add(target.direct)
    return names
