"""Renders a load report as a terminal table with rich (plain text when not on a terminal)."""

from __future__ import annotations

from demo.loadreport import KindStats, LoadReport

PLAIN_WIDTH = 132


def describe_seen(stats: KindStats) -> str:
    """What came back, compactly: status counts, reviews versions, kind-specific totals."""
    seen = [f"{code}: {count}" for code, count in sorted(stats.responses.items())]
    if stats.reviews_versions:
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(stats.reviews_versions.items()))
        seen.append(f"reviews {versions}")
    seen += [f"{name}: {value}" for name, value in sorted(stats.totals.items())]
    if stats.cut_off:
        seen.append(f"cut off by --duration-limit: {stats.cut_off}")
    return ", ".join(seen) or "-"


def render_table(report: LoadReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Logs and CI capture get a fixed, wide layout instead of a truncated 80 columns.
        console = Console(width=PLAIN_WIDTH)
    table = Table(title="weft demo load", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("sent/planned", justify="right", no_wrap=True)
    table.add_column("ok", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    for name in ("p50", "p90", "p99"):
        table.add_column(f"{name} ms", justify="right", no_wrap=True)
    table.add_column("seen", overflow="fold", ratio=1)
    for kind, stats in report.kinds.items():
        latency = stats.latency_summary()
        table.add_row(
            kind,
            f"{stats.sent}/{stats.planned}",
            str(stats.ok),
            f"[red]{stats.errors}[/red]" if stats.errors else "0",
            *(f"{value:.2f}" if value is not None else "-" for value in latency.values()),
            describe_seen(stats),
        )
    console.print(table)
    for kind, stats in report.kinds.items():
        for reason, count in stats.error_reasons.most_common(5):
            console.print(f"[red]error[/red] {kind}: {reason} (x{count})", highlight=False)
    verdict = "[green]OK[/green]" if report.ok else f"[red]FAILED[/red] ({report.errors} errors)"
    cut = ", stopped by --duration-limit" if report.stopped_by_duration_limit else ""
    console.print(f"{verdict} in {report.elapsed_s:.2f}s{cut}", highlight=False)
