"""bench.cli: scenario words, settings bounds, and reporting on a recorded run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.cli import parse_scenarios, register, result_label, settings_from
from bench.paths import make_path
from bench.result import BenchResult, PathInfo
from bench.runner import FULL, QUICK, Figure
from weft.cli import main
from weft.errors import ExitCode, UsageError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser, "bench")
    return parser.parse_args(list(argv))


def test_a_path_brings_its_baseline_and_its_peer() -> None:
    selection = parse_scenarios(["weft-cross-node"], check=False)
    assert selection.paths == ("direct", "weft-cross-node", "stunnel")


def test_same_node_path_is_compared_with_direct_same_node() -> None:
    assert parse_scenarios(["weft-same-node"], check=False).paths == (
        "direct-same-node",
        "weft-same-node",
    )


def test_load_words_select_loads_and_leave_every_path() -> None:
    selection = parse_scenarios(["rr", "bulk"], check=False)
    assert [load.name for load in selection.loads] == ["rr", "bulk"]
    assert "haproxy" in selection.paths
    assert "weft-waypoint" in selection.paths


def test_unknown_scenario_is_a_usage_error_listing_the_choices() -> None:
    with pytest.raises(UsageError) as exc:
        parse_scenarios(["nginx"], check=False)
    assert "'nginx'" in str(exc.value)
    assert "stunnel" in str(exc.value)


def test_check_without_paths_runs_the_paths_targets_need() -> None:
    paths = parse_scenarios([], check=True).paths
    assert {"weft-same-node", "direct-same-node", "stunnel", "haproxy", "direct"} <= set(paths)


def test_quick_and_full_settings_and_their_bounds() -> None:
    assert settings_from(_args("--quick")) == QUICK
    assert settings_from(_args()) == FULL
    assert settings_from(_args("--rounds", "3")).mode == "custom"
    with pytest.raises(UsageError, match="--rounds"):
        settings_from(_args("--rounds", "0"))
    with pytest.raises(UsageError, match="--seconds"):
        settings_from(_args("--seconds", "600"))


def test_quick_mode_fits_three_minutes_of_load_with_every_path() -> None:
    # Upper bound of load time: every load on every path that could run it, each round.
    runs = sum(len(make_path(p).loads) for p in parse_scenarios([], check=False).paths)
    assert runs * QUICK.rounds * (QUICK.seconds + 1.0) < 160  # 39 runs: 156 s
    assert runs * FULL.rounds * (FULL.seconds + 1.0) < 14 * 60


DIRECT_BULK = Figure("direct", "bulk", "gbit_s", "Gbit/s", True, [20.0], [1])
DIRECT = PathInfo("direct", "", "direct", None, ["bulk"])
Report = Callable[..., str]


@pytest.fixture
def report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Report:
    """report(*options, **run): what `weft bench --from` prints (with these options) for a run
    recorded with `run`'s paths, figures, settings and machine."""

    def report_of(*options: str, **run: Any) -> str:
        recorded = {"started": "t0", "finished": "t1", "machine": {}, "commit": {}, **run}
        BenchResult(**recorded).save(tmp_path / "run.json")
        assert main(["bench", "--from", str(tmp_path / "run.json"), *options]) == ExitCode.OK
        return capsys.readouterr().out

    return report_of


def test_check_from_a_recorded_run_prints_targets_without_root(report: Report) -> None:
    out = report(
        "--check",
        machine={"cpu_model": "test cpu", "cores": 2},
        commit={"sha": "abc"},
        settings={"rounds": 1, "mode": "quick"},
        paths=[
            DIRECT,
            PathInfo("weft-same-node", "", "direct-same-node", None, ["bulk"], "not built yet"),
        ],
        figures=[DIRECT_BULK],
    )
    assert "not available" in out
    assert "n/a (path not available" in out
    assert "20.0 Gbit/s" in out


def test_report_shows_only_the_loads_that_ran(report: Report) -> None:
    out = report(
        settings={"rounds": 1, "mode": "custom", "loads": ["bulk"]},
        paths=[PathInfo("direct", "", "direct", None, ["bulk", "rr", "http1"])],
        figures=[DIRECT_BULK],
    )
    assert "bulk throughput" in out
    assert "rr p50" not in out
    assert "failed" not in out


def test_markdown_report_has_a_row_per_path_and_the_targets(report: Report) -> None:
    out = report(
        "-o",
        "markdown",
        "--check",
        settings={"rounds": 2, "mode": "custom", "loads": ["bulk"]},
        paths=[
            DIRECT,
            PathInfo("stunnel", "", "direct", None, ["bulk"]),
            PathInfo("weft-cross-node", "", "direct", "stunnel", ["bulk"], "not built yet"),
        ],
        figures=[
            Figure("direct", "bulk", "gbit_s", "Gbit/s", True, [20.0, 10.0], [1, 2]),
            Figure("stunnel", "bulk", "gbit_s", "Gbit/s", True, [5.0, 2.5], [1, 2]),
        ],
    )
    assert "| bulk throughput | direct | 15.0 Gbit/s | 67% | - | - | - |" in out
    assert "|  | stunnel | 3.75 Gbit/s | 67% | 0.25x | - | - |" in out
    assert "| weft-cross-node | not built yet |" in out
    assert "n/a (path not available: weft-cross-node)" in out


def test_json_output_is_the_result_with_its_checks(report: Report) -> None:
    out = report(
        "-o",
        "json",
        "--check",
        machine={"cores": 2},
        settings={"rounds": 1, "loads": ["bulk"]},
        paths=[DIRECT],
        figures=[DIRECT_BULK],
    )
    document = json.loads(out)
    assert document["machine"] == {"cores": 2}
    assert document["figures"][0]["median"] == 20.0
    assert {c["verdict"] for c in document["checks"]} == {"n/a"}


def test_a_label_names_the_result_file_and_a_bad_one_is_refused_before_running() -> None:
    assert result_label(None, FULL) == "full"
    assert result_label("waypoint", FULL) == "waypoint"
    with pytest.raises(UsageError, match="--label"):
        result_label("../x", FULL)
