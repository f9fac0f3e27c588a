"""One benchmark session: install, compile, bring up a lab, run the rounds, tear everything down."""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.debian import ensure_packages
from bench.lab_lock import lab_session_lock
from bench.loads import Load
from bench.native import NativeTools, build_tools
from bench.paths import PATH_NAMES, BenchPath, PathTarget, make_path
from bench.procstats import measure
from bench.result import BenchResult, PathInfo, describe_commit, describe_machine
from bench.runner import BenchSettings, RoundPlan, run_rounds
from bench.servers import start_servers
from bench.testbed import BenchLayout, Testbed, prepare_layout
from vm.lab.lab import Lab
from vm.lab.topology import Topology, load_topology
from weft.errors import ConflictError, UnavailableError, WeftError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Selection:
    """The paths and loads to run, in report order."""

    paths: tuple[str, ...]
    loads: tuple[Load, ...]


@dataclass
class SessionOutput:
    result: BenchResult
    samples_us: dict[tuple[str, str], list[float]]


@contextlib.contextmanager
def open_testbed(
    kind: str, progress: Progress, replace: bool = False
) -> Iterator[tuple[Testbed, str, str]]:
    """Yield a lab with the (client node, server node) the bench uses.

    "lab": bring up vm.lab's default topology (its first two worker nodes) and tear it down after,
    holding the machine-wide lab lock meanwhile (`replace`: remove a lab left up first, as
    `weft lab up --replace` does). "running": use the lab that is already up and leave it up.
    """

    def two_workers(topology: Topology) -> tuple[str, str]:
        workers = [node.name for node in topology.workers]
        if len(workers) < 2:
            raise UnavailableError(
                f"{topology.source}: the benchmark needs two worker nodes, it has {len(workers)}",
                hint="add a worker node to the topology's nodes: list",
            )
        return workers[0], workers[1]

    if kind == "running":
        running = Lab.attach()
        yield (running, *two_workers(running.topology))
        return
    topology = load_topology()
    client_node, server_node = two_workers(topology)
    with lab_session_lock(progress):
        lab = Lab(topology)
        progress(f"bringing up the lab ({topology.source}), nodes {client_node}, {server_node}")
        try:
            lab.up(demo=False, replace=replace)
        except ConflictError as exc:
            raise ConflictError(
                f"a lab is already up: {exc.message}",
                hint="'weft bench --testbed running' uses it; '--replace' removes it first",
            ) from exc
        try:
            yield lab, client_node, server_node
        finally:
            progress("tearing the lab down")
            lab.down()


def expand_paths(names: Sequence[str]) -> tuple[str, ...]:
    """The requested paths plus each one's baseline and peer, so every ratio can be computed."""
    wanted: list[str] = []
    for name in names:
        path = make_path(name)
        for needed in (path.baseline, name, path.peer):
            if needed and needed not in wanted:
                wanted.append(needed)
    return tuple(name for name in PATH_NAMES if name in wanted)


def run_bench(
    selection: Selection,
    settings: BenchSettings,
    testbed_kind: str,
    progress: Progress,
    replace: bool = False,
) -> SessionOutput:
    """Install and compile what the loads need, bring up a lab, run, tear it down."""
    installed = ensure_packages()
    if installed:
        progress(f"installed with apt-get: {', '.join(installed)}")
    tools = build_tools()
    with open_testbed(testbed_kind, progress, replace) as (testbed, client_node, server_node):
        layout = prepare_layout(testbed, client_node, server_node)
        return run_session(
            selection,
            settings,
            testbed=testbed,
            layout=layout,
            tools=tools,
            testbed_kind=testbed_kind,
            progress=progress,
        )


def run_session(
    selection: Selection,
    settings: BenchSettings,
    *,
    testbed: Testbed,
    layout: BenchLayout,
    tools: NativeTools,
    testbed_kind: str,
    progress: Progress,
) -> SessionOutput:
    """Start the servers and the paths in a prepared lab, run the rounds, stop what it started."""
    started = _now()
    machine = describe_machine()
    paths = [make_path(name) for name in selection.paths]
    reasons: dict[str, str | None] = {p.name: p.availability() for p in paths}
    for name, reason in reasons.items():
        if reason:
            progress(f"{name}: not available: {reason}")
    targets: dict[str, PathTarget] = {}
    process_usage: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as workdir:
        server_pids = start_servers(testbed, layout, tools)
        runnable: list[BenchPath] = []
        try:
            for path in paths:
                if reasons[path.name]:
                    continue
                try:
                    targets[path.name] = path.setup(testbed, layout, Path(workdir))
                    runnable.append(path)
                except (WeftError, subprocess.SubprocessError, OSError) as exc:
                    reasons[path.name] = f"setup failed: {exc}"
                    progress(f"{path.name}: {reasons[path.name]}")
            progress(
                f"running {len(selection.loads)} loads on {len(runnable)} paths, "
                f"{settings.rounds} rounds of {settings.seconds:g} s per load"
            )
            plan = RoundPlan(testbed, targets, settings, tools, progress)
            collected = run_rounds(plan, runnable, selection.loads)
        finally:
            for path in paths:
                process_usage[path.name] = _usage_by_process(path)
                path.teardown()
            for pid in server_pids:
                testbed.stop(pid)
    machine["loadavg_at_end"] = list(os.getloadavg())
    infos = [
        PathInfo(
            name=p.name,
            description=p.description,
            baseline=p.baseline,
            peer=p.peer,
            loads=sorted(p.loads),
            reason=reasons[p.name],
            peak_rss_bytes=collected.peak_rss_bytes.get(p.name, 0),
            processes=process_usage.get(p.name, []),
        )
        for p in paths
    ]
    mesh_cores: dict[str, dict[str, list[float]]] = {}
    for (path_name, load_name), values in collected.mesh_cores.items():
        mesh_cores.setdefault(path_name, {})[load_name] = values
    result = BenchResult(
        started=started,
        finished=_now(),
        machine=machine,
        commit=describe_commit(),
        settings={
            "mode": settings.mode,
            "rounds": settings.rounds,
            "seconds_per_load": settings.seconds,
            "loads": [load.name for load in selection.loads],
            "paths": list(selection.paths),
            "testbed": testbed_kind,
            "order": "each round runs each load on every path back to back; path order rotates",
        },
        paths=infos,
        figures=list(collected.figures.values()),
        failures=collected.failures,
        mesh_cores=mesh_cores,
    )
    return SessionOutput(result=result, samples_us=collected.samples_us)


def _usage_by_process(path: BenchPath) -> list[dict[str, Any]]:
    """CPU seconds since start and peak memory of each process a path added, before it stops."""
    usage = []
    for pid, name in path.mesh_processes().items():
        measured = measure([pid])
        usage.append(
            {
                "name": name,
                "cpu_seconds": measured.cpu_seconds,
                "peak_rss_bytes": measured.peak_rss_bytes,
            }
        )
    return usage


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
