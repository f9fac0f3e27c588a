"""The terminal report: paths and their availability, figures with ratios, target checks."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from bench.result import BenchResult
from bench.summary import summary_groups
from bench.targets import CheckResult

_VERDICT_STYLE = {"PASS": "green", "FAIL": "red", "n/a": "yellow"}


def paths_table(result: BenchResult) -> Table:
    table = Table(title="paths", title_justify="left")
    table.add_column("path")
    table.add_column("status")
    table.add_column("compared with")
    table.add_column("its processes (CPU s over the run, peak RSS)")
    for info in result.paths:
        status = "[green]ran[/]" if info.available else f"[yellow]not available:[/] {info.reason}"
        against = info.baseline + (f", {info.peer}" if info.peer else "")
        usage = "; ".join(
            f"{p['name']} {p['cpu_seconds']:.1f} s {p['peak_rss_bytes'] / 2**20:.1f} MiB"
            for p in info.processes
        )
        table.add_row(info.name, status, against, usage or "-")
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
    for rows in summary_groups(result):
        for row in rows:
            table.add_row(
                row.label, row.path, row.value, row.spread, row.vs_direct, row.vs_peer, row.mesh_cpu
            )
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
