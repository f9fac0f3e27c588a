"""Runs every load on every path, interleaved over rounds, and collects per-round figures.

The machine is small and shared, so no single run is trusted: each round runs each load on every
path back to back (the path order rotates each round so no path always goes first), and the
report takes the median across rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.loads import Load
from bench.measurement import LoadContext, LoadError
from bench.native import NativeTools
from bench.paths import BenchPath, PathTarget
from bench.procstats import measure
from bench.stats import median
from bench.testbed import Testbed

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """How long and how often: `quick` fits in 3 minutes, `full` in 15.

    More short rounds beat fewer long ones here: the median has more rounds to reject the ones
    another tenant of this 2-core machine disturbed.
    """

    mode: str
    rounds: int
    seconds: float  # per load run


QUICK = BenchSettings("quick", rounds=2, seconds=1.0)
FULL = BenchSettings("full", rounds=7, seconds=2.0)


@dataclass
class Figure:
    """One metric of one load on one path: its value in each round."""

    path: str
    load: str
    metric: str
    unit: str
    higher_is_better: bool
    rounds: list[float] = field(default_factory=list)
    round_numbers: list[int] = field(default_factory=list)  # 1-based, parallel to `rounds`

    def by_round(self) -> dict[int, float]:
        return dict(zip(self.round_numbers, self.rounds, strict=True))

    @property
    def median(self) -> float | None:
        return median(self.rounds) if self.rounds else None


@dataclass(frozen=True)
class Failure:
    path: str
    load: str
    round: int
    error: str


@dataclass
class Collected:
    """What the rounds produced, before it is summarised."""

    figures: dict[tuple[str, str, str], Figure] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    mesh_cores: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    samples_us: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def rotated(items: Sequence[BenchPath], round_index: int) -> list[BenchPath]:
    """The path order of one round: A B C, then B C A, then C A B, ..."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


@dataclass(frozen=True)
class RoundPlan:
    """What stays the same for every load run of a session."""

    testbed: Testbed
    targets: dict[str, PathTarget]
    settings: BenchSettings
    tools: NativeTools
    progress: Progress


def run_rounds(plan: RoundPlan, paths: Sequence[BenchPath], loads: Sequence[Load]) -> Collected:
    collected = Collected()
    for round_index in range(plan.settings.rounds):
        for load in loads:
            for path in rotated([p for p in paths if load.name in p.loads], round_index):
                _run_once(plan, path, load, round_index, collected)
    return collected


def _run_once(
    plan: RoundPlan, path: BenchPath, load: Load, round_index: int, collected: Collected
) -> None:
    settings, progress, target = plan.settings, plan.progress, plan.targets[path.name]
    host, port = target.addresses[load.service]
    pids = path.mesh_pids()
    ctx = LoadContext(
        testbed=plan.testbed,
        client=target.client,
        host=host,
        port=port,
        seconds=settings.seconds,
        max_count=load.max_count,
        tools=plan.tools,
        http_host=target.http_host,
        pids=tuple(pids),
    )
    label = f"round {round_index + 1}/{settings.rounds}  {load.name:<8} {path.name:<17}"
    before = measure(pids)
    try:
        outcome = load.run(ctx)
    except LoadError as exc:
        collected.failures.append(Failure(path.name, load.name, round_index + 1, str(exc)))
        progress(f"{label} failed: {exc}")
        return
    after = measure(pids)
    for metric in load.metrics:
        key = (path.name, load.name, metric.key)
        figure = collected.figures.setdefault(
            key, Figure(path.name, load.name, metric.key, metric.unit, metric.higher_is_better)
        )
        figure.rounds.append(outcome.values[metric.key])
        figure.round_numbers.append(round_index + 1)
    if pids:
        cores = (after.cpu_seconds - before.cpu_seconds) / max(settings.seconds, 1e-9)
        collected.mesh_cores.setdefault((path.name, load.name), []).append(cores)
        previous = collected.peak_rss_bytes.get(path.name, 0)
        collected.peak_rss_bytes[path.name] = max(previous, after.peak_rss_bytes)
    if outcome.samples_us:
        # The plots show the latency distribution of the last round that ran.
        collected.samples_us[(path.name, load.name)] = outcome.samples_us
    first = load.metrics[0]
    progress(f"{label} {first.label}: {outcome.values[first.key]:,.2f} {first.unit}")
