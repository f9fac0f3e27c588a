"""What a run leaves behind: plots, the machine description, and the lab lock it holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.lab_lock import lab_session_lock
from bench.plots import write_plots
from bench.priority import prioritized
from bench.result import BenchResult, PathInfo, describe_commit, describe_machine
from bench.runner import Figure
from weft.errors import ConflictError


def _result() -> BenchResult:
    return BenchResult(
        started="t0",
        finished="t1",
        machine={},
        commit={},
        settings={"rounds": 2, "loads": ["bulk", "rr"]},
        paths=[PathInfo("direct", "", "direct", None, ["bulk", "rr"])],
        figures=[
            Figure("direct", "bulk", "gbit_s", "Gbit/s", True, [20.0, 22.0], [1, 2]),
            Figure("direct", "rr", "p50_us", "us", False, [30.0, 31.0], [1, 2]),
        ],
    )


def test_plots_are_png_files_for_throughput_and_each_latency_load(tmp_path: Path) -> None:
    samples = {("direct", "rr"): [20.0, 25.0, 30.0, 400.0]}
    written = write_plots(_result(), samples, tmp_path, "run")
    assert [p.name for p in written] == ["run-throughput.png", "run-latency_rr.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_description_names_cpu_cores_kernel_and_load() -> None:
    machine = describe_machine()
    assert machine["cores"] == os.cpu_count()
    assert machine["kernel"] == os.uname().release
    assert machine["cpu_model"]
    assert len(machine["loadavg_at_start"]) == 3


def test_commit_description_is_this_repository_head() -> None:
    commit = describe_commit()
    assert len(commit["sha"]) == 40
    assert isinstance(commit["dirty"], bool)


def test_lab_lock_makes_a_second_holder_wait_then_fail_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lab-session.lock"
    messages: list[str] = []
    with (
        lab_session_lock(messages.append, path=lock),
        pytest.raises(ConflictError, match=f"pid {os.getpid()}"),
        lab_session_lock(messages.append, wait=0.3, path=lock),
    ):
        pass
    assert messages == [f"waiting for the lab: pid {os.getpid()} holds {lock}"]
    with lab_session_lock(messages.append, wait=0.3, path=lock):
        pass  # released when the first holder left


def test_every_bench_process_runs_at_the_same_raised_priority() -> None:
    assert prioritized(["iperf3", "-s"]) == ["nice", "-n", "-5", "iperf3", "-s"]
