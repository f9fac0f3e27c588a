"""vm.lab.state: state.json round-trips, a torn file reads as a crash, the lock excludes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vm.lab.state import BUILDING, UP, LabState, ProcessInfo, StateStore, WorkloadInfo, pid_alive
from weft.errors import ConflictError


def test_state_round_trips_through_the_store(tmp_path: Path):
    store = StateStore(tmp_path)
    state = LabState(status=UP, builder_pid=42, topology={"nodes": []}, demo=True)
    state.workloads["frontend"] = WorkloadInfo(
        "frontend", "shop", "node1", "10.88.1.2", "weft-node1-frontend", "/cg", ports=(8080,)
    )
    state.processes.append(
        ProcessInfo("frontend", 1234, 99, "/log", "/cg", workload="frontend", argv=("a", "b"))
    )
    store.save(state)
    assert store.load() == state


def test_missing_state_file_means_no_lab(tmp_path: Path):
    assert StateStore(tmp_path).load() is None


def test_torn_state_file_reads_as_a_crashed_build(tmp_path: Path):
    store = StateStore(tmp_path)
    store.path.write_text('{"status": "up", "work')
    state = store.load()
    assert state is not None
    assert state.status == BUILDING
    assert state.builder_pid == 0


def test_remove_is_idempotent(tmp_path: Path):
    store = StateStore(tmp_path)
    store.remove()
    store.save(LabState(status=UP, builder_pid=1, topology={}))
    store.remove()
    store.remove()
    assert store.load() is None


def test_a_second_holder_of_the_lock_gets_a_conflict(tmp_path: Path):
    store = StateStore(tmp_path)
    with (
        store.locked(),
        pytest.raises(ConflictError, match="lab lock"),
        StateStore(tmp_path).locked(timeout=0.1),
    ):
        pass
    with store.locked(timeout=0.1):
        pass  # released again


def test_pid_alive_knows_this_process_and_not_a_free_pid():
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 1)
