"""`weft bench`: direct vs meshed vs peer proxies, in a lab it brings up itself."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from rich.console import Console

from bench.loads import LOADS, load_named
from bench.markdown_report import markdown_report
from bench.paths import PATH_NAMES
from bench.report import print_report
from bench.result import BenchResult
from bench.runner import FULL, QUICK, BenchSettings
from bench.session import Selection, expand_paths, run_bench
from bench.targets import CheckResult, check_targets, paths_for_targets
from weft.cli import print_json
from weft.errors import ExitCode, NotRootError, UsageError

RESULTS_DIR = Path(__file__).parent / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "tmp"  # gitignored: quick runs are not records

EPILOG = f"""\
scenarios (any mix; none = everything):
  paths: {", ".join(PATH_NAMES)}
  loads: {", ".join(load.name for load in LOADS)}
  A path's baseline (direct or direct-same-node) and its peer (stunnel, haproxy) are added
  so every ratio can be computed. Paths the project cannot run yet are reported, not skipped.

examples:
  sudo weft bench --quick                  # every path and load, < 3 minutes
  sudo weft bench                          # the full run (< 15 minutes), saved in bench/results/
  sudo weft bench stunnel rr connrate      # direct vs stunnel, two loads
  sudo weft bench --check                  # run what the targets need, print PASS/FAIL
  weft bench --check --from bench/results/<run>.json -o markdown   # a recorded run
"""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.epilog = EPILOG
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="paths and/or loads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.rounds} rounds of {QUICK.seconds:g} s per load (default: {FULL.rounds} "
        f"rounds of {FULL.seconds:g} s)",
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--seconds", type=float, help="override the seconds per load run")
    parser.add_argument(
        "--check", action="store_true", help="print each performance target and PASS/FAIL"
    )
    parser.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        metavar="RESULT.json",
        help="with --check or alone: report on a recorded JSON result instead of running",
    )
    parser.add_argument(
        "--testbed",
        choices=("lab", "running"),
        default="lab",
        help="lab: bring up vm.lab's lab and remove it after (default); running: use the lab "
        "that is up and leave it (the bench workloads stay in it)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="with --testbed lab: remove a lab that is already up before building the bench's",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where the JSON result and plots go (default: bench/results/, quick: its tmp/)",
    )
    parser.add_argument(
        "--label",
        help="name the result <UTC time>-LABEL.json instead of <UTC time>-<mode>.json "
        "(e.g. --label waypoint for a run of the waypoint's paths)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "markdown"),
        default="table",
        help="the report on stdout: terminal tables, the result's JSON, or Markdown tables",
    )
    parser.set_defaults(func=run_bench_command)


def parse_scenarios(scenarios: list[str], check: bool) -> Selection:
    """Split SCENARIO words into paths and loads; an unknown word is a usage error."""
    load_names = {load.name for load in LOADS}
    paths = [s for s in scenarios if s in PATH_NAMES]
    loads = [s for s in scenarios if s in load_names]
    unknown = [s for s in scenarios if s not in PATH_NAMES and s not in load_names]
    if unknown:
        raise UsageError(
            f"unknown scenario {', '.join(repr(u) for u in unknown)}",
            hint=f"paths: {', '.join(PATH_NAMES)}; loads: {', '.join(sorted(load_names))}",
        )
    if not paths:
        paths = sorted(paths_for_targets(), key=PATH_NAMES.index) if check else list(PATH_NAMES)
    chosen_loads = tuple(load_named(n) for n in loads) if loads else LOADS
    return Selection(paths=expand_paths(paths), loads=chosen_loads)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    base = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else base.rounds
    seconds = args.seconds if args.seconds is not None else base.seconds
    if rounds < 1 or rounds > 50:
        raise UsageError(f"--rounds {rounds}: expected 1..50")
    if seconds < 0.5 or seconds > 60:
        raise UsageError(f"--seconds {seconds}: expected 0.5..60")
    mode = base.mode if (rounds, seconds) == (base.rounds, base.seconds) else "custom"
    return BenchSettings(mode, rounds, seconds)


def result_label(label: str | None, settings: BenchSettings) -> str:
    """What follows the time in the result's file name: --label, else the mode."""
    if label is None:
        return settings.mode
    if not label.replace("-", "").replace("_", "").isalnum():
        raise UsageError(
            f"--label {label!r}: letters, digits, '-' and '_' only", hint="e.g. --label waypoint"
        )
    return label


def emit_report(result: BenchResult, checks: list[CheckResult] | None, output: str) -> None:
    """The report on stdout in the chosen format; progress and file names go to stderr."""
    if output == "json":
        document = result.to_json()
        if checks is not None:
            document["checks"] = [check.to_json() for check in checks]
        print_json(document)
    elif output == "markdown":
        print(markdown_report(result, checks), end="")
    else:
        console = Console()
        if not console.is_terminal:  # piped or logged: wide enough that tables do not wrap
            console = Console(width=130)
        print_report(console, result, checks)


def run_bench_command(args: argparse.Namespace) -> int:
    status = Console(stderr=True)
    if args.from_file is not None:
        result = BenchResult.load(args.from_file)
        emit_report(result, check_targets(result) if args.check else None, args.output)
        return ExitCode.OK
    selection = parse_scenarios(args.scenarios, args.check)
    settings = settings_from(args)
    label = result_label(args.label, settings)
    if os.geteuid() != 0:
        raise NotRootError("weft bench")
    output = run_bench(
        selection,
        settings,
        args.testbed,
        lambda line: status.print(f"[dim]{line}[/]"),
        replace=args.replace,
    )
    result = output.result
    default_dir = QUICK_RESULTS_DIR if settings.mode == "quick" else RESULTS_DIR
    directory = args.results_dir or default_dir
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{stamp}-{label}"
    json_path = directory / f"{stem}.json"
    result.save(json_path)
    emit_report(result, check_targets(result) if args.check else None, args.output)
    status.print(f"result: {json_path}")
    if not args.no_plots:
        from bench.plots import write_plots  # matplotlib is slow to import; only when plotting

        for plot in write_plots(result, output.samples_us, directory, stem):
            status.print(f"plot:   {plot}")
    return ExitCode.OK
