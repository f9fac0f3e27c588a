"""The report as Markdown tables, for bench/README.md and issue comments (`-o markdown`)."""

from __future__ import annotations

from bench.result import BenchResult
from bench.summary import summary_groups
from bench.targets import CheckResult


def markdown_report(result: BenchResult, checks: list[CheckResult] | None) -> str:
    lines = [
        "| figure | path | median | spread | vs direct | vs peer | mesh CPU |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for rows in summary_groups(result):
        lines += [
            f"| {r.label} | {r.path} | {r.value} | {r.spread} | {r.vs_direct} | {r.vs_peer} "
            f"| {r.mesh_cpu} |"
            for r in rows
        ]
    unavailable = [p for p in result.paths if not p.available]
    if unavailable:
        lines += ["", "| path | not available because |", "|---|---|"]
        lines += [f"| {p.name} | {p.reason} |" for p in unavailable]
    if checks is not None:
        lines += ["", "| issue | target | measured | verdict |", "|---|---|--:|---|"]
        for check in checks:
            measured = "-" if check.measured is None else f"{check.measured:.2f}"
            verdict = check.verdict if check.passed is not None else check.note
            lines.append(
                f"| {check.target.issue} | {check.target.description} | {measured} | {verdict} |"
            )
    return "\n".join(lines) + "\n"
