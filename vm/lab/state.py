"""The running lab's record (state.json: topology, workloads, IPs, processes) and its lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weft.errors import ConflictError

DEFAULT_STATE_DIR = Path("/run/weft/lab")
STATE_VERSION = 1
BUILDING = "building"
UP = "up"


@dataclass(frozen=True)
class WorkloadInfo:
    """A workload as built: where it lives and how to reach it."""

    name: str
    namespace: str
    node: str
    ip: str
    netns: str
    cgroup: str
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    demo: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadInfo:
        return cls(**{**data, "ports": tuple(data.get("ports", ()))})


@dataclass(frozen=True)
class ProcessInfo:
    """A long-running process the lab started; `start_time` guards against pid reuse."""

    name: str
    pid: int
    start_time: int
    log: str
    cgroup: str
    workload: str | None = None
    node: str | None = None
    argv: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessInfo:
        return cls(**{**data, "argv": tuple(data.get("argv", ()))})


@dataclass
class LabState:
    """What state.json holds. `status` is "building" until `up` finishes."""

    status: str
    builder_pid: int
    topology: dict[str, Any]
    demo: bool = False
    started_at: float = field(default_factory=time.time)
    build_seconds: float | None = None
    workloads: dict[str, WorkloadInfo] = field(default_factory=dict)
    processes: list[ProcessInfo] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        data.pop("version", None)
        data["workloads"] = {
            k: WorkloadInfo.from_dict(v) for k, v in data.get("workloads", {}).items()
        }
        data["processes"] = [ProcessInfo.from_dict(p) for p in data.get("processes", [])]
        return cls(**data)


class StateStore:
    """state.json and lab.lock in the state directory; writes are atomic (rename)."""

    def __init__(self, directory: str | Path = DEFAULT_STATE_DIR) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    def load(self) -> LabState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return LabState.from_json(text)
        except (ValueError, TypeError, KeyError):
            # A torn or foreign file: treat the lab as crashed, so cleanup takes over.
            return LabState(status=BUILDING, builder_pid=0, topology={})

    def save(self, state: LabState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(state.to_json(), encoding="utf-8")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".tmp").unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        """Serialize lab changes between processes (two `up`s must not interleave)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lab.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConflictError(
                            f"another weft process has held the lab lock "
                            f"{self.directory / 'lab.lock'} for {timeout:.0f} s",
                            hint="wait for the other 'weft lab' command to finish",
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pid_start_time(pid: int) -> int:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])
