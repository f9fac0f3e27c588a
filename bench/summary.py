"""The rows every report shows, computed once: each figure's median, spread and ratios."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bench.loads import LOADS
from bench.result import BenchResult


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}" if value < 10 else f"{value:.1f} {unit}"


@dataclass(frozen=True)
class SummaryRow:
    """One path's figure: `label` is set on the first row of each metric's group."""

    label: str
    path: str
    value: str
    spread: str
    vs_direct: str
    vs_peer: str
    mesh_cpu: str


def summary_groups(result: BenchResult) -> Iterator[list[SummaryRow]]:
    """For each metric of each load that ran, the rows of the available paths that ran it."""
    ran = set(result.settings.get("loads", [load.name for load in LOADS]))
    available = [p for p in result.paths if p.available]
    for load in (load for load in LOADS if load.name in ran):
        for metric in load.metrics:
            rows: list[SummaryRow] = []
            for info in (p for p in available if load.name in p.loads):
                figure = result.figure(info.name, load.name, metric.key)
                median = None if figure is None else figure.median
                spread = "-"
                if figure is not None and median:
                    spread = f"{(max(figure.rounds) - min(figure.rounds)) / median:.0%}"
                vs_direct = (
                    result.ratio(info.name, info.baseline, load.name, metric.key)
                    if info.baseline != info.name
                    else None
                )
                vs_peer = (
                    result.ratio(info.name, info.peer, load.name, metric.key) if info.peer else None
                )
                cores = result.mesh_cores_median(info.name, load.name)
                rows.append(
                    SummaryRow(
                        label="" if rows else f"{load.name} {metric.label}",
                        path=info.name,
                        value="failed" if median is None else value_text(median, metric.unit),
                        spread=spread,
                        vs_direct=ratio_text(vs_direct),
                        vs_peer=ratio_text(vs_peer),
                        mesh_cpu="-" if cores is None else f"{cores:.2f} cores",
                    )
                )
            if rows:
                yield rows
