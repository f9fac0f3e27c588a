"""bench.targets and bench.result: per-round paired ratios and the PASS/FAIL/n-a of each target."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.result import BenchResult, PathInfo
from bench.runner import Figure
from bench.targets import TARGETS, Measure, check_target, check_targets, paths_for_targets


def _info(name: str, reason: str | None = None) -> PathInfo:
    return PathInfo(
        name=name, description="", baseline="direct", peer=None, loads=[], reason=reason
    )


def _figure(path: str, load: str, metric: str, rounds: list[float]) -> Figure:
    return Figure(path, load, metric, "u", True, rounds, list(range(1, len(rounds) + 1)))


def _result(paths: list[PathInfo], figures: list[Figure]) -> BenchResult:
    return BenchResult(
        started="t0", finished="t1", machine={}, commit={}, settings={"rounds": 3},
        paths=paths, figures=figures,
    )  # fmt: skip


def _target(description: str):  # type: ignore[no-untyped-def]
    return next(t for t in TARGETS if t.description == description)


def test_ratio_is_median_of_per_round_ratios_so_round_drift_cancels() -> None:
    # The machine was twice as slow in round 2 for both paths: the ratio stays 0.5 every round.
    result = _result(
        [_info("direct"), _info("stunnel")],
        [_figure("direct", "bulk", "gbit_s", [20.0, 10.0, 20.0]),
         _figure("stunnel", "bulk", "gbit_s", [10.0, 5.0, 10.0])],
    )  # fmt: skip
    assert result.ratio("stunnel", "direct", "bulk", "gbit_s") == pytest.approx(0.5)


def test_ratio_pairs_only_rounds_where_both_paths_succeeded() -> None:
    mine = Figure("stunnel", "rr", "p50_us", "us", False, [100.0, 300.0], [1, 3])
    theirs = Figure("direct", "rr", "p50_us", "us", False, [50.0, 60.0, 100.0], [1, 2, 3])
    result = _result([_info("direct"), _info("stunnel")], [mine, theirs])
    assert result.paired(("stunnel", "direct"), "rr", "p50_us") == [(100.0, 50.0), (300.0, 100.0)]
    assert result.ratio("stunnel", "direct", "rr", "p50_us") == pytest.approx(2.5)


def test_target_on_an_unavailable_path_is_not_applicable_and_says_so() -> None:
    result = _result(
        [_info("weft-same-node", "node agent not built yet"), _info("direct-same-node")], []
    )
    check = check_target(result, _target("same-node bulk >= 0.9x direct same-node"))
    assert check.verdict == "n/a"
    assert check.note.startswith("n/a (path not available")
    assert "weft-same-node" in check.note


def test_ratio_target_passes_and_fails_on_its_bound() -> None:
    target = _target("cross-node new conn/s (8 at a time) >= 5x stunnel")
    paths = [_info("weft-cross-node"), _info("stunnel")]

    def measured(mesh: float) -> BenchResult:
        return _result(paths, [_figure("weft-cross-node", "connrate", "conn_s_8", [mesh]),
                               _figure("stunnel", "connrate", "conn_s_8", [700.0])])  # fmt: skip

    assert check_target(measured(3500.0), target).verdict == "PASS"
    failed = check_target(measured(3000.0), target)
    assert failed.verdict == "FAIL"
    assert failed.measured == pytest.approx(3000.0 / 700.0)


def test_added_target_is_a_difference_in_microseconds() -> None:
    target = _target("capture adds < 10 us to connect() p50")
    assert target.measure is Measure.ADDED
    result = _result(
        [_info("weft-same-node"), _info("direct-same-node")],
        [_figure("weft-same-node", "connrate", "connect_p50_us", [42.0, 45.0]),
         _figure("direct-same-node", "connrate", "connect_p50_us", [30.0, 31.0])],
    )  # fmt: skip
    check = check_target(result, target)
    assert check.measured == pytest.approx(13.0)
    assert check.verdict == "FAIL"
    assert "CI" not in check.note  # two rounds: no interval worth showing


def test_added_target_notes_the_medians_interval_when_rounds_allow() -> None:
    target = _target("capture adds < 10 us to connect() p50")
    weft = [31.0, 32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0, 39.0, 40.0]
    result = _result(
        [_info("weft-same-node"), _info("direct-same-node")],
        [_figure("weft-same-node", "connrate", "connect_p50_us", weft),
         _figure("direct-same-node", "connrate", "connect_p50_us", [30.0] * 10)],
    )  # fmt: skip
    check = check_target(result, target)
    assert check.measured == pytest.approx(5.5)
    assert "95% CI +2.0 .. +9.0" in check.note  # 10 rounds: the 2nd and 9th of the differences


def test_added_latency_target_compares_overheads_over_direct() -> None:
    target = _target("added p50 latency at 1 conn <= 2x haproxy's added latency")
    result = _result(
        [_info("weft-waypoint"), _info("haproxy"), _info("direct")],
        [_figure("weft-waypoint", "http1", "p50_us", [200.0]),
         _figure("haproxy", "http1", "p50_us", [110.0]),
         _figure("direct", "http1", "p50_us", [60.0])],
    )  # fmt: skip
    check = check_target(result, target)
    assert check.measured == pytest.approx(140.0 / 50.0)
    assert check.verdict == "FAIL"


def test_every_target_names_known_paths_and_loads() -> None:
    from bench.loads import LOADS
    from bench.paths import PATH_NAMES

    loads = {load.name: {m.key for m in load.metrics} for load in LOADS}
    for target in TARGETS:
        assert target.path in PATH_NAMES
        assert target.reference in PATH_NAMES
        assert target.metric in loads[target.load]
    assert paths_for_targets() <= set(PATH_NAMES)


def test_result_survives_a_json_round_trip(tmp_path: Path) -> None:
    result = _result(
        [_info("direct"), _info("stunnel", "setup failed")],
        [_figure("direct", "bulk", "gbit_s", [20.0, 21.0])],
    )
    result.save(tmp_path / "run.json")
    loaded = BenchResult.load(tmp_path / "run.json")
    assert loaded.median("direct", "bulk", "gbit_s") == pytest.approx(20.5)
    assert loaded.path("stunnel") is not None
    assert not loaded.path("stunnel").available  # type: ignore[union-attr]
    assert [c.verdict for c in check_targets(loaded)] == ["n/a"] * len(TARGETS)
