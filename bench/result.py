"""A finished benchmark run: machine, commit, settings, paths and figures; saved as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.runner import Failure, Figure
from bench.stats import median

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PathInfo:
    """A path as the report shows it; `reason` is set when it was not available."""

    name: str
    description: str
    baseline: str
    peer: str | None
    loads: list[str]
    reason: str | None = None
    peak_rss_bytes: int = 0  # the highest sum over its processes seen after a load run
    # Each process the path added: name, cpu_seconds (whole run, idle included), peak_rss_bytes.
    processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.reason is None


@dataclass
class BenchResult:
    started: str
    finished: str
    machine: dict[str, Any]
    commit: dict[str, Any]
    settings: dict[str, Any]
    paths: list[PathInfo]
    figures: list[Figure]
    failures: list[Failure] = field(default_factory=list)
    mesh_cores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # path->load->

    def path(self, name: str) -> PathInfo | None:
        return next((p for p in self.paths if p.name == name), None)

    def median(self, path: str, load: str, metric: str) -> float | None:
        figure = self.figure(path, load, metric)
        return None if figure is None else figure.median

    def figure(self, path: str, load: str, metric: str) -> Figure | None:
        for figure in self.figures:
            if (figure.path, figure.load, figure.metric) == (path, load, metric):
                return figure
        return None

    def paired(self, paths: Sequence[str], load: str, metric: str) -> list[tuple[float, ...]]:
        """The figures of several paths in each round where all of them succeeded.

        Within a round the paths ran back to back, so comparing them round by round cancels
        most of the drift of a shared machine between rounds.
        """
        figures = [self.figure(path, load, metric) for path in paths]
        if any(f is None for f in figures):
            return []
        rounds = [f.by_round() for f in figures if f is not None]
        common = sorted(set.intersection(*(set(r) for r in rounds)))
        return [tuple(r[n] for r in rounds) for n in common]

    def ratio(self, path: str, reference: str, load: str, metric: str) -> float | None:
        """The median over rounds of path / reference; None if no round has both figures."""
        pairs = [(mine, theirs) for mine, theirs in self.paired((path, reference), load, metric)]
        ratios = [mine / theirs for mine, theirs in pairs if theirs != 0]
        return median(ratios) if ratios else None

    def mesh_cores_median(self, path: str, load: str) -> float | None:
        values = self.mesh_cores.get(path, {}).get(load)
        return median(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "started": self.started,
            "finished": self.finished,
            "machine": self.machine,
            "commit": self.commit,
            "settings": self.settings,
            "paths": [asdict(p) | {"available": p.available} for p in self.paths],
            "figures": [asdict(f) | {"median": f.median} for f in self.figures],
            "failures": [asdict(f) for f in self.failures],
            "mesh_cores": self.mesh_cores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResult:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"result schema {data.get('schema')!r}, expected {SCHEMA_VERSION}")
        known = {f.name for f in fields(PathInfo)}  # older records carry fields since dropped
        paths = [PathInfo(**{k: v for k, v in p.items() if k in known}) for p in data["paths"]]
        figures = [Figure(**{k: v for k, v in f.items() if k != "median"}) for f in data["figures"]]
        for figure in figures:
            if len(figure.round_numbers) != len(
                figure.rounds
            ):  # written before rounds were numbered
                figure.round_numbers = list(range(1, len(figure.rounds) + 1))
        return cls(
            started=data["started"],
            finished=data["finished"],
            machine=data["machine"],
            commit=data["commit"],
            settings=data["settings"],
            paths=paths,
            figures=figures,
            failures=[Failure(**f) for f in data["failures"]],
            mesh_cores=data["mesh_cores"],
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> BenchResult:
        return cls.from_json(json.loads(path.read_text()))


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel and load: what a reader needs to judge the figures."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def describe_commit() -> dict[str, Any]:
    """The commit measured, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {
        "sha": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "subject": git("log", "-1", "--format=%s"),
    }
