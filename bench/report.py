"""The terminal report: paths and their availability, figures with ratios, target checks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from bench.loads import LOADS
from bench.result import BenchResult
from bench.targets import CheckResult

_VERDICT_STYLE = {"PASS": "green", "FAIL": "red", "n/a": "yellow"}


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}" if value < 10 else f"{value:.1f} {unit}"


def paths_table(result: BenchResult) -> Table:
    table = Table(title="paths", title_justify="left")
    table.add_column("path")
    table.add_column("status")
    table.add_column("compared with")
    table.add_column("mesh procs peak RSS", justify="right")
    for info in result.paths:
        status = "[green]ran[/]" if info.available else f"[yellow]not available:[/] {info.reason}"
        against = info.baseline + (f", {info.peer}" if info.peer else "")
        rss = f"{info.peak_rss_bytes / 2**20:.1f} MiB" if info.mesh_processes else "-"
        table.add_row(info.name, status, against, rss)
    return table


def figures_table(result: BenchResult) -> Table:
    rounds = result.settings.get("rounds", "?")
    table = Table(
        title=f"medians of {rounds} interleaved rounds ({result.settings.get('mode')} mode)",
        title_justify="left",
    )
    for name, justify in (
        ("figure", "left"),
        ("path", "left"),
        ("median", "right"),
        ("spread", "right"),
        ("vs direct", "right"),
        ("vs peer", "right"),
        ("mesh CPU", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    available = [p for p in result.paths if p.available]
    ran = set(result.settings.get("loads", [load.name for load in LOADS]))
    for load in (load for load in LOADS if load.name in ran):
        for metric in load.metrics:
            first = True
            for info in available:
                if load.name not in info.loads:
                    continue
                figure = next(
                    (f for f in result.figures
                     if (f.path, f.load, f.metric) == (info.name, load.name, metric.key)),
                    None,
                )  # fmt: skip
                if figure is None or figure.median is None:
                    value, spread = "failed", "-"
                else:
                    value = _value_text(figure.median, metric.unit)
                    spread = f"{(max(figure.rounds) - min(figure.rounds)) / figure.median:.0%}"
                vs_direct = (
                    result.ratio(info.name, info.baseline, load.name, metric.key)
                    if info.baseline != info.name
                    else None
                )
                vs_peer = (
                    result.ratio(info.name, info.peer, load.name, metric.key) if info.peer else None
                )
                cores = result.mesh_cores_median(info.name, load.name)
                table.add_row(
                    f"{load.name} {metric.label}" if first else "",
                    info.name,
                    value,
                    spread,
                    _ratio_text(vs_direct),
                    _ratio_text(vs_peer),
                    "-" if cores is None else f"{cores:.2f} cores",
                )
                first = False
            if not first:
                table.add_section()
    return table


def checks_table(checks: list[CheckResult]) -> Table:
    table = Table(title="targets (weft bench --check)", title_justify="left")
    for name in ("issue", "target", "measured", "verdict", "from"):
        table.add_column(name)
    for check in checks:
        measured = "-" if check.measured is None else f"{check.measured:.2f}"
        style = _VERDICT_STYLE[check.verdict]
        table.add_row(
            check.target.issue,
            check.target.description,
            measured,
            f"[{style}]{check.verdict}[/]",
            check.note,
        )
    return table


def print_report(console: Console, result: BenchResult, checks: list[CheckResult] | None) -> None:
    machine = result.machine
    console.print(
        f"[bold]weft bench[/] on {machine.get('cpu_model')} ({machine.get('cores')} cores), "
        f"kernel {machine.get('kernel')}, commit {str(result.commit.get('sha'))[:10]}"
        + (" (dirty)" if result.commit.get("dirty") else "")
    )
    console.print(paths_table(result))
    console.print(figures_table(result))
    if result.failures:
        console.print("[red]failed runs:[/]")
        for failure in result.failures:
            console.print(
                f"  round {failure.round} {failure.load} on {failure.path}: {failure.error}"
            )
    if checks is not None:
        console.print(checks_table(checks))
